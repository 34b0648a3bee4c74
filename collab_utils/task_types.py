"""What a task is: `Task` and its hidden `Requirement`s, shared by every loader and generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .task_files import TaskFormatError

KINDS = ("code", "math", "doc", "qa")


@dataclass(frozen=True)
class Requirement:
    """A hidden requirement the user reveals when asked about it."""

    id: str
    statement: str  # one line the user simulator can reveal
    keywords: tuple[str, ...]  # lowercase words/phrases that mean a question is about it


@dataclass(frozen=True)
class Task:
    """One collaborative task; `goal` is hidden from the assistant, `opening` is what users say."""

    id: str
    kind: str  # 'code' | 'math' | 'doc' | 'qa'
    goal: str
    opening: str
    reference: str  # solution code / exact answer / reference document / 'clarify' or 'answer'
    requirements: tuple[Requirement, ...] = ()
    tests: str = ""
    entry_point: str = ""
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


def check_unique(tasks: list[Task], path: Path) -> list[Task]:
    """`tasks`, or TaskFormatError naming the first repeated id."""
    seen = set()
    for index, task in enumerate(tasks):
        if task.id in seen:
            raise TaskFormatError(path, f"record {index}", "id", f"duplicate id {task.id!r}")
        seen.add(task.id)
    return tasks


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index].strip()
    return None
