"""Trained adapters served by the inference server, tested against a small fake of vLLM's
documented LoRA protocol (there is no vLLM here): `POST /v1/load_lora_adapter` with
{"lora_name", "lora_path"}, adapters listed in `/v1/models` with `root` and `parent`, and
requests naming the adapter in `model`. What vLLM then computes stays unproven here."""

import http.server
import json
import threading
import time

import pytest

from collab_utils import llm
from collab_utils.config import ModelSpec
from collab_utils.llm import lora
from collab_utils.llm.openai import LoRANotServed, OpenAIBackend

HELLO = [[{"role": "user", "content": "hi"}]]


class FakeVLLM(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, obj):
        data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        state = self.server.state
        cards = [{"id": "base", "object": "model", "created": int(time.time()),
                  "owned_by": "vllm", "root": "/models/base", "parent": None,
                  "max_model_len": 4096, "permission": [{"id": f"perm-{time.time()}"}]}]  # fmt: skip
        for name, path in state["loras"].items():
            cards.append({"id": name, "object": "model", "created": int(time.time()),
                          "owned_by": "vllm", "root": path, "parent": "base"})  # fmt: skip
        self._send(200, {"object": "list", "data": cards})

    def do_POST(self):
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state["seen"].append((self.path, body))
        if self.path == "/v1/load_lora_adapter":
            if not state["runtime_lora"]:
                return self._send(404, {"detail": "Not Found"})
            name = body["lora_name"]
            if name in state["loras"]:
                message = f"The lora adapter '{name}' has already been loaded."
                return self._send(400, {"error": {"message": message, "code": 400}})
            state["loras"][name] = body["lora_path"]
            return self._send(200, f"Success: LoRA adapter '{name}' added successfully.")
        model = body["model"]
        if model != "base" and model not in state["loras"]:
            message = f"The model `{model}` does not exist."
            return self._send(404, {"error": {"message": message, "code": 404}})
        reply = {"choices": [{"message": {"content": f"from {model}"}}],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 2}}  # fmt: skip
        self._send(200, reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def vllm():
    started = []

    def start(runtime_lora=True, loras=None):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
        httpd.daemon_threads = True
        httpd.state = {"runtime_lora": runtime_lora, "loras": dict(loras or {}), "seen": []}
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"weights-v1")
    return folder


def spec(urls, **extra):
    return ModelSpec(backend="openai", model="base", base_url=urls, **extra)


def loads(server):
    return [body for path, body in server.state["seen"] if path == "/v1/load_lora_adapter"]


def chat_models(server):
    return [body["model"] for path, body in server.state["seen"] if path.endswith("completions")]


def test_adapter_is_loaded_on_every_server_and_requested_by_name(vllm, adapter):
    a, b = vllm(), vllm()
    backend = llm.load_backend(spec([a.url, b.url], adapter=str(adapter), concurrency=1), False)
    gens = backend.chat(HELLO * 4, max_new_tokens=4, temperature=0.0, seed=[1, 2, 3, 4])
    name = backend.served_model
    assert name.startswith("collab-lora-") and [g.text for g in gens] == [f"from {name}"] * 4
    for server in (a, b):
        assert loads(server) == [{"lora_name": name, "lora_path": str(adapter.resolve())}]
        assert chat_models(server) and set(chat_models(server)) == {name}


def test_cache_key_holds_the_adapter_weights(vllm, adapter):
    a, b = vllm(), vllm()
    base = llm.load_backend(spec(a.url), False).fingerprint
    tuned = llm.load_backend(spec(a.url, adapter=str(adapter)), False).fingerprint
    replica = llm.load_backend(spec(b.url, adapter=str(adapter)), False).fingerprint
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-v2")
    retrained = OpenAIBackend(spec(b.url, adapter=str(adapter)), None).fingerprint
    assert len({base, tuned, retrained}) == 3 and tuned == replica


def test_adapter_preloaded_with_lora_modules_is_found_by_its_path(vllm, adapter):
    server = vllm(runtime_lora=False, loras={"trained": str(adapter.resolve())})
    fresh = vllm()
    backend = llm.load_backend(spec(server.url, adapter=str(adapter)), False)
    [gen] = backend.chat(HELLO, max_new_tokens=4, temperature=0.0, seed=0)
    assert gen.text == "from trained" and not loads(server)
    loaded = llm.load_backend(spec(fresh.url, adapter=str(adapter)), False)
    assert loaded.fingerprint == backend.fingerprint  # same weights, however the server got them


def test_adapter_name_from_params_is_requested(vllm):
    server = vllm(loras={"sql": "/srv/adapters/sql"})
    backend = llm.load_backend(spec(server.url, adapter_name="sql"), False)
    [gen] = backend.chat(HELLO, max_new_tokens=4, temperature=0.0, seed=0)
    assert gen.text == "from sql" and chat_models(server) == ["sql"] and not loads(server)
    missing = llm.load_backend(spec(server.url, adapter_name="absent"), False)
    with pytest.raises(LoRANotServed, match="absent"):
        missing.chat(HELLO, max_new_tokens=4, temperature=0.0, seed=0)


def test_adapter_name_needs_the_openai_backend(tmp_path):
    from collab_utils import config

    file = tmp_path / "p.yaml"
    file.write_text("models:\n  assistant: {backend: hf, adapter_name: sql}\n")
    with pytest.raises(config.ParamsError, match="models.assistant.adapter_name"):
        config.load(file)


def test_adapter_backend_serves_on_the_server_when_it_can(vllm, adapter):
    server = vllm()
    backend = lora.adapter_backend(spec(server.url), adapter, False)
    assert isinstance(backend, OpenAIBackend) and backend.spec.adapter == str(adapter)
    assert len(loads(server)) == 1


def test_adapter_backend_falls_back_to_hf(vllm, adapter, monkeypatch):
    server = vllm(runtime_lora=False)
    real = llm.load_backend
    made = []

    def load_backend(s, cache=True):
        if s.backend == "hf":
            made.append(s)
            return "local hf backend"
        return real(s, cache)

    monkeypatch.setattr(llm, "load_backend", load_backend)
    with pytest.warns(UserWarning, match="runs locally .hf.*VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        backend = lora.adapter_backend(spec(server.url), adapter, False)
    assert backend == "local hf backend"
    [local] = made
    assert (local.backend, local.base_url, local.adapter, local.model) == (
        "hf",
        None,
        str(adapter),
        "base",
    )


def test_adapter_backend_on_a_local_base_is_hf(adapter, monkeypatch):
    monkeypatch.setattr(llm, "load_backend", lambda s, cache=True: s)
    local = lora.adapter_backend(ModelSpec(model="embedded"), adapter, False)
    assert (local.backend, local.adapter) == ("hf", str(adapter))
