"""A local OpenAI-compatible server for the embedded model: llama.cpp's `llama_cpp.server`.

    with serve.llama_server() as base_url:
        backend = llm.load_backend({"backend": "openai", "model": "smollm2", "base_url": base_url})

Tests and the benchmark use it to exercise the `openai` backend against a real server on
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

import httpx

from . import models

SERVED_NAME = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(model_path: str | None = None, *, port: int | None = None, n_ctx: int = 4096):
    """Start `python -m llama_cpp.server` on 127.0.0.1 and yield its base URL (…/v1)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' "
            "(it compiles from source once, about 6 minutes on 2 cores)"
        ) from None
    port = port or free_port()
    model_path = model_path or str(models.embedded_gguf())
    log = tempfile.NamedTemporaryFile(prefix="llama_server.", suffix=".log", delete=False)
    command = [sys.executable, "-m", "llama_cpp.server", "--model", model_path]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    command += ["--model_alias", SERVED_NAME, "--n_threads", str(os.cpu_count() or 1)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(base_url, process, log.name)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(base_url: str, process: subprocess.Popen, log_path: str, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = open(log_path).read()[-2000:]
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:.0f} s ({log_path})")
