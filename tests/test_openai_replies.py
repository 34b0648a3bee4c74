"""The openai backend against hostile and broken servers (tiny http.server peers on loopback):
every malformed reply is a named error and never cached, Retry-After is honoured, one deadline
per request, a completion-size cap, cache keys that tell weights apart, secrets kept."""

import http.server
import json
import socket
import threading
import time

import pytest

from collab_utils import llm
from collab_utils.cache import GenerationCache
from collab_utils.config import ModelSpec
from collab_utils.llm.openai import ServerReplyError, ServersUnavailable

HELLO = [[{"role": "user", "content": "hi"}]]
OK = {
    "choices": [{"message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


class Peer(http.server.BaseHTTPRequestHandler):
    """Answers with `self.server.reply(handler, path, body)`: (status, headers, bytes) or None
    when the reply function wrote the answer itself. Records every request."""

    protocol_version = "HTTP/1.1"

    def _answer(self, body):
        self.server.seen.append(
            {"t": time.monotonic(), "path": self.path, "body": body, "headers": dict(self.headers)}
        )
        out = self.server.reply(self, self.path, body)
        if out is None:
            return
        status, headers, data = out
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(json.loads(self.rfile.read(length) or b"null"))

    def log_message(self, *args):
        pass


def json_reply(obj, status=200, **headers):
    return status, {"Content-Type": "application/json", **headers}, json.dumps(obj).encode()


def models_listing(card):
    return json_reply({"object": "list", "data": [card]})


class Server:
    def __init__(self, reply, host="127.0.0.1", card=None):
        self.card = card or {"id": "m", "object": "model", "owned_by": "me"}

        def route(handler, path, body):
            if path.endswith("/models"):
                return models_listing(self.card)
            return reply(handler, path, body)

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Peer)
        self.httpd.daemon_threads = True
        self.httpd.reply, self.httpd.seen = route, []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"

    @property
    def chats(self):
        return [r for r in self.httpd.seen if r["path"].endswith("/chat/completions")]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    started = []

    def start(reply, **kw):
        server = Server(reply, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def backend_for(urls, cache=None, **extra):
    extra.setdefault("max_retries", 2)
    spec = ModelSpec(backend="openai", model="m", base_url=urls, **extra)
    return llm.load_backend(spec, cache if cache is not None else False)


def chat(backend, convs=HELLO, **kw):
    kw.setdefault("max_new_tokens", 4)
    return backend.chat(convs, temperature=0.0, seed=0, **kw)


MALFORMED = {
    "bad JSON": (lambda: (200, {}, b'{"choices": [')),
    "an HTML page": (lambda: (200, {"Content-Type": "text/html"}, b"<html>502 Bad Gateway</html>")),
    "empty choices": (lambda: json_reply({"choices": []})),
    "an error object": (lambda: json_reply({"error": {"message": "engine overloaded"}})),
    "no message": (lambda: json_reply({"choices": [{"text": "legacy"}]})),
    "content null": (lambda: json_reply({"choices": [{"message": {"content": None}}]})),
    "a list": (lambda: json_reply([1, 2, 3])),
    "deep nesting": (lambda: (200, {}, b"[" * 100_000)),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_reply_is_a_named_error_retried_and_never_cached(serve, tmp_path, kind):
    server = serve(lambda h, p, b: MALFORMED[kind]())
    cache = GenerationCache(tmp_path / "c.sqlite")
    backend = backend_for(server.url, cache, max_retries=2)
    with pytest.raises(llm.BackendError, match="gave up after 3 attempts") as caught:
        chat(backend)
    assert server.url in str(caught.value)
    assert len(server.chats) == 3 and len(cache) == 0 and backend.generated == 0


def test_malformed_reply_then_good_one_is_used(serve, tmp_path):
    replies = iter([MALFORMED["content null"](), json_reply(OK)])
    server = serve(lambda h, p, b: next(replies))
    cache = GenerationCache(tmp_path / "c.sqlite")
    [gen] = chat(backend_for(server.url, cache))
    assert gen.text == "ok" and (gen.prompt_tokens, gen.completion_tokens) == (3, 1)
    assert len(server.chats) == 2 and len(cache) == 1


def test_reply_types_are_named(serve):
    server = serve(lambda h, p, b: MALFORMED["an HTML page"]())
    with pytest.raises(llm.BackendError, match="an HTML page"):
        chat(backend_for(server.url, max_retries=0))


def test_judge_reply_without_logprobs_is_an_error_not_a_none_rating(serve, tmp_path):
    server = serve(lambda h, p, b: json_reply(OK))
    cache = GenerationCache(tmp_path / "c.sqlite")
    backend = backend_for(server.url, cache)
    with pytest.raises(ServerReplyError, match="no top_logprobs"):
        backend.rate(HELLO)
    assert len(server.chats) == 1 and len(cache) == 0  # not retried: the server cannot judge


def test_judge_reply_with_logprobs_rates(serve):
    top = [{"token": "7", "logprob": -0.1}, {"token": "x", "logprob": -3.0}]
    reply = {"choices": [{"message": {"content": "7"}, "logprobs": {"content": [
        {"token": "7", "logprob": -0.1, "top_logprobs": top}]}}]}  # fmt: skip
    server = serve(lambda h, p, b: json_reply(reply))
    assert backend_for(server.url).rate(HELLO) == [pytest.approx(7 / 9)]


def test_completion_over_the_cap_is_refused_and_not_retried(serve, tmp_path):
    huge = {"choices": [{"message": {"content": "a" * 5_000_000}}]}
    server = serve(lambda h, p, b: json_reply(huge))
    cache = GenerationCache(tmp_path / "c.sqlite")
    with pytest.raises(ServerReplyError, match="cap"):
        chat(backend_for(server.url, cache), max_new_tokens=256)
    assert len(server.chats) == 1 and len(cache) == 0


def test_text_over_the_cap_inside_a_small_reply_is_refused(serve):
    server = serve(lambda h, p, b: json_reply({"choices": [{"message": {"content": "b" * 9000}}]}))
    with pytest.raises(ServerReplyError, match="over the cap"):
        chat(backend_for(server.url), max_new_tokens=4)


def test_retry_after_is_honoured(serve):
    answers = iter([json_reply({"error": "slow down"}, 429, **{"Retry-After": "1"})])
    server = serve(lambda h, p, b: next(answers, json_reply(OK)))
    [gen] = chat(backend_for(server.url))
    first, second = server.chats
    assert gen.text == "ok" and second["t"] - first["t"] >= 0.95


def test_one_deadline_per_request_against_a_trickling_server(serve):
    def trickle(handler, path, body):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            for _ in range(300):  # one byte every 0.1 s: each read is quick, the reply is not
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    server = serve(trickle)
    backend = backend_for(server.url, timeout_s=1.0, max_retries=0)
    started = time.monotonic()
    with pytest.raises(ServersUnavailable, match="timeout_s=1 s"):
        chat(backend)
    assert time.monotonic() - started < 10  # the trickle would take 30 s


def test_usage_from_the_server_is_stored_and_odd_usage_is_zero(serve, tmp_path):
    usages = iter([{"prompt_tokens": 11, "completion_tokens": 5}, {"prompt_tokens": "x"}])

    def reply(handler, path, body):
        return json_reply({**OK, "usage": next(usages)})

    server = serve(reply)
    cache = GenerationCache(tmp_path / "c.sqlite")
    backend = backend_for(server.url, cache)
    replies = backend.chat(HELLO * 2, max_new_tokens=4, temperature=0.0, seed=[1, 2])
    # the two requests run concurrently: either may get the server's first usage
    assert {(r.prompt_tokens, r.completion_tokens) for r in replies} == {(11, 5), (0, 0)}
    first = replies[0]
    again = backend.chat(HELLO, max_new_tokens=4, temperature=0.0, seed=[1])[0]
    assert again.cached and (again.prompt_tokens, again.completion_tokens) == (
        first.prompt_tokens,
        first.completion_tokens,
    )


def test_finished_requests_are_cached_when_another_fails(serve, tmp_path):
    def reply(handler, path, body):
        if body["messages"][0]["content"] == "bad":
            return json_reply({"error": {"message": "context too long"}}, 400)
        return json_reply({**OK, "choices": [{"message": {"content": body["messages"][0]["content"]}}]})  # fmt: skip

    server = serve(reply)
    cache = GenerationCache(tmp_path / "c.sqlite")
    backend = backend_for(server.url, cache, concurrency=2)
    convs = [[{"role": "user", "content": c}] for c in ["a", "b", "bad", "c", "d"]]
    with pytest.raises(llm.BackendError, match="HTTP 400 .not retried.: .*context too long"):
        backend.chat(convs, max_new_tokens=4, temperature=0.0, seed=0)
    assert len(cache) == 4 and backend.generated == 4
    server.httpd.seen.clear()
    with pytest.raises(llm.BackendError):
        backend.chat(convs, max_new_tokens=4, temperature=0.0, seed=0)
    assert [r["body"]["messages"][0]["content"] for r in server.chats] == ["bad"]


# ------------------------------------------------------------------ weights in the cache key


def test_cache_keys_tell_weights_apart_while_replicas_share(serve):
    card = {"id": "m", "object": "model", "owned_by": "vllm", "root": "/weights/a"}
    replica_a = serve(lambda h, p, b: json_reply(OK), card={**card, "created": 1})
    replica_b = serve(lambda h, p, b: json_reply(OK), card={**card, "created": 2})
    other = serve(lambda h, p, b: json_reply(OK), card={**card, "root": "/weights/b"})
    fingerprint = {
        name: backend_for(server.url).fingerprint
        for name, server in [("a", replica_a), ("b", replica_b), ("other", other)]
    }
    pooled = backend_for([replica_a.url, replica_b.url]).fingerprint
    assert fingerprint["a"] == fingerprint["b"] == pooled != fingerprint["other"]


def test_a_server_with_other_weights_leaves_the_pool(serve):
    card = {"id": "m", "object": "model", "owned_by": "vllm", "root": "/weights/a"}
    good = serve(lambda h, p, b: json_reply(OK), card=card)
    odd = serve(lambda h, p, b: json_reply(OK), card={**card, "root": "/weights/b"})
    backend = backend_for([good.url, odd.url], concurrency=1)
    with pytest.warns(UserWarning, match="other weights"):
        gens = backend.chat(HELLO * 6, max_new_tokens=4, temperature=0.0, seed=list(range(6)))
    assert [g.text for g in gens] == ["ok"] * 6
    assert len(good.chats) == 6 and not odd.chats
    assert "other weights" in backend.server_stats()[odd.url]["excluded"]


# ------------------------------------------------------------------ secrets


SECRET = "sk-test-0123456789abcdef"


def test_key_goes_to_loopback_and_is_redacted_from_errors(serve, monkeypatch, tmp_path):
    monkeypatch.setenv("COLLAB_TEST_API_KEY", SECRET)

    def echo(handler, path, body):  # a hostile server quoting the header back
        return 401, {}, f"bad key {handler.headers['Authorization']}".encode()

    server = serve(echo)
    cache = GenerationCache(tmp_path / "c.sqlite")
    backend = backend_for(server.url, cache, api_key_env="COLLAB_TEST_API_KEY")
    with pytest.raises(llm.BackendError) as caught:
        chat(backend)
    assert server.chats[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(caught.value) and "[secret]" in str(caught.value)
    assert SECRET.encode() not in (tmp_path / "c.sqlite").read_bytes()


@pytest.mark.parametrize("name", ["HOME", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "PATH"])
def test_variables_that_are_not_api_keys_are_refused(name):
    with pytest.raises(ValueError, match=f"api_key_env '{name}'.*COLLAB_UTILS_KEY_ENVS"):
        backend_for("http://127.0.0.1:9/v1", api_key_env=name)


def test_the_user_may_allow_another_variable(serve, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("COLLAB_UTILS_KEY_ENVS", "HF_TOKEN")
    server = serve(lambda h, p, b: json_reply(OK))
    chat(backend_for(server.url, api_key_env="HF_TOKEN"))
    assert server.chats[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def _outward_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: picks the outward interface
            return s.getsockname()[0]
        except OSError:
            return None


def test_key_never_goes_over_plain_http_to_another_host(serve, monkeypatch):
    address = _outward_address()
    if not address or address.startswith("127."):
        pytest.skip("no non-loopback interface on this machine")
    monkeypatch.setenv("COLLAB_TEST_API_KEY", SECRET)
    server = serve(lambda h, p, b: json_reply(OK), host=address)
    with pytest.warns(UserWarning, match="COLLAB_TEST_API_KEY is not sent"):
        backend = backend_for(server.url, api_key_env="COLLAB_TEST_API_KEY")
    chat(backend)
    assert all("Authorization" not in r["headers"] for r in server.httpd.seen)


def test_no_key_no_header(serve, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = serve(lambda h, p, b: json_reply(OK))
    chat(backend_for(server.url))
    assert "Authorization" not in server.chats[0]["headers"]


def test_redirects_are_not_followed(serve):
    target = serve(lambda h, p, b: json_reply(OK))
    server = serve(lambda h, p, b: (307, {"Location": target.url + "/chat/completions"}, b""))
    with pytest.raises(llm.BackendError, match="HTTP 307"):
        chat(backend_for(server.url))
    assert not target.chats


def test_base_url_list_is_validated_with_the_key_named(tmp_path):
    from collab_utils import config

    file = tmp_path / "p.yaml"
    file.write_text(
        "models:\n  assistant: {backend: openai, model: m, base_url: [http://a:1/v1, 5]}\n"
    )
    with pytest.raises(config.ParamsError, match=r"models.assistant.base_url\[1\]"):
        config.load(file)
    file.write_text(
        "models:\n  assistant: {backend: openai, model: m, base_url: [http://a:1/v1, ftp://b]}\n"
    )
    with pytest.raises(config.ParamsError, match=r"models.assistant.base_url\[1\].*http"):
        config.load(file)
    file.write_text(
        "models:\n  assistant: {backend: openai, model: m,"
        " base_url: [http://a:1/v1, http://b:2/v1]}\n"
    )
    assert config.load(file).models.assistant.base_url == ["http://a:1/v1", "http://b:2/v1"]


def test_the_key_is_in_no_params_file_or_env_json(monkeypatch, tmp_path):
    from collab_utils import config, runs

    monkeypatch.setenv("COLLAB_TEST_API_KEY", SECRET)
    file = tmp_path / "p.yaml"
    file.write_text(
        "models:\n  assistant: {backend: openai, model: m, base_url: https://api.example/v1,"
        " api_key_env: COLLAB_TEST_API_KEY}\n"
    )
    params = config.load(file)
    params.dump(tmp_path / "params.yaml")
    assert SECRET not in (tmp_path / "params.yaml").read_text()
    assert SECRET not in json.dumps(runs.environment(), default=str)
