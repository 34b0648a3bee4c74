"""Task metrics and answer checking: R_ext of a response, and which message is the answer.

answer_score(task, text)     code: pass rate; math: accuracy; doc: BLEU; qa: clarify/answer
final_answer(task, window)   the last assistant message that proposes an answer
task_success(task, window)   R_ext of a future (0 when nothing was proposed)
solves(task, text)           would the user accept it (the agenda user's check)
"""

from __future__ import annotations

import ast
import re
import threading

from collab_utils import sandbox
from collab_utils.tasks import Task, last_boxed

__all__ = [
    "accuracy",
    "answer_score",
    "bleu",
    "clarify_or_answer",
    "extract_answer",
    "extract_code",
    "final_answer",
    "pass_rate",
    "proposes_answer",
    "qa_correct",
    "solves",
    "task_success",
]

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


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


def pass_rate(response_text: str, task: Task, timeout_s: float = 10.0) -> float:
    """Fraction of the task's hidden tests passed by the code in the response (sandboxed).

    HumanEval-style `check()` gives 1.0 or 0.0; unittest `TestCase`s give the fraction of test
    methods passed. The import lines of a HumanEval prompt are prepended (chat models often drop
    `from typing import List`).
    """
    code = extract_code(response_text, task.entry_point)
    if code is None:
        return 0.0
    prompt_imports = [
        line
        for line in task.metadata.get("prompt", "").splitlines()
        if line.startswith(("import ", "from "))
    ]
    program = "\n".join([*prompt_imports, code])
    return sandbox.run_tests(program, task.tests, task.entry_point, timeout_s).fraction_passed


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


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
    cleaned = text.replace(",", "").replace("$", "").strip()
    return int(cleaned) if re.fullmatch(r"-?\d+", cleaned) else None


def accuracy(response_text: str, task: Task) -> float:
    """1.0 when the response's final answer equals the task's reference, else 0.0.

    Integers compare exactly; everything else through math-verify (sympy), so \\boxed{1/2} and
    0.5, or (x+1)^2 and x^2+2x+1, are equal.
    """
    answer = extract_answer(response_text)
    if answer is None:
        return 0.0
    predicted, gold = _as_integer(answer), _as_integer(task.reference)
    if predicted is not None and gold is not None:
        return float(predicted == gold)
    return float(_equivalent(task.reference, answer))


def _equivalent(gold: str, predicted: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    parsed_gold = parse(f"${gold}$", parsing_timeout=timeout)
    parsed_predicted = parse(f"${predicted.replace(',', '')}$", parsing_timeout=timeout)
    if not parsed_gold or not parsed_predicted:
        return gold.strip() == predicted.strip()
    return verify(parsed_gold, parsed_predicted, timeout_seconds=timeout)


def bleu(hypothesis: str, reference: str, char_level: bool = False) -> float:
    """Smoothed sentence BLEU in [0, 1] (sacrebleu).

    Word level (13a tokenizer) by default. `char_level=True` scores characters instead, the
    variant the paper's released code uses for document tasks.
    """
    import sacrebleu

    tokenize = "char" if char_level else "13a"
    score = sacrebleu.sentence_bleu(hypothesis, [reference], tokenize=tokenize).score
    return min(1.0, score / 100.0)


_CLARIFY_CUES = (
    "do you mean",
    "did you mean",
    "which one",
    "which of",
    "could you clarify",
    "can you clarify",
    "could you specify",
    "can you specify",
    "are you asking",
    "are you referring",
    "do you want",
    "would you like",
    "could you tell me",
    "can you tell me",
    "which ",
    "whose ",
    "who do you",
)


def clarify_or_answer(response_text: str) -> str:
    """'clarify' when the response asks the user a clarifying question, else 'answer'."""
    sentences = re.split(r"(?<=[.!?])\s+", response_text.strip())
    questions = [s.lower() for s in sentences if s.rstrip().endswith("?")]
    if not questions:
        return "answer"
    if len(questions) == len(sentences) or any(
        cue in question for question in questions for cue in _CLARIFY_CUES
    ):
        return "clarify"
    return "answer"


def qa_correct(response_text: str, task: Task) -> float:
    """1.0 when the response clarifies an ambiguous question or answers a clear one."""
    return float(clarify_or_answer(response_text) == task.reference)


# --- answer checking ----------------------------------------------------------------------------


def proposes_answer(task: Task, text: str) -> bool:
    """Does this assistant message offer a solution (code, a final answer, a document)?"""
    if task.kind == "code":
        return extract_code(text, task.entry_point) is not None
    if task.kind == "math":
        stated = re.search(r"answer is", text, re.IGNORECASE)
        return bool(last_boxed(text) or stated or ("?" not in text and extract_answer(text)))
    if task.kind == "doc":
        return len(text.split()) >= min(40, len(task.reference.split()) // 2)
    return clarify_or_answer(text) == "answer"


def final_answer(task: Task, window: list[dict]) -> str | None:
    """The last assistant message of the window that proposes an answer."""
    for message in reversed(window):
        if message["role"] == "assistant" and proposes_answer(task, message["content"]):
            return message["content"]
    return None


def answer_score(task: Task, text: str) -> float:
    """R_ext of one response: pass rate (code), accuracy (math), BLEU (doc), clarify/answer (qa)."""
    if task.kind == "code":
        return pass_rate(text, task)
    if task.kind == "math":
        return accuracy(text, task)
    if task.kind == "doc":
        return bleu(text, task.reference)
    return qa_correct(text, task)


def task_success(task: Task, window: list[dict]) -> float:
    """R_ext of a future: the score of its final answer (qa: of its first reply), else 0."""
    if task.kind == "qa" and task.metadata.get("intents"):  # stories: the final answer's
        from collab_utils import stories  # correctness for the user's intent (issue 13)

        return stories.final_correctness(task, window)
    if task.kind == "qa":
        return answer_score(task, window[0]["content"])
    answer = final_answer(task, window)
    return 0.0 if answer is None else answer_score(task, answer)


def solves(task: Task, text: str, bleu_threshold: float = 0.3) -> bool:
    """Would the user accept this answer: R_ext of 1 (a document: BLEU at least the threshold).

    For qa the user checks the expected answer's words, where the task names one."""
    if task.kind == "qa":
        expected = str(task.metadata.get("answer", "")).lower()
        return not expected or expected in text.lower()
    needed = bleu_threshold if task.kind == "doc" else 1.0
    return answer_score(task, text) >= needed
