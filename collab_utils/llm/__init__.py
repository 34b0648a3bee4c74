"""LLM backends behind one interface, every generation through the cache.

    backend = llm.load_backend("embedded")
    gens = backend.chat(conversations, max_new_tokens=64, temperature=0.8, seed=[1, 2, 3])

`chat` takes a list of conversations (lists of {"role", "content"}) and one seed per
conversation (or one int for all), and returns one `Generation` per conversation. Requests
found in the cache cost nothing; the rest go to the model in one batched call.

- `hf`: transformers, left-padded batches grouped by prompt length. Sampling is seeded per
  row (`SeededSampler`), so a row's text depends on its own seed, not on its batch mates.
- `openai`: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs) with bounded
  async concurrency and retries with backoff on 429, 5xx and timeouts.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields
from pathlib import Path

from .. import models
from ..cache import GenerationCache
from ..config import ModelSpec
from .base import Backend, BackendError, Generation
from .hf import HFBackend, SeededSampler, pick_dtype
from .openai import OpenAIBackend
from .tokens import TokenCounter, token_counter

__all__ = [
    "Backend",
    "BackendError",
    "Generation",
    "HFBackend",
    "OpenAIBackend",
    "SeededSampler",
    "TokenCounter",
    "count_tokens",
    "load_backend",
    "pick_dtype",
    "token_counter",
]


_LOADED: dict[tuple, Backend] = {}


def default_cache_file() -> Path:
    """The project's generation cache, the one every run shares (`cache_path` in params)."""
    from ..config import Params

    return Params().cache_file


def load_backend(spec: str | dict | ModelSpec, cache: GenerationCache | str | Path | bool = True):
    """A backend for `spec` ("embedded", a dict as in params, or a ModelSpec).

    Every generation goes through `cache`: by default the project's cache file
    (`default_cache_file()`); a path or a `GenerationCache` for another one; `False` (or None)
    for none. Roles with the same backend, model and adapter share one loaded model.
    """
    if isinstance(spec, str):
        spec = ModelSpec(model=spec)
    elif isinstance(spec, dict):
        known = {f.name for f in fields(ModelSpec)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown model spec keys {sorted(unknown)}; known: {sorted(known)}")
        spec = ModelSpec(**spec)
    spec.check("model")
    if cache is True:
        cache = default_cache_file()
    if cache is False:
        cache = None
    if isinstance(cache, str | os.PathLike):
        cache = GenerationCache(cache)
    if spec.backend == "agenda":
        raise ValueError("the agenda backend is a user simulator: see collab_utils.users")
    # an adapter by its weights, not its path: one retrained into the same folder is new
    adapter = models.fingerprint(spec.model, spec.adapter) if spec.adapter else None
    key = (spec.backend, spec.model, adapter, spec.dtype, spec.load_in_4bit)
    key += (str(spec.base_url), spec.adapter_name)  # base_url may be a list
    shared = _LOADED.get(key)
    backend_cls = {"hf": HFBackend, "openai": OpenAIBackend}[spec.backend]
    if shared is None:
        started = time.perf_counter()
        backend = backend_cls(spec, cache)
        backend.load_seconds = time.perf_counter() - started
        _LOADED[key] = backend
        return backend
    twin = object.__new__(backend_cls)  # same weights, this role's cache and settings
    twin.__dict__.update(shared.__dict__, spec=spec, cache=cache, model_calls=0, generated=0)
    return twin


def count_tokens(backend, texts: list[str]) -> list[int]:
    """Token counts with the backend's `token_counter` (the run's one tokenizer, set by
    `session.load_roles`), else its own tokenizer; without either (no backend, a remote server)
    an estimate of 4/3 tokens per word."""
    if not texts:
        return []
    counter = getattr(backend, "token_counter", None)
    if counter is not None:
        return counter(texts)
    if backend is not None:
        try:
            return backend.count_tokens(texts)
        except NotImplementedError:
            pass
    return [round(len(text.split()) * 4 / 3) for text in texts]
