"""The backend interface: `chat` through the generation cache, `rate`, token counting."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import models
from ..cache import Entry, GenerationCache, request_key
from ..config import ModelSpec


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
        self.token_counter = None  # the run's one tokenizer (llm.count_tokens uses it)
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
        fresh: dict[str, Entry] = {}
        if todo:
            indices = list(todo.values())
            store = self._storer(list(todo), fresh, lambda entry: entry)
            try:
                self._generate_each(
                    [conversations[i] for i in indices],
                    params,
                    [seeds[i] for i in indices],
                    desc,
                    store,
                )
            finally:
                self.model_calls += 1
                self.generated += len(fresh)
            _check_complete(todo, fresh)
        return [
            _generation(fresh[k], False) if k in fresh else _generation(found[k], True)
            for k in keys
        ]

    def _storer(self, keys: list[str], fresh: dict, to_entry):
        """`store({position: result})`: cache results the moment they finish (one transaction
        per call), so a batch that fails halfway keeps everything already generated."""

        def store(done: dict) -> None:
            batch = {keys[j]: to_entry(result) for j, result in done.items()}
            fresh.update(batch)
            if self.cache is not None:
                self.cache.put_many(batch)

        return store

    def _generate_each(self, conversations, params, seeds, desc, store) -> None:
        """Generate, calling `store({position: Entry})` as entries finish. The default stores
        the whole batch at the end; backends that finish requests one by one store each."""
        store(dict(enumerate(self._generate(conversations, params, seeds, desc))))

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
            fresh: dict[str, Entry] = {}
            store = self._storer(list(todo), fresh, lambda p: Entry(json.dumps(p), 0, 0))
            try:
                self._rate_each([conversations[i] for i in todo.values()], store)
            finally:
                self.model_calls += 1
                self.generated += len(fresh)
            _check_complete(todo, fresh)
            found = {**found, **fresh}
        return [_expected_digit(json.loads(found[k].text), scale) for k in keys]

    def _rate_each(self, conversations, store) -> None:
        """Digit probabilities, calling `store({position: probabilities})` as they finish."""
        store(dict(enumerate(self._digit_probabilities(conversations))))

    def _digit_probabilities(self, conversations) -> list[list[float] | None]:
        raise NotImplementedError(f"{self.name} backend cannot rate")

    def count_tokens(self, texts: list[str]) -> list[int]:
        raise NotImplementedError(f"{self.name} backend has no tokenizer")


def _check_complete(todo: dict, fresh: dict) -> None:
    if len(fresh) != len(todo):
        raise BackendError(f"the backend answered {len(fresh)} of {len(todo)} requests")


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
