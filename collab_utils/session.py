"""What a stage notebook sets up from its params: the run folder, the tasks, the roles.

    params, run = session.start(params_file, overrides)   # run: the run folder's file names
    train_tasks, heldout_tasks = session.task_splits(params)
    roles = session.load_roles(params)                    # the base assistant
    trained = session.load_roles(params, adapter=run.adapter)

Roles with the same backend and model share one loaded model, and all of them share the run's
generation cache. `make_user` is the one place a user simulator is built from params.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import config, llm, plots, sandbox, tasks
from .cache import GenerationCache
from .config import ModelSpec, Params
from .io import write_text
from .llm.lora import adapter_backend
from .run_folder import RunFolder
from .users import AgendaUser, LLMUser


def start(params_file: str | Path, overrides: list[str] | None = None) -> tuple[Params, RunFolder]:
    """Load and validate params, create the run folder with the resolved params.yaml, set up
    plotting. `overrides` as `config.load` takes them (a list, or one string from papermill)."""
    # transformers 5 renames gradient checkpointing; TRL still calls the old names (not ours)
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6")
    params = config.load(params_file, overrides)
    params.run_dir.mkdir(parents=True, exist_ok=True)
    params.dump(params.run.params)  # a notebook run on its own records what it ran with
    plots.setup()
    return params, params.run


def task_splits(params: Params) -> tuple[list, list]:
    """(train, held-out) tasks: the first `limit` tasks of the source, split by `seed`."""
    loaded = tasks.load(params.tasks.source, params.tasks.format)
    if params.tasks.limit is not None:
        loaded = loaded[: params.tasks.limit]
    marks = [task.metadata.get("split") for task in loaded]
    if loaded and set(marks) <= {"train", "heldout"}:  # a set split by template (stories)
        return [t for t in loaded if t.metadata["split"] == "train"], [
            t for t in loaded if t.metadata["split"] == "heldout"
        ]
    return tasks.split(loaded, params.tasks.holdout_fraction, params.seed)


def make_user(
    params: Params, cache: GenerationCache | None = None, *, spec: ModelSpec | None = None
):
    """The user simulator of `spec` (default: `params.models.user`): `AgendaUser` for backend
    'agenda', else an `LLMUser` on that model with the params' user sampling."""
    spec = spec or params.models.user
    if spec.backend == "agenda":
        return AgendaUser(params.tasks.accept_bleu)
    backend = llm.load_backend(spec, cache)
    return LLMUser(backend, params.sampling("user"), bleu_threshold=params.tasks.accept_bleu)


@dataclass
class Roles:
    assistant: llm.Backend
    user: AgendaUser | LLMUser
    judge: llm.Backend
    cache: GenerationCache
    counter: llm.TokenCounter  # every system's tokens, whatever serves it

    def generated(self) -> dict[str, int]:
        """Generations that reached a model, per role (cache hits excluded)."""
        user = getattr(self.user, "backend", None)
        return {
            "assistant": self.assistant.generated,
            "user": user.generated if user is not None else 0,
            "judge": self.judge.generated,
        }


def token_counter(params: Params) -> llm.TokenCounter:
    """The run's one tokenizer: `generation.tokenizer`, else the assistant model's own, loaded
    locally also when the assistant is served."""
    name = params.generation.tokenizer or params.models.assistant.model
    try:
        return llm.token_counter(name)
    except Exception as exc:  # a hub id that is not here, a folder without a tokenizer
        raise config.ParamsError(
            f"{params.source_file}: key 'generation.tokenizer': cannot load the tokenizer "
            f"{name!r} that counts every system's tokens ({type(exc).__name__}: {exc}); name "
            "a local model folder or an installed model"
        ) from None


def load_roles(params: Params, *, adapter: str | Path | None = None) -> Roles:
    """Backends for the run's roles; `adapter` replaces the assistant's LoRA adapter. Every
    assistant counts tokens with the run's one tokenizer (`token_counter`)."""
    sandbox.allow_unisolated(params.tasks.allow_unisolated)
    cache = GenerationCache(params.cache_file)
    spec = params.models.assistant
    if adapter is None:
        assistant = llm.load_backend(spec, cache)
    else:  # served by the inference server where it can (vLLM's LoRA support), else local hf
        assistant = adapter_backend(spec, adapter, cache)
    counter = token_counter(params)
    assistant.token_counter = counter
    judge = llm.load_backend(params.models.judge, cache)
    return Roles(assistant, make_user(params, cache), judge, cache, counter)


def record_generations(run: RunFolder, stage: str, counts: dict[str, int]) -> dict[str, int]:
    """Store how many generations a stage sent to a model, per role (cache hits excluded)."""
    write_text(RunFolder(run).generations(stage), json.dumps(counts) + "\n")
    return counts
