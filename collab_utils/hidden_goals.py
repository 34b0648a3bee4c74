"""Hidden goals for loaded benchmarks: a vague opening and requirements from the problem text.

The full problem stays the task's hidden `goal`. The agenda user opens with a vague request (a
function's name and arguments and a few words of its purpose; the first sentence of a math
problem; "an article" without its title) and states a requirement, one sentence, docstring
example or constraint of the problem, when the assistant asks about one of its keywords.
"""

from __future__ import annotations

import ast
import inspect
import re

from .task_types import Requirement

__all__ = [
    "ASKING",
    "code_opening",
    "docstring",
    "docstring_requirements",
    "gist",
    "keywords",
    "requirement",
    "sentences",
    "signature_arguments",
    "unique",
]

GIST_WORDS = 12
_STOPWORDS = frozenset(
    """about above after again against also because been before being below between both
    does doing down during each even ever every first from further have having here into
    just like make makes many means more most much must need next note only other ought
    please same should some such take takes than that their them then there these they this
    those through under until upon used using very were what when where which while whom
    whose will with within would your yours""".split()
)
# Words of almost every code problem; a question that uses them is not about one requirement.
_GENERIC = frozenset(
    """function functions return returns returned given write code python value values input
    inputs output outputs following example examples list string integer number numbers""".split()
)
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "approx.", "Mr.", "Mrs.", "Dr.", "St.", "No.")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_EXAMPLE = ("example", "expected", "sample", "test case", "edge case", "input", "output")
ASKING = ("detail", "more about", "what exactly", "what should", "describe", "clarify", "specify")


def sentences(text: str) -> list[str]:
    """Sentences of prose, one line each, paragraph by paragraph; never split inside $...$ math
    or after 'e.g.'."""
    return [part for block in re.split(r"\n\s*\n", text) for part in _block_sentences(block)]


def _block_sentences(block: str) -> list[str]:
    flat = re.sub(r"\s+", " ", block).strip()
    parts, start = [], 0
    for match in _BOUNDARY.finditer(flat):
        before = flat[start : match.start()]
        if _in_math(flat[: match.start()]) or before.endswith(_ABBREVIATIONS):
            continue
        parts.append(flat[start : match.end()].strip())
        start = match.end()
    parts.append(flat[start:].strip())
    return [part for part in parts if part]


def _in_math(prefix: str) -> bool:
    """Is the end of `prefix` inside $...$ (unescaped dollars counted)?"""
    return len(re.findall(r"(?<!\\)\$", prefix)) % 2 == 1


def keywords(statement: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Distinctive lowercase words of `statement` (4+ letters, no stopwords, no LaTeX commands,
    no words of every code problem), then `extra`; a question with one of them asks about it."""
    plain = re.sub(r"\\[A-Za-z]+", " ", statement.lower())
    words = re.findall(r"[a-z][a-z_]{3,}", plain)
    chosen = [w for w in words if w not in _STOPWORDS and w not in _GENERIC]
    return tuple(dict.fromkeys([*chosen, *extra]))


def requirement(
    id: str, statement: str, extra: tuple[str, ...] = (), *, own_words: bool = True
) -> Requirement:
    """A requirement whose statement is one line; its keywords are `extra`, after the
    statement's own distinctive words when `own_words`."""
    line = re.sub(r"\s+", " ", statement).strip()
    found = keywords(line, extra) if own_words else tuple(dict.fromkeys(extra))
    return Requirement(id=id, statement=line, keywords=found)


def gist(sentence: str, max_words: int = GIST_WORDS) -> str:
    """The first half of a sentence (at most `max_words` words), '...' where it was cut."""
    words = sentence.split()
    keep = min(max_words, max(1, len(words) // 2))
    if keep >= len(words):
        return sentence
    return " ".join(words[:keep]).rstrip(",;:") + "..."


def signature_arguments(code: str, entry_point: str) -> list[str] | None:
    """Argument names of `entry_point` in `code` (a body may be missing); None if not found."""
    node = _function(code, entry_point) or _function(code + "    pass\n", entry_point)
    if node is None:
        match = re.search(rf"def\s+{re.escape(entry_point)}\s*\(([^)]*)\)", code)
        if not match:
            return None
        return [part.split(":")[0].split("=")[0].strip() for part in match[1].split(",") if part]
    args = node.args
    names = [a.arg for a in [*args.posonlyargs, *args.args]]
    names += [f"*{args.vararg.arg}"] if args.vararg else []
    names += [a.arg for a in args.kwonlyargs]
    names += [f"**{args.kwarg.arg}"] if args.kwarg else []
    return names


def _function(code: str, name: str) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node
    return None


def docstring(code: str, entry_point: str) -> str:
    """The docstring of `entry_point` in `code`: its first string statement, even after an
    import (HumanEval/115); '' when it has none."""
    node = _function(code, entry_point)
    for statement in node.body if node else []:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            if isinstance(statement.value.value, str):
                return inspect.cleandoc(statement.value.value)
    return ""


def docstring_requirements(doc: str) -> list[Requirement]:
    """One requirement per prose sentence and per `>>>` example of a docstring."""
    prose, examples = [], []
    lines = doc.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if line.startswith(">>>"):
            expected = []
            while index < len(lines) and lines[index].strip() and ">>>" not in lines[index]:
                expected.append(lines[index].strip())
                index += 1
            examples.append((line[3:].strip(), " ".join(expected)))
        elif not re.fullmatch(r"(for )?examples?( \d+)?\s*:?", line, re.IGNORECASE):
            prose.append(line)
    found = [
        requirement(f"sentence_{n}", text, ASKING)
        for n, text in enumerate(sentences("\n".join(prose)), start=1)
    ]
    for n, (call, result) in enumerate(examples, start=1):
        text = f"For example, {call} should give {result}." if result else f"For example: {call}"
        found.append(requirement(f"example_{n}", text, _EXAMPLE, own_words=False))
    return unique(found)


def unique(found: list[Requirement]) -> list[Requirement]:
    """`found` without repeated statements, in order."""
    seen, kept = set(), []
    for item in found:
        if item.statement not in seen:
            seen.add(item.statement)
            kept.append(item)
    return kept


def code_opening(entry_point: str, arguments: list[str] | None, purpose: str) -> str:
    """A vague first request: the function's name and arguments and the gist of its purpose."""
    call = f"{entry_point}({', '.join(arguments or [])})"
    opening = f"Can you write a Python function `{call}` for me?"
    first = sentences(purpose)[:1]
    return f"{opening} The idea: {gist(first[0])}" if first else opening
