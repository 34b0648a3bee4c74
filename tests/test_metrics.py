"""Metrics with hand-computed values, and the judges against a fake backend."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from collab_utils import metrics, tasks
from collab_utils.tasks import Task

DATA = Path(__file__).parent / "data"


def math_task(reference: str) -> Task:
    return Task(id="m", kind="math", goal="g", opening="o", reference=reference)


# --- code --------------------------------------------------------------------------------------


def test_extract_code_takes_the_last_block_defining_the_entry_point():
    text = (
        "First try:\n```python\ndef add(a, b):\n    return a - b\n```\n"
        "Fixed:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Usage:\n```python\nprint(add(1, 2))\n```"
    )
    assert metrics.extract_code(text, "add") == "def add(a, b):\n    return a + b\n"


def test_extract_code_without_the_entry_point_is_none():
    assert metrics.extract_code("```python\ndef other():\n    pass\n```", "add") is None
    assert metrics.extract_code("I would use a loop for that.", "add") is None
    assert metrics.extract_code("def add(a, b):\n    return a + b\n", "add") is not None


def test_pass_rate_on_humaneval_and_without_code():
    task = tasks.load("humaneval")[0]
    body = task.reference.split('"""\n', 2)[-1]
    answer = (
        "Here you go:\n```python\ndef has_close_elements(numbers: List[float], threshold: float)"
        f" -> bool:\n{body}```"
    )
    assert metrics.pass_rate(answer, task) == 1.0
    assert metrics.pass_rate("Could you tell me more about the threshold?", task) == 0.0


def test_pass_rate_is_the_fraction_of_test_methods_for_test_cases():
    task = tasks.load(DATA / "bigcodebench_sample.jsonl")[0]
    ignores_reverse = (
        "```python\ndef task_func(values, reverse=False):\n    return sorted(values)\n```"
    )
    assert metrics.pass_rate(ignores_reverse, task) == pytest.approx(2 / 3)


def test_pass_rate_on_the_case_study():
    (task,) = tasks.load("builtin:case_study")
    assert metrics.pass_rate(f"```python\n{task.reference}```", task) == 1.0
    assert metrics.pass_rate(f"```python\n{task.metadata['naive_solution']}```", task) == 0.0


# --- math --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So we get \\boxed{2} first, then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("The answer is 42.", "42"),
        ("Thus the answer is: $x^2$", "x^2"),
        ("First 3 apples, then 1,250 pears", "1250"),
        ("No numbers here", None),
    ],
)
def test_extract_answer(text, expected):
    assert metrics.extract_answer(text) == expected


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("\\boxed{1/2}", "0.5", 1.0),
        ("The answer is 0.5", "\\frac{1}{2}", 1.0),
        ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
        ("\\boxed{\\frac{483}{20}}", "24.15", 1.0),
        ("So each pays \\boxed{24.15} dollars", "24.15", 1.0),
        ("\\boxed{400}", "400", 1.0),
        ("\\boxed{401}", "400", 0.0),
        ("\\boxed{1/3}", "0.5", 0.0),
        ("I need to know the room size first.", "9", 0.0),
    ],
)
def test_accuracy(response, reference, expected):
    assert metrics.accuracy(response, math_task(reference)) == expected


def test_accuracy_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(metrics.accuracy, "\\boxed{1/2}", math_task("0.5")).result() == 1.0


# --- doc, qa -------------------------------------------------------------------------------


def test_bleu_hand_computed():
    reference = "the cat sat on the mat"
    assert metrics.bleu(reference, reference) == pytest.approx(1.0)
    # 2 words, both unigram and the bigram match: precision 1, brevity penalty exp(1 - 6/2).
    assert metrics.bleu("the cat", reference) == pytest.approx(math.exp(-2))
    assert metrics.bleu("dog", reference) == pytest.approx(0.0, abs=1e-6)
    assert metrics.bleu("abc", "abc", char_level=True) == pytest.approx(1.0)
    assert metrics.bleu("thecat", "the cat", char_level=True) > metrics.bleu("thecat", "the cat")


@pytest.mark.parametrize(
    ("response", "behaviour"),
    [
        ("Do you mean Anna's dress or Maria's dress?", "clarify"),
        ("Which dog are you asking about?", "clarify"),
        ("Could you clarify whose dress you mean? There are two.", "clarify"),
        ("Anna's dress was red.", "answer"),
        ("It was red. Anything else?", "answer"),
    ],
)
def test_clarify_or_answer(response, behaviour):
    assert metrics.clarify_or_answer(response) == behaviour


def test_qa_correct():
    loaded = {t.id: t for t in tasks.load("builtin:qa")}
    ambiguous, clear = loaded["qa/dresses/ambiguous"], loaded["qa/dresses/clear"]
    assert metrics.qa_correct("Whose dress do you mean, Anna's or Maria's?", ambiguous) == 1.0
    assert metrics.qa_correct("The dress was red.", ambiguous) == 0.0
    assert metrics.qa_correct("Anna's dress was red.", clear) == 1.0
    assert metrics.qa_correct("Do you mean Anna's dress?", clear) == 0.0


# --- answer checking ---------------------------------------------------------------------------


CASE = tasks.load("builtin:case_study")[0]
NAIVE = f"```python\n{CASE.metadata['naive_solution']}```"


def test_task_success_uses_the_final_answer_of_the_window():
    window = [
        {"role": "assistant", "content": NAIVE},
        {"role": "user", "content": "It crashes."},
        {"role": "assistant", "content": f"```python\n{CASE.reference}```"},
        {"role": "user", "content": "Thanks! [[TERMINATE]]"},
    ]
    assert metrics.task_success(CASE, window) == 1.0
    assert metrics.task_success(CASE, window[:2]) == 0.0
    assert metrics.final_answer(CASE, window[:2]) == NAIVE


def test_solves_means_r_ext_of_one_or_a_document_past_the_threshold():
    assert metrics.solves(CASE, f"```python\n{CASE.reference}```")
    assert not metrics.solves(CASE, NAIVE)
    doc = tasks.load("builtin:doc")[0]
    near = " ".join(doc.reference.split()[:-3])
    score = metrics.answer_score(doc, near)
    assert 0 < score < 1
    assert metrics.solves(doc, near, bleu_threshold=score)
    assert not metrics.solves(doc, near, bleu_threshold=score + 1e-6)
