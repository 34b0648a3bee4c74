"""Shared fixtures: offline hub, the embedded model loaded once, the llama.cpp server once."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from collab_utils import llm, serve  # noqa: E402
from collab_utils.cache import GenerationCache  # noqa: E402


@pytest.fixture
def cache(tmp_path):
    return GenerationCache(tmp_path / "generations.sqlite")


@pytest.fixture(scope="session")
def embedded():
    """The embedded model through the hf backend, without a cache."""
    return llm.load_backend("embedded", None)


@pytest.fixture(scope="session")
def llama_server_url():
    """A real OpenAI-compatible server (llama.cpp) serving the embedded GGUF on loopback."""
    with serve.llama_server() as base_url:
        yield base_url
