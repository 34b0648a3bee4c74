"""The participant's page in a real Chromium (Playwright) against a real study server,
`python -m collab_utils study ...` in a subprocess: two participants at once, a server killed
mid-session and restarted, model HTML shown as text, refusals, the admin view. Screenshots of
each step go to outputs/study_screens/."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from collab_utils import config
from collab_utils.cache import Entry, GenerationCache, request_key
from collab_utils.seeds import derive_seed
from collab_utils.study.store import Store

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
SMOKE = "params/smoke.yaml"
TOKEN = "admin-token-for-the-browser-tests"
SCREENS = config.project_root() / "outputs" / "study_screens"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
WAIT_MS = 240_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StudyServer:
    """`python -m collab_utils study` in its own process group, on a fixed loopback port."""

    def __init__(self, folder, port: int, batch_wait_ms: int):
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}"
        self.db = folder / "study.sqlite"
        self.overrides = [
            f"output_dir={folder}",
            f"cache_path={folder / 'cache.sqlite'}",
            "generation.max_new_tokens=8",
        ]
        command = [sys.executable, "-m", "collab_utils", "study", SMOKE, "--port", str(port),
                   "--db", str(self.db), "--admin-token", TOKEN, "--systems", "base",
                   "--batch-wait-ms", str(batch_wait_ms)]  # fmt: skip
        for item in self.overrides:
            command += ["--set", item]
        self.log = open(folder / f"server-{time.monotonic_ns()}.log", "w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.process.poll() is None, open(self.log.name).read()[-3000:]
            try:
                if httpx.get(f"{self.url}/api/study", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the study server did not answer on {self.url}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SCREENS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module; replies wait 1.5 s for batch mates."""
    server = StudyServer(tmp_path_factory.mktemp("study_browser"), free_port(), 1500)
    yield server
    server.kill()


def new_page(browser):
    page = browser.new_context(viewport={"width": 900, "height": 900}).new_page()
    page.set_default_timeout(WAIT_MS)
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def consent(page, url: str, screens: bool = False) -> str:
    page.goto(url)
    page.wait_for_selector("#consent:not([hidden])")
    if screens:
        shot(page, "01_consent")
    page.check("#consent-check")
    page.click("#consent-button")
    page.wait_for_selector("#chat:not([hidden])")
    if screens:
        shot(page, "02_task")
    return page.evaluate("localStorage.getItem('study-session')")


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def wait_for_replies(page, n: int) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('#messages li.assistant').length >= {n}"
    )


def rate(page, turn: int, value: int) -> None:
    button = f'#messages li.assistant[data-turn="{turn}"] button[data-rating="{value}"]'
    page.click(button)
    page.wait_for_selector(f'{button}[aria-pressed="true"]')


def finish(page, rating: int, screens: bool = False) -> str:
    page.click("#finish-button")
    page.wait_for_selector("#final:not([hidden])")
    page.click(f'#document-rating button[data-rating="{rating}"]')
    if screens:
        shot(page, "05_final_rating")
    page.click("#submit-final")
    page.wait_for_selector("#done:not([hidden])")
    if screens:
        shot(page, "06_completion_code")
    return page.text_content("#code")


def shown(page) -> list[tuple[str, str]]:
    """(role, text) of every message on the page."""
    pairs = page.evaluate(
        "Array.from(document.querySelectorAll('#messages li'), li => "
        "[li.classList.contains('user') ? 'user' : 'assistant', "
        "li.querySelector('.content').textContent])"
    )
    return [tuple(pair) for pair in pairs]


def stored(db, session_id: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in Store(db).messages(session_id)]


def test_two_participants_at_once_each_see_only_their_own_chat(browser, server):
    pages = [new_page(browser) for _ in range(2)]
    sessions = [consent(page, server.url, screens=i == 0) for i, page in enumerate(pages)]
    assert sessions[0] != sessions[1]
    markers = [[uuid.uuid4().hex[:10] for _ in range(2)] for _ in pages]
    for page, mine in zip(pages, markers):  # both sent within the 1.5 s batch wait
        send(page, f"Please help me with my text, code {mine[0]}.")
    for page in pages:
        wait_for_replies(page, 1)
    shot(pages[0], "03_reply_to_rate")
    for page, value in zip(pages, (7, 4)):
        rate(page, 1, value)
    shot(pages[0], "04_reply_rated")
    for page, mine in zip(pages, markers):
        send(page, f"Make it shorter, code {mine[1]}.")
    for page in pages:
        wait_for_replies(page, 2)
    for page, value in zip(pages, (8, 5)):
        rate(page, 2, value)
    for page, session_id in zip(pages, sessions):  # each page: its own chat, nothing else
        assert shown(page) == stored(server.db, session_id)
    codes = [finish(pages[0], 9, screens=True), finish(pages[1], 3)]

    store = Store(server.db)
    for page, session_id, mine, other, code, ratings, document_rating in zip(
        pages, sessions, markers, markers[::-1], codes, [(7, 8), (4, 5)], (9, 3)
    ):
        page.goto(server.url)  # the finished session, shown again after a reload
        page.wait_for_selector("#done:not([hidden])")
        assert page.text_content("#code") == code
        session = store.session(session_id)
        assert session["completion_code"] == code and session["finished_at"] is not None
        assert session["document_rating"] == document_rating and session["document"]
        messages = store.messages(session_id)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        assert all(marker in messages[2 * i]["content"] for i, marker in enumerate(mine))
        assert tuple(m["rating"] for m in messages if m["role"] == "assistant") == ratings
        assert not any(marker in m["content"] for m in messages for marker in other)
    batches = store.tables()["events"].query("kind == 'batch'")["detail"]
    assert any(set(sessions) <= set(json.loads(detail)["sessions"]) for detail in batches)


def test_killed_server_restarts_and_the_page_continues(browser, tmp_path):
    port = free_port()
    first = StudyServer(tmp_path, port, batch_wait_ms=30_000)  # the reply would wait 30 s
    page = new_page(browser)
    try:
        session_id = consent(page, first.url)
        send(page, "Help me announce the garden party, please.")
        deadline = time.monotonic() + 60
        while not stored(first.db, session_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()  # mid-session: the message is stored, the reply is not
        assert stored(first.db, session_id) == [
            ("user", "Help me announce the garden party, please.")
        ]
        page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('Connection lost')"
        )
        shot(page, "07_server_down")
        second = StudyServer(tmp_path, port, batch_wait_ms=20)
        wait_for_replies(page, 1)  # the same page, never reloaded, gets the reply
        assert shown(page) == stored(second.db, session_id)
        shot(page, "08_resumed_after_restart")
        rate(page, 1, 6)
        send(page, "Now add the date: Sunday.")
        wait_for_replies(page, 2)
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('#messages li').length === 4")
        assert shown(page) == stored(second.db, session_id)
        messages = Store(second.db).messages(session_id)
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[1]["rating"] == 6
    finally:
        first.kill()
        if "second" in locals():
            second.kill()


def test_model_html_is_text_and_bad_input_is_refused(browser, server):
    page = new_page(browser)
    page.on("dialog", lambda dialog: dialog.dismiss())
    session_id = consent(page, server.url)
    payload = (
        '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
        "<b>bold</b> and <a href='javascript:window.__pwned=3'>a link</a>"
    )
    question = "Show me <i>this</i> & that"
    # the model's reply to this exact request, answered from the generation cache
    params = config.load(SMOKE, server.overrides)
    sampling = {
        "max_new_tokens": params.generation.max_new_tokens,
        "temperature": params.generation.temperature,
        "top_p": params.generation.top_p,
    }
    fingerprint = Store(server.db).tables()["systems"].set_index("name").loc["base", "fingerprint"]
    key = request_key(
        fingerprint,
        [{"role": "user", "content": question}],
        sampling,
        derive_seed(params.seed, "study", session_id, 1),
    )
    GenerationCache(params.cache_file).put_many({key: Entry(payload, 0, 0)})
    send(page, question)
    wait_for_replies(page, 1)
    assert shown(page) == [("user", question), ("assistant", payload)]
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#messages script, #messages img, #messages b, #messages i, #messages a").count() == 0  # fmt: skip
    shot(page, "09_model_html_shown_as_text")

    rate(page, 1, 5)
    send(page, "")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "empty message: write something before you send it"
    page.evaluate("document.querySelector('#input').value = 'x'.repeat(2 ** 20)")
    page.click("#send")
    page.wait_for_function(
        "() => document.querySelector('#error').textContent.includes('too long')"
    )
    assert page.text_content("#error") == (
        "message too long: 1,048,576 characters; the limit is 4,000"
    )
    shot(page, "10_long_message_refused")
    eleven = page.evaluate(
        """async (path) => {
            const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                         body: JSON.stringify({turn: 1, rating: 11})});
            return [r.status, (await r.json()).error];
        }""",
        f"/api/sessions/{session_id}/ratings",
    )
    assert eleven == [400, "a rating must be a whole number from 1 to 10; got 11"]
    assert [m["role"] for m in Store(server.db).messages(session_id)] == ["user", "assistant"]
    assert Store(server.db).messages(session_id)[1]["rating"] == 5
    assert fingerprint not in page.content()

    forged = new_page(browser)
    forged.goto(f"{server.url}/?s=forged-session-id-0000000")
    forged.wait_for_selector("#consent:not([hidden])")
    assert "unknown session id" in forged.text_content("#error")
    shot(forged, "11_forged_session_refused")

    admin = new_page(browser)
    admin.goto(f"{server.url}/admin")
    admin.wait_for_selector("#error:not([hidden])")
    assert "needs the study's admin token" in admin.text_content("#error")
    assert admin.is_hidden("#progress")
    shot(admin, "12_admin_without_token_refused")
    admin = new_page(browser)
    admin.goto(f"{server.url}/admin#token={TOKEN}")
    admin.wait_for_selector("#progress:not([hidden])")
    assert admin.text_content("#systems") == "base"
    assert admin.locator("#rows tr").count() == 1
    shot(admin, "13_admin_progress")
