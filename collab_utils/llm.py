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

import asyncio
import concurrent.futures
import json
import os
import random
import time
from dataclasses import dataclass, fields

from tqdm.auto import tqdm

from . import models
from .cache import Entry, GenerationCache, request_key
from .config import ModelSpec


class BackendError(RuntimeError):
    """A generation request that failed for good (after retries)."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


class Backend:
    """The shared part of all backends: seeds, cache look-up, counting."""

    name = "base"

    def __init__(self, spec: ModelSpec, cache: GenerationCache | None):
        self.spec = spec
        self.cache = cache
        self.fingerprint = f"{self.name}:{models.fingerprint(spec.model, spec.adapter)}"
        self.model_calls = 0  # batched calls that reached the model
        self.generated = 0  # generations produced by the model (cache misses)

    def chat(
        self,
        conversations: list[list[dict]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int | list[int],
        desc: str | None = None,
    ) -> list[Generation]:
        """One generation per conversation; cached requests are answered without the model."""
        seeds = [seed] * len(conversations) if isinstance(seed, int) else list(seed)
        if len(seeds) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(seeds)} seeds")
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        keys = [request_key(self.fingerprint, c, params, s) for c, s in zip(conversations, seeds)]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        todo = {k: i for i, k in enumerate(keys) if k not in found}  # one request per key
        if todo:
            indices = list(todo.values())
            entries = self._generate(
                [conversations[i] for i in indices], params, [seeds[i] for i in indices], desc
            )
            self.model_calls += 1
            self.generated += len(entries)
            fresh = dict(zip(todo, entries))
            if self.cache is not None:
                self.cache.put_many(fresh)
        else:
            fresh = {}
        return [
            _generation(fresh[k], False) if k in fresh else _generation(found[k], True)
            for k in keys
        ]

    def _generate(
        self, conversations: list[list[dict]], params: dict, seeds: list[int], desc: str | None
    ) -> list[Entry]:
        raise NotImplementedError

    def rate(self, conversations: list[list[dict]], *, scale: int = 9) -> list[float | None]:
        """The model's expected rating as a digit 0..scale, mapped to [0, 1], per conversation.

        A judge reads the probabilities of the digit tokens for its next token instead of
        free text, so even a 135M model gives a usable, deterministic score. None where the
        backend saw no digit among its most likely tokens. Cached like generations.
        """
        if not 1 <= scale <= 9:
            raise ValueError(f"scale must be a single digit (1..9), got {scale}")
        params = {"rate": scale}
        keys = [request_key(self.fingerprint, c, params, 0) for c in conversations]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        todo = {k: i for i, k in enumerate(keys) if k not in found}
        if todo:
            probabilities = self._digit_probabilities([conversations[i] for i in todo.values()])
            self.model_calls += 1
            self.generated += len(todo)
            fresh = {
                k: Entry(json.dumps(p), 0, 0) for k, p in zip(todo, probabilities, strict=True)
            }
            if self.cache is not None:
                self.cache.put_many(fresh)
            found = {**found, **fresh}
        return [_expected_digit(json.loads(found[k].text), scale) for k in keys]

    def _digit_probabilities(self, conversations) -> list[list[float] | None]:
        raise NotImplementedError(f"{self.name} backend cannot rate")

    def count_tokens(self, texts: list[str]) -> list[int]:
        raise NotImplementedError(f"{self.name} backend has no tokenizer")


def _expected_digit(probabilities: list[float] | None, scale: int) -> float | None:
    """Σ d·p(d) / Σ p(d) over d = 0..scale, divided by scale; None without probabilities."""
    if not probabilities:
        return None
    weights = probabilities[: scale + 1]
    total = sum(weights)
    if total <= 0:
        return None
    return sum(d * w for d, w in enumerate(weights)) / total / scale


def _generation(entry: Entry, cached: bool) -> Generation:
    return Generation(entry.text, entry.prompt_tokens, entry.completion_tokens, cached)


# --------------------------------------------------------------------------- hf


def pick_dtype(requested: str):
    """`auto`: bf16 on CUDA, float32 on a CPU.

    On a CPU, bf16 kernels round differently with the batch's shape, so a row's text would
    depend on its batch mates and a resumed run could differ from an uninterrupted one; float32
    keeps every generation a function of its own request. `dtype: bfloat16` trades that for
    speed where the CPU has native bf16 (AVX512-BF16 / AMX): about 1.3x here.
    """
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


class SeededSampler:
    """A logits processor that samples each row with its own torch.Generator.

    It returns scores that are -inf everywhere but at the sampled token, so `generate` runs
    greedy and keeps the sample. Temperature and top-p follow the usual definitions; top-p
    looks at the `shortlist` most likely tokens first and sorts the whole vocabulary only for
    a row whose shortlist holds less than `top_p` of the mass (same result, much faster).
    """

    shortlist = 1024

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        vocab = logits.shape[-1]
        if self.top_p >= 1.0:
            probs, index = logits.softmax(-1), None
        else:
            probs, index = self._top(logits, min(self.shortlist, vocab))
            if bool((probs.sum(-1) < self.top_p).any()):
                probs, index = self._top(logits, vocab)
            probs = probs.masked_fill(probs.cumsum(-1) - probs > self.top_p, 0.0)
        picks = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)]
        )
        tokens = picks if index is None else index.gather(-1, picks)
        return torch.full_like(scores, float("-inf")).scatter(-1, tokens, 0.0)

    @staticmethod
    def _top(logits, k):
        """The k largest probabilities of each row, in descending order, and their token ids."""
        top, index = logits.topk(k, dim=-1)
        return (top - logits.logsumexp(-1, keepdim=True)).exp(), index


class HFBackend(Backend):
    """transformers on CPU or GPU; LoRA adapters through peft; 4-bit NF4 only on CUDA."""

    name = "hf"

    def __init__(self, spec: ModelSpec, cache: GenerationCache | None):
        super().__init__(spec, cache)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = models.resolve(spec.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.tokenizer.chat_template:
            raise BackendError(f"{spec.model}: the tokenizer has no chat template")
        kwargs = {"dtype": pick_dtype(spec.dtype)}
        if spec.load_in_4bit:
            if not torch.cuda.is_available():
                raise BackendError("load_in_4bit needs a CUDA GPU (bitsandbytes NF4)")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if torch.cuda.is_available() and not spec.load_in_4bit:
            model = model.to("cuda")
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        # Numerics change the samples: the weights' dtype and quantization are part of the key.
        precision = "nf4" if spec.load_in_4bit else str(kwargs["dtype"]).removeprefix("torch.")
        self.fingerprint += f":{precision}"

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False).input_ids]

    def prompt_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """Token ids of each conversation under the chat template, ready for a reply."""
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        return self.tokenizer(texts, add_special_tokens=False).input_ids

    def _generate(self, conversations, params, seeds, desc):
        prompts = self.prompt_ids(conversations)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = self.spec.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        results: dict[int, Entry] = {}
        bar = tqdm(total=len(prompts), desc=desc, disable=desc is None, leave=False)
        for batch in batches:
            rows = [prompts[i] for i in batch]
            generated = self.generate_ids(rows, params, [seeds[i] for i in batch])
            for i, ids in zip(batch, generated):
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                results[i] = Entry(text, len(prompts[i]), len(ids))
            bar.update(len(batch))
        bar.close()
        return [results[i] for i in range(len(prompts))]

    def generate_ids(
        self, rows: list[list[int]], params: dict, seeds: list[int]
    ) -> list[list[int]]:
        """One left-padded `generate` call; returns the new ids of each row up to its end."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        processors = LogitsProcessorList()
        if params["temperature"] > 0:
            processors.append(
                SeededSampler(seeds, params["temperature"], params["top_p"], self.device)
            )
        config = GenerationConfig(
            max_new_tokens=params["max_new_tokens"],
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self._stop_ids(),
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
            )
        stops = set(self._stop_ids())
        new_ids = []
        for row in out[:, width:].tolist():
            end = next((j for j, t in enumerate(row) if t in stops), len(row))
            new_ids.append(row[:end])
        return new_ids

    def _digit_probabilities(self, conversations):
        """p(next token = d) for d = 0..9 after the reply prefix "Score: ", in batches."""
        import torch

        digits = [self.tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
        if any(len(ids) != 1 for ids in digits):
            raise BackendError(f"{self.spec.model}: digits are not single tokens; cannot rate")
        digit_ids = [ids[0] for ids in digits]
        prefix = self.tokenizer("Score: ", add_special_tokens=False).input_ids
        rows = [ids + prefix for ids in self.prompt_ids(conversations)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: dict[int, list[float]] = {}
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.spec.batch_size):
            batch = order[start : start + self.spec.batch_size]
            width = max(len(rows[i]) for i in batch)
            ids = [[pad] * (width - len(rows[i])) + rows[i] for i in batch]
            mask = [[0] * (width - len(rows[i])) + [1] * len(rows[i]) for i in batch]
            with torch.inference_mode():
                logits = self.model(
                    input_ids=torch.tensor(ids, device=self.device),
                    attention_mask=torch.tensor(mask, device=self.device),
                    logits_to_keep=1,
                ).logits[:, -1, :]
            probs = logits.float().softmax(-1)[:, digit_ids].tolist()
            out.update(zip(batch, probs))
        return [out[i] for i in range(len(rows))]

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


# ----------------------------------------------------------------------- openai


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


# ---------------------------------------------------------------------- loading

_LOADED: dict[tuple, Backend] = {}


def load_backend(spec: str | dict | ModelSpec, cache: GenerationCache | str | None = None):
    """A backend for `spec` ("embedded", a dict as in params, or a ModelSpec).

    Roles with the same backend, model and adapter share one loaded model.
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
    if isinstance(cache, str | os.PathLike):
        cache = GenerationCache(cache)
    if spec.backend == "agenda":
        raise ValueError("the agenda backend is a user simulator: see collab_utils.simulate")
    key = (spec.backend, spec.model, spec.adapter, spec.dtype, spec.load_in_4bit, spec.base_url)
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
