"""The study's API on a real uvicorn server on loopback, with the embedded model: refusals,
blinding, retried sends, batching across sessions, balanced assignment, export."""

import io
import json
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter

import httpx
import pandas as pd
import pytest

from collab_utils import config
from collab_utils.study.server import open_study, running
from collab_utils.study.store import Store

TOKEN = "admin-token-for-the-tests"


def smoke_overrides(folder) -> list[str]:
    """params/smoke.yaml in `folder`, with replies of 8 tokens."""
    return [
        f"output_dir={folder}",
        f"cache_path={folder / 'cache.sqlite'}",
        "generation.max_new_tokens=8",
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study_api")
    params = config.load("params/smoke.yaml", smoke_overrides(folder))
    study = open_study(params, admin_token=TOKEN, batch_wait_s=1.0)
    with running(study.app()) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield study, client
    study.close()


def new_session(client) -> str:
    response = client.post("/api/sessions", json={"consent": True})
    assert response.status_code == 201, response.text
    return response.json()["session"]


def wait_for_reply(client, session_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = client.get(f"/api/sessions/{session_id}").json()
        assert state["error"] is None
        if not state["waiting"]:
            return state
        time.sleep(0.1)
    raise AssertionError(f"no reply for {session_id}")


def send(client, session_id: str, text: str, client_id: str) -> httpx.Response:
    body = {"text": text, "client_id": client_id}
    return client.post(f"/api/sessions/{session_id}/messages", json=body)


def refused(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert fragment in response.json()["error"], response.json()


def test_refusals_say_what_was_wrong_and_store_nothing(served):
    study, client = served
    sid = new_session(client)
    forged = "forged-session-id-0000000"
    refused(client.post("/api/sessions", json={}), 400, "consent is required")
    refused(
        client.post("/api/sessions", json={"consent": True, "simulated": True}), 401, "admin token"
    )
    refused(
        send(client, sid, "x" * 2**20, "big"),
        413,
        "message too long: 1,048,576 characters; the limit is 4,000",
    )
    refused(send(client, sid, " \n ", "empty"), 400, "empty message")
    refused(client.post(f"/api/sessions/{sid}/messages", json={"text": 5}), 400, "must be text")
    refused(client.get(f"/api/sessions/{forged}"), 404, "unknown session id")
    refused(send(client, forged, "hello", "f1"), 404, "unknown session id")
    refused(client.get("/api/sessions/..%2F..%2Fetc"), 404, "Not Found: GET")
    refused(client.post(f"/api/sessions/{sid}/finish", json={"rating": 5}), 409, "chat with")
    refused(client.post(f"/api/sessions/{sid}/messages", content=b"{not json"), 400, "not JSON")
    refused(client.get("/api/admin/summary"), 401, "admin token")
    refused(client.get("/api/admin/summary", headers={"Authorization": "Bearer x"}), 401, "admin")
    refused(client.get("/api/admin/export.zip"), 401, "admin token")

    assert send(client, sid, "Please help me write an email.", "first").status_code == 202
    wait_for_reply(client, sid)
    ratings = f"/api/sessions/{sid}/ratings"
    refused(client.post(ratings, json={"turn": 1, "rating": 11}), 400, "from 1 to 10; got 11")
    for bad in (0, "7", True, 7.5, None):
        refused(client.post(ratings, json={"turn": 1, "rating": bad}), 400, "from 1 to 10")
    refused(
        client.post(ratings, json={"turn": 5, "rating": 7}), 400, "no assistant reply at turn 5"
    )
    refused(send(client, sid, "next", "second"), 409, "rate the assistant's last reply")

    stored = study.store.messages(sid)
    assert [(m["role"], m["rating"]) for m in stored] == [("user", None), ("assistant", None)]
    assert stored[0]["content"] == "Please help me write an email."


def test_state_never_names_the_system(served):
    study, client = served
    states, systems = [], set()
    while len(states) < 3 and systems != {"base", "proactive"}:  # balanced: both come soon
        states.append(client.post("/api/sessions", json={"consent": True}).json())
        systems.add(study.store.session(states[-1]["session"])["system"])
    assert systems == {"base", "proactive"}
    secrets = [*systems, *(s.fingerprint for s in study.replies.systems.values())]
    secrets.append(study.replies.systems["proactive"].system_prompt)
    for created in states:
        state = created["state"]
        assert set(state) == {
            "task", "messages", "waiting", "error", "turns_left", "finished",
            "document_rating", "completion_code",
        }  # fmt: skip
        text = json.dumps(created)
        assert not [s for s in secrets if s in text]


def test_a_retried_send_is_stored_once(served):
    study, client = served
    sid = new_session(client)
    first = send(client, sid, "Write a note for my neighbours.", "same-id")
    again = send(client, sid, "Write a note for my neighbours.", "same-id")
    assert (first.status_code, again.status_code) == (202, 200)
    state = wait_for_reply(client, sid)
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"]
    assert [m["role"] for m in study.store.messages(sid)] == ["user", "assistant"]


def test_two_sessions_writing_together_share_one_batch(served):
    study, client = served
    sessions = [new_session(client) for _ in range(2)]
    for i, sid in enumerate(sessions):
        assert send(client, sid, f"Draft number {i}, please.", f"together-{i}").status_code == 202
    for sid in sessions:
        wait_for_reply(client, sid)
    batches = study.store.tables()["events"].query("kind == 'batch'")
    members = [set(json.loads(detail)["sessions"]) for detail in batches["detail"]]
    assert set(sessions) in members  # one backend.chat answered both participants


def test_assignment_is_balanced_under_concurrent_consent(tmp_path):
    store = Store(tmp_path / "study.sqlite")
    store.register_systems({name: (f"fp-{name}", {}) for name in ("a", "b", "c")})
    tasks = ["t1", "t2", "t3", "t4"]
    created = []

    def consent(n: int) -> None:
        for _ in range(n):
            created.append(store.create_session(["a", "b", "c"], tasks))

    threads = [threading.Thread(target=consent, args=(5,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sessions = pd.DataFrame([store.session(s) for s in created])
    assert Counter(sessions["system"]) == {"a": 10, "b": 10, "c": 10}
    for _, group in sessions.groupby("system"):
        counts = Counter(group["task_id"])
        assert max(counts.values()) - min(counts.values()) <= 1
    assert store.create_session(["a"], tasks, participant="P1") == store.create_session(
        ["a"], tasks, participant="P1"
    )  # a returning participant gets the same session


def test_export_cli_writes_every_table_as_parquet(served, tmp_path):
    study, client = served
    out = tmp_path / "export"
    params = study.params
    command = [sys.executable, "-m", "collab_utils", "study", "export", params.source_file,
               "--db", str(study.store.path), "--out", str(out)]  # fmt: skip
    for item in smoke_overrides(tmp_path):
        command += ["--set", item]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    sessions = pd.read_parquet(out / "sessions.parquet")
    messages = pd.read_parquet(out / "messages.parquet")
    assert len(sessions) == len(study.store.tables()["sessions"])
    assert {"system", "fingerprint", "simulated", "time_spent_s", "completion_code"} <= set(
        sessions
    )
    assert {"turn", "role", "content", "created_at", "rating"} <= set(messages)
    assert (out / "events.parquet").is_file() and (out / "systems.parquet").is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "collab_utils", "study", "export", params.source_file,
         "--db", str(tmp_path / "none.sqlite")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "no study database" in missing.stderr


def test_admin_export_zip_holds_every_table(served):
    study, client = served
    response = client.get("/api/admin/export.zip", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = sorted(archive.namelist())
        sessions = pd.read_parquet(io.BytesIO(archive.read("sessions.parquet")))
    assert names == ["events.parquet", "messages.parquet", "sessions.parquet", "systems.parquet"]
    assert len(sessions) == len(study.store.tables()["sessions"])


@pytest.mark.server
def test_openai_backend_requests_go_straight_through(llama_server_url, tmp_path):
    served_model = [
        "models.assistant.backend=openai",
        "models.assistant.model=smollm2",
        f"models.assistant.base_url={llama_server_url}",
    ]
    params = config.load("params/smoke.yaml", [*smoke_overrides(tmp_path), *served_model])
    study = open_study(params, systems=["base", "proactive"], admin_token=TOKEN)
    with running(study.app()) as url, httpx.Client(base_url=url, timeout=120) as client:
        sessions = [new_session(client) for _ in range(2)]
        for i, sid in enumerate(sessions):
            assert send(client, sid, f"Write a haiku, number {i}.", f"o{i}").status_code == 202
        states = [wait_for_reply(client, sid) for sid in sessions]
        kinds = set(study.store.tables()["events"]["kind"])
    study.close()
    assert all(state["messages"][-1]["role"] == "assistant" for state in states)
    assert "batch" not in kinds  # no batch queue in front of a server that batches itself
