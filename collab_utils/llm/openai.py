"""The `openai` backend: any OpenAI-compatible `/chat/completions` server (vLLM, llama.cpp,
Ollama, hosted APIs), bounded async concurrency, retries with backoff on 429, 5xx and timeouts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random

from tqdm.auto import tqdm

from ..cache import Entry, GenerationCache
from ..config import ModelSpec
from .base import Backend, BackendError


class OpenAIBackend(Backend):
    """An OpenAI-compatible `/chat/completions` endpoint, many requests in flight at once."""

    name = "openai"

    def __init__(self, spec: ModelSpec, cache: GenerationCache | None):
        super().__init__(spec, cache)
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(spec.api_key_env, "not-needed")
        self.retries = 0  # requests retried, summed over the backend's life

    def _generate(self, conversations, params, seeds, desc):
        return _run_coroutine(self._generate_all(conversations, params, seeds, desc))

    def _digit_probabilities(self, conversations):
        """One-token completions with top_logprobs (vLLM, llama.cpp and OpenAI support them)."""
        params = {"max_new_tokens": 1, "temperature": 0.0, "top_p": 1.0, "top_logprobs": 20}
        raw = _run_coroutine(
            self._generate_all(conversations, params, [0] * len(conversations), None)
        )
        return [_digits_from_top_logprobs(json.loads(entry.text)) for entry in raw]

    async def _generate_all(self, conversations, params, seeds, desc):
        import httpx

        limit = asyncio.Semaphore(self.spec.concurrency)
        bar = tqdm(total=len(conversations), desc=desc, disable=desc is None, leave=False)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(timeout=self.spec.timeout_s, headers=headers) as client:

            async def one(messages, seed):
                async with limit:
                    entry = await self._request(client, messages, params, seed)
                bar.update(1)
                return entry

            entries = await asyncio.gather(*(one(c, s) for c, s in zip(conversations, seeds)))
        bar.close()
        return list(entries)

    async def _request(self, client, messages, params, seed) -> Entry:
        import httpx

        body = {
            "model": self.spec.model,
            "messages": messages,
            "max_tokens": params["max_new_tokens"],
            "temperature": params["temperature"],
            "top_p": params["top_p"],
            "seed": seed,
        }
        if "top_logprobs" in params:
            body.update(logprobs=True, top_logprobs=params["top_logprobs"])
        last_error = ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * (1 + random.random()))
            try:
                response = await client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise BackendError(
                    f"{self.url}: HTTP {response.status_code} (not retried): {response.text[:300]}"
                )
            data = response.json()
            if "top_logprobs" in params:
                return Entry(json.dumps(data), 0, 0)
            usage = data.get("usage") or {}
            text = data["choices"][0]["message"].get("content") or ""
            return Entry(
                text.strip(), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            )
        raise BackendError(
            f"{self.url}: gave up after {self.spec.max_retries + 1} attempts; last error: "
            f"{last_error}"
        )


def _digits_from_top_logprobs(data: dict) -> list[float] | None:
    """p(d) for d = 0..9 from a chat completion's first-token top_logprobs (0 when absent)."""
    import math

    try:
        top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    probs = [0.0] * 10
    for item in top:
        token = item["token"].strip()
        if len(token) == 1 and token.isdigit():
            probs[int(token)] += math.exp(item["logprob"])
    return probs if any(probs) else None


def _run_coroutine(coroutine):
    """asyncio.run, also from inside a running loop (Jupyter) through a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
