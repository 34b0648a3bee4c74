"""Loaders for public benchmark formats: HumanEval, BigCodeBench, MATH, Medium, Abg-CoQA.

Each loader keeps the full problem as the hidden `goal` and gives the agenda user a vague
`opening` and `requirements` taken from the problem statement (`hidden_goals`). A field of the
wrong type raises `TaskFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .hidden_goals import (
    ASKING,
    code_opening,
    docstring,
    docstring_requirements,
    requirement,
    sentences,
    signature_arguments,
    unique,
)
from .task_files import TaskFormatError, records, text_field, typed_field
from .task_types import Task, check_unique, last_boxed

__all__ = ["LOADERS"]

_RAISES = ("error", "exception", "raise", "invalid", "edge case", "fail")
_OUTPUT = ("return", "output", "result", "format", "type")
_IMPORTS = ("librar", "import", "package", "module", "dependenc")
_MATH_ASKING = ("problem", "question", "detail", "exact", "full", "given", "tell me", "what is")
_TOPIC = ("topic", "title", "about", "subject", "theme", "focus")
_LENGTH = ("long", "length", "words", "paragraph", "short", "size")
_POINTS = ("point", "cover", "include", "mention", "key", "main", "idea", "content")


def _identifier(record: dict, names: tuple[str, ...], path: Path, where: str) -> str | None:
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TaskFormatError(path, where, name, "expected a string or an integer")
        return str(value)
    return None


def _code_task(
    path, where, record, *, goal, prompt, entry_point, found, reference, tests, **metadata
) -> Task:
    arguments = signature_arguments(prompt, entry_point)
    if arguments is None:
        raise TaskFormatError(path, where, "entry_point", f"no function {entry_point!r} defined")
    purpose = next((r.statement for r in found if r.id.startswith("sentence")), "")
    return Task(
        id=text_field(record, "task_id", path, where),
        kind="code",
        goal=goal,
        opening=code_opening(entry_point, arguments, purpose),
        requirements=tuple(found),
        reference=reference,
        tests=tests,
        entry_point=entry_point,
        metadata={"prompt": prompt, **metadata},
    )


def load_humaneval(path: Path) -> list[Task]:
    tasks = []
    for where, record in records(path):
        prompt = text_field(record, "prompt", path, where)
        entry_point = text_field(record, "entry_point", path, where)
        solution = text_field(record, "canonical_solution", path, where)
        tasks.append(
            _code_task(
                path,
                where,
                record,
                goal=f"Complete this Python function:\n```python\n{prompt}```",
                prompt=prompt,
                entry_point=entry_point,
                found=docstring_requirements(docstring(prompt, entry_point)),
                source="humaneval",
                reference=prompt + solution,
                tests=text_field(record, "test", path, where),
            )
        )
    return check_unique(tasks, path)


def _instruct_requirements(instruct: str, code_prompt: str) -> list:
    """Sentences of a BigCodeBench instruction, its exceptions, its output and its imports."""
    head = instruct.split("You should write self-contained code", 1)[0]
    parts = re.split(r"The function should (raise the exception for|output with):", head)
    found = [
        requirement(f"sentence_{n}", text, ASKING)
        for n, text in enumerate(sentences(parts[0]), start=1)
    ]
    for kind, body in zip(parts[1::2], parts[2::2]):
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        if kind.startswith("raise"):
            found += [
                requirement(f"raises_{n}", f"It should raise {line}", _RAISES)
                for n, line in enumerate(lines, start=1)
            ]
        elif lines:
            found.append(requirement("output", f"It should output {' '.join(lines)}", _OUTPUT))
    imports = [line for line in code_prompt.splitlines() if line.startswith(("import ", "from "))]
    if imports:
        modules = tuple(line.split()[1].split(".")[0].lower() for line in imports)
        statement = f"It should use these imports: {'; '.join(imports)}"
        found.append(requirement("imports", statement, _IMPORTS + modules))
    return unique(found)


def load_bigcodebench(path: Path) -> list[Task]:
    tasks = []
    for where, record in records(path):
        instruct = text_field(record, "instruct_prompt", path, where)
        code_prompt = text_field(record, "code_prompt", path, where)
        tests = text_field(record, "test", path, where)
        if "TestCase" not in tests:
            raise TaskFormatError(path, where, "test", "expected a unittest TestCases class")
        libs = record.get("libs", "")
        if not isinstance(libs, str | list):
            raise TaskFormatError(path, where, "libs", "expected a string or a list")
        tasks.append(
            _code_task(
                path,
                where,
                record,
                goal=instruct,
                prompt=code_prompt,
                entry_point=text_field(record, "entry_point", path, where),
                found=_instruct_requirements(instruct, code_prompt),
                source="bigcodebench",
                libs=libs,
                reference=code_prompt + text_field(record, "canonical_solution", path, where),
                tests=tests,
            )
        )
    return check_unique(tasks, path)


def load_math(path: Path) -> list[Task]:
    tasks = []
    for index, (where, record) in enumerate(records(path)):
        problem = text_field(record, "problem", path, where)
        solution = text_field(record, "solution", path, where)
        answer = text_field(record, "answer", path, where, required=False) or last_boxed(solution)
        if not answer:
            raise TaskFormatError(path, where, "solution", "no \\boxed{} answer")
        subject = (
            text_field(record, "type", path, where, required=False)
            or text_field(record, "subject", path, where, required=False)
            or ""
        )
        parts = sentences(problem)
        if len(parts) >= 2:
            opening, hidden = f"{parts[0]} Can you help me with this?", parts[1:]
        else:
            opening, hidden = f"Can you help me with a {subject.lower() or 'math'} problem?", parts
        tasks.append(
            Task(
                id=_identifier(record, ("unique_id", "id"), path, where) or f"{path.stem}/{index}",
                kind="math",
                goal=problem,
                opening=opening,
                reference=answer,
                requirements=tuple(
                    unique(
                        [
                            requirement(f"part_{n}", text, _MATH_ASKING)
                            for n, text in enumerate(hidden, start=1)
                        ]
                    )
                ),
                metadata={
                    "source": "math",
                    "solution": solution,
                    "level": text_field(record, "level", path, where, required=False) or "",
                    "type": subject,
                },
            )
        )
    return check_unique(tasks, path)


def _paragraphs(text: str) -> list[str]:
    pattern = r"\n\s*\n" if re.search(r"\n\s*\n", text) else r"\n"
    return [p.strip() for p in re.split(pattern, text) if p.strip()]


def load_medium(path: Path) -> list[Task]:
    """Articles: the simulator knows the title and the text; the opening names neither."""
    tasks = []
    for where, record in records(path):
        title = text_field(record, "title", path, where)
        text = text_field(record, "text", path, where)
        url = text_field(record, "url", path, where, required=False) or ""
        paragraphs = _paragraphs(text)
        count = f"{len(paragraphs)} paragraph{'s' if len(paragraphs) > 1 else ''}"
        found = [
            requirement("topic", f"The article is titled '{title}'.", _TOPIC),
            requirement(
                "length",
                f"It should be about {len(text.split())} words in {count}.",
                _LENGTH,
            ),
        ]
        for n, paragraph in enumerate(paragraphs[:3], start=1):
            point = f"One point it should make: {sentences(paragraph)[0]}"
            found.append(requirement(f"point_{n}", point, _POINTS))
        digest = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:12]
        tasks.append(
            Task(
                id=f"medium/{digest}",
                kind="doc",
                goal=f"Write a Medium article titled '{title}' that says the following:\n{text}",
                opening="Can you help me write an article for my Medium blog?",
                reference=text,
                requirements=tuple(unique(found)),
                metadata={"source": "medium", "title": title, "url": url},
            )
        )
    return check_unique(tasks, path)


def _coqa_turn_text(turn: dict, name: str, path: Path, where: str) -> str:
    value = turn.get(name, "")
    if not isinstance(value, str):
        raise TaskFormatError(path, where, name, "expected a string")
    return value


def _coqa_history(record: dict, path: Path, where: str) -> str:
    turns = typed_field(record, "history_turns", list, path, where, default=[])
    lines = []
    for index, turn in enumerate(turns):
        spot = f"{where}, history_turns[{index}]"
        if not isinstance(turn, dict):
            raise TaskFormatError(path, spot, "<turn>", "expected an object")
        turn_id = turn.get("turn_id", 0)
        if isinstance(turn_id, bool) or not isinstance(turn_id, int):
            raise TaskFormatError(path, spot, "turn_id", "expected an integer")
        question = _coqa_turn_text(turn, "question", path, spot)
        answer = _coqa_turn_text(turn, "answer", path, spot)
        lines.append((turn_id, f"Q: {question}\nA: {answer}\n"))
    return "".join(text for _id, text in sorted(lines, key=lambda pair: pair[0]))


def load_abg_coqa(path: Path) -> list[Task]:
    tasks = []
    for where, record in records(path):
        story = text_field(record, "story", path, where)
        target = typed_field(record, "target_turn", dict, path, where)
        if target is None:
            raise TaskFormatError(path, where, "target_turn", "missing")
        question = text_field(target, "question", path, where + ", target_turn")
        ambiguity = text_field(record, "ambiguity", path, where)
        if ambiguity not in ("ambiguous", "non_ambiguous"):
            raise TaskFormatError(path, where, "ambiguity", f"unexpected value {ambiguity!r}")
        opening = f"{story}\n\n{_coqa_history(record, path, where)}Question: {question}"
        clarification = typed_field(record, "clarification_turn", dict, path, where, default={})
        task_id = _identifier(record, ("id",), path, where)
        if task_id is None:
            raise TaskFormatError(path, where, "id", "missing")
        tasks.append(
            Task(
                id=task_id,
                kind="qa",
                goal=f"Get an answer to this question about the story:\n{opening}",
                opening=opening,
                reference="clarify" if ambiguity == "ambiguous" else "answer",
                metadata={
                    "source": "abg-coqa",
                    "answer": _coqa_turn_text(target, "answer", path, where + ", target_turn"),
                    "clarifying_question": _coqa_turn_text(
                        clarification, "question", path, where + ", clarification_turn"
                    ),
                },
            )
        )
    return check_unique(tasks, path)


LOADERS = {
    "humaneval": load_humaneval,
    "bigcodebench": load_bigcodebench,
    "math": load_math,
    "medium": load_medium,
    "abg-coqa": load_abg_coqa,
}
