"""Task metrics and answer checking: R_ext of a response, and which message is the answer.

answer_score(task, text, doc_metric)          code: all tests pass; math: accuracy; doc: BLEU
final_answer(task, window, history)           the latest message that proposes an answer
task_success(task, window, history=, doc_metric=)   R_ext of a future (0 when none was proposed)
score_columns(task, window, history=, doc_metric=)  R_ext and the side columns of its table row
solves(task, text, bleu_threshold, doc_metric)      would the user accept it (the agenda user)

Document R_ext is `paper_bleu` (the paper's NLTK call) or `word_bleu` (`DOC_METRICS`).
"""

from __future__ import annotations

import ast
import functools
import math
import re
import sys
from collections import Counter

from collab_utils import math_check, sandbox, stories
from collab_utils.clarify import clarify_or_answer
from collab_utils.tasks import Task, last_boxed

__all__ = [
    "DOC_METRICS",
    "accuracy",
    "answer_score",
    "clarify_or_answer",
    "code_result",
    "draft_text",
    "extract_answer",
    "extract_code",
    "final_answer",
    "paper_bleu",
    "pass_rate",
    "proposes_answer",
    "qa_correct",
    "score_columns",
    "solves",
    "task_success",
    "tests_passed_fraction",
    "word_bleu",
]

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


# --- code --------------------------------------------------------------------------------------


def extract_code(text: str, entry_point: str) -> str | None:
    """The last fenced code block that defines `entry_point`.

    A reply without any fence that is itself valid Python defining the entry point counts as one
    block. None when nothing defines it.
    """
    definition = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    blocks = [body for _, body in _FENCE.findall(text)]
    if not blocks and "```" not in text:
        try:
            ast.parse(text)
            blocks = [text]
        except SyntaxError:
            return None
    for block in reversed(blocks):
        if definition.search(block):
            return block
    return None


def code_result(response_text: str, task: Task, timeout_s: float = 10.0):
    """The sandbox result of the response's code against the hidden tests; None without code.

    The import lines of the task's prompt (HumanEval's prompt, BigCodeBench's `code_prompt`) are
    prepended: chat models often drop `from typing import List` or `import numpy as np`. Results
    are cached, so `pass_rate` and `tests_passed_fraction` of one text run the sandbox once.
    """
    code = extract_code(response_text, task.entry_point)
    if code is None:
        return None
    prompt_imports = [
        line
        for line in task.metadata.get("prompt", "").splitlines()
        if line.startswith(("import ", "from "))
    ]
    program = "\n".join([*prompt_imports, code])
    return _run_tests(program, task.tests, task.entry_point, timeout_s)


@functools.lru_cache(maxsize=4096)
def _run_tests(program: str, tests: str, entry_point: str, timeout_s: float):
    return sandbox.run_tests(program, tests, entry_point, timeout_s)


def pass_rate(response_text: str, task: Task, timeout_s: float = 10.0) -> float:
    """1.0 when the response's code passes every hidden test (sandboxed), else 0.0, as the
    paper computes it; the fraction of test methods passed is `tests_passed_fraction`."""
    result = code_result(response_text, task, timeout_s)
    return float(result is not None and result.passed)


def tests_passed_fraction(response_text: str, task: Task, timeout_s: float = 10.0) -> float:
    """Fraction of the hidden test methods passed (a `check()` function counts as one test)."""
    result = code_result(response_text, task, timeout_s)
    return 0.0 if result is None else result.fraction_passed


# --- math --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(text: str) -> str | None:
    """The final answer: the last \\boxed{}, else 'answer is X', else the last number."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    stated = re.findall(r"answer is:?\s*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", text, re.IGNORECASE)
    if stated:
        return stated[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _as_integer(text: str) -> int | None:
    """An integer, with thousands separators (1,000 or 1{,}000) allowed; None otherwise."""
    cleaned = text.replace("{,}", ",").replace("$", "").strip()
    if re.fullmatch(r"-?(\d{1,3}(,\d{3})+|\d+)", cleaned):
        return int(cleaned.replace(",", ""))
    return None


def accuracy(response_text: str, task: Task) -> float:
    """1.0 when the response's final answer equals the task's reference, else 0.0.

    Integers compare exactly (1,000 = 1000); everything else through math-verify (sympy), with
    a timeout on any thread (`math_check`): \\boxed{1/2} and 0.5, (x+1)^2 and x^2+2x+1, (1, 2)
    and (1,2), [0, 3) and [0,3) are equal; (1, 2) and (2, 1) are not.
    """
    answer = extract_answer(response_text)
    if answer is None:
        return 0.0
    predicted, gold = _as_integer(answer), _as_integer(task.reference)
    if predicted is not None and gold is not None:
        return float(predicted == gold)
    return float(math_check.equivalent(task.reference, answer))


# --- documents ---------------------------------------------------------------------------------


def paper_bleu(hypothesis: str, reference: str) -> float:
    """The paper's document score: NLTK's `sentence_bleu([reference], hypothesis)` on strings.

    NLTK reads a string as a sequence of characters, so this is BLEU over character 1- to
    4-grams, spaces included, weights 1/4, no smoothing. As in NLTK, no matching character
    scores 0, and a zero 2- to 4-gram precision counts as the smallest positive float (so the
    score is about 1e-77, not 0). Computed here; the tests compare it with NLTK.
    """
    if not hypothesis:
        return 0.0
    logs = []
    for n in range(1, 5):
        hyp = Counter(hypothesis[i : i + n] for i in range(len(hypothesis) - n + 1))
        ref = Counter(reference[i : i + n] for i in range(len(reference) - n + 1))
        matched = sum(min(count, ref[gram]) for gram, count in hyp.items())
        if n == 1 and matched == 0:
            return 0.0
        precision = matched / max(1, sum(hyp.values())) if matched else sys.float_info.min
        logs.append(0.25 * math.log(precision))
    if len(hypothesis) > len(reference):
        brevity = 1.0
    else:
        brevity = math.exp(1 - len(reference) / len(hypothesis))
    return brevity * math.exp(math.fsum(logs))


def word_bleu(hypothesis: str, reference: str) -> float:
    """Smoothed sentence BLEU over words (sacreBLEU, 13a tokenizer), in [0, 1]."""
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0)


DOC_METRICS = {"paper_bleu": paper_bleu, "word_bleu": word_bleu}

_LEAD_IN = re.compile(r"^(sure|certainly|of course|absolutely|okay|ok|great|here)\b", re.I)
_CLOSING = re.compile(r"^(let me know|feel free|i hope|would you like|if you|do you)\b", re.I)
_META = re.compile(
    r"^(i('ll| will| can| would|'d| could)|let me|before i|to (write|draft))\b", re.I
)


def draft_text(text: str) -> str:
    """The document in an assistant message, without a lead-in ('Here is a draft:') or closing
    offers and questions ('Let me know if ...')."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    if paragraphs:
        first_line, _, rest = paragraphs[0].partition("\n")
        if first_line.rstrip().endswith(":") and len(first_line.split()) <= 25:
            paragraphs[0] = rest.strip()
    paragraphs = [p for p in paragraphs if p]
    while (
        len(paragraphs) > 1 and _LEAD_IN.match(paragraphs[0]) and len(paragraphs[0].split()) <= 25
    ):
        paragraphs.pop(0)
    while (
        len(paragraphs) > 1
        and len(paragraphs[-1].split()) <= 40
        and ("?" in paragraphs[-1] or _CLOSING.match(paragraphs[-1]))
    ):
        paragraphs.pop()
    return "\n\n".join(paragraphs)


def _is_draft(text: str, task: Task) -> bool:
    """A real draft: long enough for the reference, hardly any questions, not a plan."""
    body = draft_text(text)
    reference_words = len(task.reference.split())
    if len(body.split()) < max(min(40, reference_words // 2), reference_words // 4):
        return False
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", body) if s.strip()]
    questions = sum(s.rstrip().endswith("?") for s in sentences)
    return questions <= 0.2 * len(sentences) and not _META.match(body)


# --- qa ----------------------------------------------------------------------------------------


def qa_correct(response_text: str, task: Task) -> float:
    """1.0 when the response clarifies an ambiguous question or answers a clear one."""
    return float(clarify_or_answer(response_text) == task.reference)


# --- answer checking ----------------------------------------------------------------------------


def proposes_answer(task: Task, text: str) -> bool:
    """Does this assistant message offer a solution (code, a final answer, a document draft)?"""
    if task.kind == "code":
        return extract_code(text, task.entry_point) is not None
    if task.kind == "math":
        stated = re.search(r"answer is", text, re.IGNORECASE)
        return bool(last_boxed(text) or stated or ("?" not in text and extract_answer(text)))
    if task.kind == "doc":
        return _is_draft(text, task)
    return clarify_or_answer(text) == "answer"


def final_answer(task: Task, window: list[dict], history: list[dict] | None = None) -> str | None:
    """The latest assistant message of the window that proposes an answer; when the window has
    none, the latest in `history` (the conversation before the window), as the paper's final
    answer is the conversation's."""
    for messages in (window, history or []):
        for message in reversed(messages):
            if message["role"] == "assistant" and proposes_answer(task, message["content"]):
                return message["content"]
    return None


def answer_score(task: Task, text: str, doc_metric: str = "paper_bleu") -> float:
    """R_ext of one response: all tests pass (code), accuracy (math), `doc_metric` of its draft
    against the reference (doc), clarify/answer (qa)."""
    if task.kind == "code":
        return pass_rate(text, task)
    if task.kind == "math":
        return accuracy(text, task)
    if task.kind == "doc":
        if doc_metric not in DOC_METRICS:
            raise ValueError(f"unknown doc_metric {doc_metric!r}; use one of {list(DOC_METRICS)}")
        return DOC_METRICS[doc_metric](draft_text(text), task.reference)
    return qa_correct(text, task)


def task_success(
    task: Task,
    window: list[dict],
    *,
    history: list[dict] | None = None,
    doc_metric: str = "paper_bleu",
) -> float:
    """R_ext of a future: the score of its final answer (qa: of its first reply), else 0."""
    if task.kind == "qa" and task.metadata.get("intents"):  # stories: the final answer's
        return stories.final_correctness(task, window)
    if task.kind == "qa":
        return answer_score(task, window[0]["content"])
    answer = final_answer(task, window, history)
    return 0.0 if answer is None else answer_score(task, answer, doc_metric)


def score_columns(
    task: Task,
    window: list[dict],
    *,
    history: list[dict] | None = None,
    doc_metric: str = "paper_bleu",
) -> dict[str, float]:
    """`task_success` and the columns beside it: code `tests_passed_fraction`, doc both BLEUs
    (`paper_bleu`, `word_bleu`); the sandbox runs once per final answer."""
    columns = {"task_success": task_success(task, window, history=history, doc_metric=doc_metric)}
    answer = None if task.kind == "qa" else final_answer(task, window, history)
    if task.kind == "code":
        columns["tests_passed_fraction"] = (
            0.0 if answer is None else tests_passed_fraction(answer, task)
        )
    if task.kind == "doc":
        for name, metric in DOC_METRICS.items():
            columns[name] = 0.0 if answer is None else metric(draft_text(answer), task.reference)
    return columns


def solves(
    task: Task, text: str, bleu_threshold: float = 0.3, doc_metric: str = "paper_bleu"
) -> bool:
    """Would the user accept this answer: R_ext of 1 (a document: `doc_metric` at least the
    threshold). For qa the user checks the expected answer's words, where the task names one."""
    if task.kind == "qa":
        expected = str(task.metadata.get("answer", "")).lower()
        return not expected or expected in text.lower()
    needed = bleu_threshold if task.kind == "doc" else 1.0
    return answer_score(task, text, doc_metric) >= needed
