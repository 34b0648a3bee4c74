"""What answers a participant: the study's systems, and the replies they write.

A system is a loaded backend plus an optional system prompt; the participant never learns which:

    base       `params.models.assistant` as it is (hf or openai)
    proactive  the same model with `simulate.PROACTIVE_SYSTEM_PROMPT`
    trained    the run's trained adapter (`<run>/train/adapter`)
    NAME       any other LoRA adapter, given as NAME=PATH

Systems on the same weights share one loaded model and one batch queue, so a base and a
proactive participant typing at the same moment are answered by one forward pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import llm
from ..run_folder import RunFolder
from ..seeds import derive_seed
from ..simulate import PROACTIVE_SYSTEM_PROMPT, with_system
from .batching import dispatcher
from .store import Store

DEFAULT_SYSTEMS = ("base", "proactive", "trained")


class SystemsError(ValueError):
    """A system that cannot be built (a missing adapter, an unknown name)."""


@dataclass
class System:
    name: str
    backend: object
    system_prompt: str | None = None

    @property
    def fingerprint(self) -> str:
        """The backend's weights fingerprint, plus the system prompt's digest."""
        if not self.system_prompt:
            return self.backend.fingerprint
        digest = hashlib.sha256(self.system_prompt.encode()).hexdigest()[:12]
        return f"{self.backend.fingerprint}:prompt-{digest}"

    def detail(self) -> dict:
        spec = self.backend.spec
        return {
            "backend": spec.backend,
            "model": spec.model,
            "adapter": spec.adapter,
            "base_url": spec.base_url,
            "system_prompt": self.system_prompt,
        }

    def conversation(self, messages: list[dict]) -> list[dict]:
        """What the model sees: the system prompt (if any), then the chat."""
        return with_system(messages, self.system_prompt) if self.system_prompt else messages


def build_systems(
    params, names: list[str] | None = None, adapters: dict[str, str] | None = None, cache=None
) -> dict[str, System]:
    """The systems `names`; by default base, proactive, trained (when the run has an adapter)
    and every adapter of `adapters` ({name: path})."""
    adapters = dict(adapters or {})
    trained = RunFolder(params.run_dir).adapter
    if names is None:
        defaults = [n for n in DEFAULT_SYSTEMS if n != "trained" or trained.is_dir()]
        names = list(dict.fromkeys([*defaults, *adapters]))
    for name in names:
        if name not in DEFAULT_SYSTEMS and name not in adapters:
            raise SystemsError(
                f"unknown system {name!r}: use {', '.join(DEFAULT_SYSTEMS)} or give an adapter "
                f"as {name}=PATH"
            )
    if "trained" in names and "trained" not in adapters:
        adapters["trained"] = str(trained)
    spec = params.models.assistant
    systems: dict[str, System] = {}
    if {"base", "proactive"} & set(names):
        base = llm.load_backend(spec, cache)
        if "base" in names:
            systems["base"] = System("base", base)
        if "proactive" in names:
            systems["proactive"] = System("proactive", base, PROACTIVE_SYSTEM_PROMPT)
    for name in names:
        if name not in adapters:
            continue
        if not (Path(adapters[name]) / "adapter_config.json").is_file():
            raise SystemsError(
                f"system {name!r} needs a LoRA adapter at {adapters[name]} (adapter_config.json):"
                " train one (notebook 04) or give its folder with --adapter NAME=PATH"
            )
        adapter_spec = dataclasses.replace(
            spec, backend="hf", base_url=None, adapter=adapters[name]
        )
        systems[name] = System(name, llm.load_backend(adapter_spec, cache))
    if not systems:
        raise SystemsError("a study needs at least one system")
    return systems


class Replies:
    """Asks each session's system for its reply and stores it; one request per session at once.

    `schedule(session_id)` does nothing for a session already waiting. A failed generation is
    kept in `errors` (the page offers to try again) and logged as an event.
    """

    def __init__(self, store: Store, systems: dict[str, System], *, seed: int, sampling: dict,
                 wait_s: float, max_batch: int):  # fmt: skip
        self.store, self.systems, self.seed = store, systems, seed
        self.errors: dict[str, str] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self._queues = {}
        for system in systems.values():
            key = id(system.backend)
            if key not in self._queues:
                self._queues[key] = dispatcher(
                    system.backend,
                    sampling,
                    wait_s=wait_s,
                    max_batch=max_batch,
                    on_batch=lambda tags: store.event(None, "batch", size=len(tags), sessions=tags),
                )

    def waiting(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._waiting

    def schedule(self, session_id: str) -> None:
        with self._lock:
            if session_id in self._waiting:
                return
            self._waiting.add(session_id)
            self.errors.pop(session_id, None)
        session = self.store.session(session_id)
        messages = [
            {"role": m["role"], "content": m["content"]} for m in self.store.messages(session_id)
        ]
        turn = sum(m["role"] == "user" for m in messages)
        system = self.systems.get(session["system"])
        if system is None:  # the server restarted without this session's system
            self._done(session_id, turn, None, SystemsError(f"{session['system']!r} not served"))
            return
        seed = derive_seed(self.seed, "study", session_id, turn)
        self._queues[id(system.backend)].submit(
            system.conversation(messages),
            seed,
            lambda generation, error: self._done(session_id, turn, generation, error),
            session_id,
        )

    def _done(self, session_id: str, turn: int, generation, error: Exception | None) -> None:
        if error is None:
            self.store.add_reply(session_id, turn, generation.text, generation.completion_tokens)
        else:
            message = f"{type(error).__name__}: {error}"
            self.store.event(session_id, "generation_error", turn=turn, error=message[:500])
        with self._lock:
            self._waiting.discard(session_id)
            if error is not None:
                self.errors[session_id] = message

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
