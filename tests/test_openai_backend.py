"""The openai backend against a real llama.cpp server, and its retries against a flaky one."""

import http.server
import json
import threading

import pytest

from collab_utils import llm, serve
from collab_utils.config import ModelSpec

pytestmark = pytest.mark.server


def spec(base_url, **extra):
    return ModelSpec(backend="openai", model=serve.SERVED_NAME, base_url=base_url, **extra)


def test_embedded_model_answers_through_llama_cpp_server(llama_server_url, cache):
    backend = llm.load_backend(spec(llama_server_url), cache)
    convs = [[{"role": "user", "content": f"Say something about {w}."}] for w in "abcdefgh"]
    gens = backend.chat(convs, max_new_tokens=24, temperature=0.8, seed=list(range(8)))
    assert len(gens) == 8 and all(g.text.strip() for g in gens)
    assert all(g.completion_tokens > 0 and g.prompt_tokens > 0 for g in gens)
    again = backend.chat(convs, max_new_tokens=24, temperature=0.8, seed=list(range(8)))
    assert [g.text for g in again] == [g.text for g in gens] and all(g.cached for g in again)
    assert backend.generated == 8


class Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 `failures` times, then a well-formed chat completion."""

    failures = 2
    seen = 0

    def do_POST(self):
        type(self).seen += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).seen <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        body = {
            "choices": [{"message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", Flaky
    server.shutdown()


def test_retries_on_5xx_then_succeeds(flaky_server):
    url, handler = flaky_server
    handler.failures, handler.seen = 2, 0
    backend = llm.load_backend(spec(url, max_retries=3, concurrency=1), None)
    hello = [[{"role": "user", "content": "hi"}]]
    [gen] = backend.chat(hello, max_new_tokens=4, temperature=0.0, seed=0)
    assert gen.text == "ok" and handler.seen == 3 and backend.retries == 2


def test_clear_error_after_last_retry(flaky_server):
    url, handler = flaky_server
    handler.failures, handler.seen = 100, 0
    backend = llm.load_backend(spec(url, max_retries=2), None)
    with pytest.raises(llm.BackendError, match=r"gave up after 3 attempts; last error: HTTP 503"):
        backend.chat(
            [[{"role": "user", "content": "hi"}]], max_new_tokens=4, temperature=0.0, seed=0
        )
    assert handler.seen == 3


def test_unreachable_server_is_retried_then_named():
    backend = llm.load_backend(
        spec(f"http://127.0.0.1:{serve.free_port()}/v1", max_retries=1), None
    )
    with pytest.raises(llm.BackendError, match="127.0.0.1.*ConnectError"):
        backend.chat(
            [[{"role": "user", "content": "hi"}]], max_new_tokens=4, temperature=0.0, seed=0
        )


def test_rate_reads_digit_logprobs_from_the_server(llama_server_url, cache):
    backend = llm.load_backend(spec(llama_server_url), cache)
    prompt = [{"role": "user", "content": "How blue is the sky from 0 to 9? Reply with one digit."}]
    [rating] = backend.rate([prompt], scale=9)
    assert rating is not None and 0.0 <= rating <= 1.0
    assert backend.rate([prompt], scale=9) == [rating] and cache.hits == 1
