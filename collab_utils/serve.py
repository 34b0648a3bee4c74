"""Local OpenAI-compatible servers for the embedded model: llama.cpp's `llama_cpp.server`.

    with serve.llama_server() as base_url:
        backend = llm.load_backend({"backend": "openai", "model": "smollm2", "base_url": base_url})

    with serve.llama_servers(2) as servers:           # two servers, one port each
        urls = [s.url for s in servers]               # base_url: urls (least-loaded, failover)
        servers[0].kill()                             # a crash; servers[0].start() brings it back

Tests and the benchmark use them to exercise the `openai` backend against real servers on
loopback; on a cluster the same backend points at vLLM replicas instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from . import models

SERVED_NAME = "smollm2"

# llama-cpp-python reuses the previous prompt's matching prefix in its KV cache; the rest of the
# prompt is then evaluated in a batch of another shape, which rounds differently, and a near-tie
# token can flip (1 text in 24 differed between two identical rollouts over two servers). With
# `fresh_context` each request starts from an empty context, so its text depends on the request
# alone (seed included), whichever server and whatever came before.
_FRESH_CONTEXT_LAUNCHER = """
import runpy, sys, llama_cpp
_generate = llama_cpp.Llama.generate
def generate(self, tokens, *args, **kwargs):
    self.reset()
    return (yield from _generate(self, tokens, *args, **kwargs))
llama_cpp.Llama.generate = generate
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One `python -m llama_cpp.server` on 127.0.0.1 at a fixed port; start, kill, start again.

    `n_threads` defaults to the CPU count divided by `share` (how many servers run side by
    side), so several servers on one machine do not fight over the same cores. With
    `fresh_context` (the default) no prompt prefix is reused between requests: deterministic.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        port: int | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        share: int = 1,
        fresh_context: bool = True,
    ):
        self.model_path = model_path or str(models.embedded_gguf())
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 1) // max(1, share))
        self.fresh_context = fresh_context
        self.process: subprocess.Popen | None = None
        self.log_path: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        launch = (
            ["-c", _FRESH_CONTEXT_LAUNCHER] if self.fresh_context else ["-m", "llama_cpp.server"]
        )
        command = [sys.executable, *launch, "--model", self.model_path]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
        return command + ["--model_alias", SERVED_NAME, "--n_threads", str(self.n_threads)]

    def start(self, timeout_s: float = 180.0) -> str:
        """Start the server (if it is not running) and wait until it answers; its base URL."""
        self.require()
        if self.alive:
            return self.url
        log = tempfile.NamedTemporaryFile(prefix="llama_server.", suffix=".log", delete=False)
        self.log_path = log.name
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            _wait_ready(self.url, self.process, self.log_path, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def require(self) -> None:
        _require_llama_cpp()

    def kill(self) -> None:
        """SIGKILL, as a crash: requests in flight are dropped, new connections refused."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


LLAMA_SERVER_BIN = Path(__file__).resolve().parents[1] / "build/llama-server/bin/llama-server"


class NativeLlamaServer(LlamaServer):
    """llama.cpp's own `llama-server` (built by `make llama-server`) with `slots` parallel
    sequences and continuous batching: the peer the engine's speed is measured against."""

    def __init__(self, model_path: str | None = None, *, slots: int = 8, **options):
        options.setdefault("n_ctx", 2048)
        super().__init__(model_path, fresh_context=False, **options)
        self.slots = slots

    def require(self) -> None:
        if not LLAMA_SERVER_BIN.exists():
            raise RuntimeError(f"{LLAMA_SERVER_BIN} is missing: build it with `make llama-server`")

    def command(self) -> list[str]:
        command = [str(LLAMA_SERVER_BIN), "--model", self.model_path, "--alias", SERVED_NAME]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            str(self.n_threads),
        ]
        # --ctx-size is shared by the slots: each gets n_ctx tokens
        return command + ["--parallel", str(self.slots), "--ctx-size", str(self.n_ctx * self.slots)]


@contextlib.contextmanager
def llama_server(model_path: str | None = None, *, port: int | None = None, n_ctx: int = 4096):
    """Start `python -m llama_cpp.server` on 127.0.0.1 and yield its base URL (…/v1)."""
    with LlamaServer(model_path, port=port, n_ctx=n_ctx) as server:
        yield server.url


@contextlib.contextmanager
def llama_servers(n: int, model_path: str | None = None, *, n_ctx: int = 4096, **options):
    """`n` servers of the same model on their own ports, started side by side; yields them."""
    servers = [LlamaServer(model_path, n_ctx=n_ctx, share=n, **options) for _ in range(n)]
    try:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(LlamaServer.start, servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


def _require_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' "
            "(it compiles from source once, about 6 minutes on 2 cores)"
        ) from None


def _wait_ready(base_url: str, process: subprocess.Popen, log_path: str, timeout_s=180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path) as log:
                tail = log.read()[-2000:]
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:.0f} s ({log_path})")
