"""What a stage notebook sets up from its params: the run folder, the tasks, the roles.

    params, run_dir = session.start(params_file, overrides)
    train_tasks, heldout_tasks = session.task_splits(params)
    roles = session.load_roles(params)                    # the base assistant
    trained = session.load_roles(params, adapter=run_dir / "adapter")

Roles with the same backend and model share one loaded model, and all of them share the run's
generation cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import config, llm, plots, simulate, tasks
from .cache import GenerationCache
from .config import Params
from .io import write_text


def start(params_file: str | Path, overrides: list[str] | None = None) -> tuple[Params, Path]:
    """Load and validate params, create the run folder, set up plotting."""
    params = config.load(params_file, overrides)
    params.run_dir.mkdir(parents=True, exist_ok=True)
    plots.setup()
    return params, params.run_dir


def task_splits(params: Params) -> tuple[list, list]:
    """(train, held-out) tasks: the first `limit` tasks of the source, split by `seed`."""
    loaded = tasks.load(params.tasks.source, params.tasks.format)
    if params.tasks.limit is not None:
        loaded = loaded[: params.tasks.limit]
    return tasks.split(loaded, params.tasks.holdout_fraction, params.seed)


@dataclass
class Roles:
    assistant: llm.Backend
    user: simulate.AgendaUser | simulate.LLMUser
    judge: llm.Backend
    cache: GenerationCache

    def generated(self) -> dict[str, int]:
        """Generations that reached a model, per role (cache hits excluded)."""
        user = getattr(self.user, "backend", None)
        return {
            "assistant": self.assistant.generated,
            "user": user.generated if user is not None else 0,
            "judge": self.judge.generated,
        }


def load_roles(params: Params, *, adapter: str | Path | None = None) -> Roles:
    """Backends for the run's roles; `adapter` replaces the assistant's LoRA adapter."""
    cache = GenerationCache(params.cache_file)
    spec = params.models.assistant
    if adapter is not None:  # a trained adapter runs locally, also when the base is served
        spec = dataclasses.replace(spec, backend="hf", base_url=None, adapter=str(adapter))
    assistant = llm.load_backend(spec, cache)
    user_spec = params.models.user
    backend = None if user_spec.backend == "agenda" else llm.load_backend(user_spec, cache)
    user = simulate.make_user(params, backend)
    judge = llm.load_backend(params.models.judge, cache)
    return Roles(assistant, user, judge, cache)


def inputs_digest(*inputs) -> str:
    """A digest of files (their bytes) and values (their JSON), to tell if a stage is stale."""
    digest = hashlib.sha256()
    for item in inputs:
        if isinstance(item, Path):
            digest.update(item.read_bytes())
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def up_to_date(marker: Path, *inputs) -> bool:
    """True when `marker` records the digest of these inputs (the stage's outputs are current)."""
    return marker.is_file() and marker.read_text().strip() == inputs_digest(*inputs)


def mark_done(marker: Path, *inputs) -> None:
    write_text(marker, inputs_digest(*inputs) + "\n")


def record_generations(run_dir: Path, stage: str, counts: dict[str, int]) -> dict[str, int]:
    """Store how many generations a stage sent to a model, per role (cache hits excluded)."""
    write_text(Path(run_dir) / "generations" / f"{stage}.json", json.dumps(counts) + "\n")
    return counts
