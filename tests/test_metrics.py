"""Metrics with hand-computed values, and the judges against a fake backend."""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from pathlib import Path

import pytest

from collab_utils import config, math_check, metrics, sandbox, tasks
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


BIGCODEBENCH = DATA / "bigcodebench_sample.jsonl"
# BigCodeBench/2 without the check for an unknown column (a KeyError, not the ValueError the last
# test method expects), and without its imports: `math` and `mean` come from the code_prompt.
THREE_OF_FOUR = (
    "```python\ndef task_func(rows, column):\n"
    "    values = [r[column] for r in rows if r[column] is not None and not math.isnan(r[column])]\n"
    "    return {'mean': mean(values), 'min': min(values), 'max': max(values)}\n```"
)


def _methods_passed_one_by_one(code: str, task: Task) -> list[bool]:
    """Independent count: each test method of the TestCases class run alone in the sandbox."""
    header, _, body = task.tests.partition("class TestCases(unittest.TestCase):\n")
    methods = ["    def " + m for m in body.split("    def ")[1:]]
    program = "\n".join(
        [line for line in task.metadata["prompt"].splitlines() if line.startswith("import ")]
        + [line for line in task.metadata["prompt"].splitlines() if line.startswith("from ")]
        + [metrics.extract_code(code, task.entry_point)]
    )
    results = sandbox.run_many(
        [
            (program, f"{header}class TestCases(unittest.TestCase):\n{m}", task.entry_point)
            for m in methods
        ]
    )
    return [r.passed for r in results]


def test_pass_rate_is_all_or_nothing_and_the_fraction_is_its_own_column():
    task = tasks.load(BIGCODEBENCH)[2]
    one_by_one = _methods_passed_one_by_one(THREE_OF_FOUR, task)
    assert one_by_one == [True, True, True, False]
    assert metrics.pass_rate(THREE_OF_FOUR, task) == 0.0
    assert metrics.tests_passed_fraction(THREE_OF_FOUR, task) == sum(one_by_one) / 4 == 0.75
    reference = f"```python\n{task.reference}```"
    assert (metrics.pass_rate(reference, task), metrics.tests_passed_fraction(reference, task)) == (
        1.0,
        1.0,
    )
    ignores_reverse = (
        "```python\ndef task_func(values, reverse=False):\n    return sorted(values)\n```"
    )
    first = tasks.load(BIGCODEBENCH)[0]
    assert metrics.pass_rate(ignores_reverse, first) == 0.0
    assert metrics.tests_passed_fraction(ignores_reverse, first) == pytest.approx(2 / 3)
    assert metrics.tests_passed_fraction("No code yet: which columns?", task) == 0.0


def test_one_sandbox_run_serves_pass_rate_and_the_fraction(monkeypatch):
    task = tasks.load(BIGCODEBENCH)[2]
    calls = []
    real = sandbox.run_tests
    monkeypatch.setattr(sandbox, "run_tests", lambda *a: calls.append(a) or real(*a))
    text = THREE_OF_FOUR.replace("min(values)", "min(values) ")  # a text not yet cached
    window = [{"role": "assistant", "content": text}]
    columns = metrics.score_columns(task, window)
    assert columns == {"task_success": 0.0, "tests_passed_fraction": 0.75}
    assert metrics.pass_rate(text, task) == 0.0
    assert len(calls) == 1


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


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("\\boxed{(1,2)}", "(1, 2)", 1.0),
        ("\\boxed{[0,3)}", "[0, 3)", 1.0),
        ("\\boxed{\\{1,2\\}}", "\\{1, 2\\}", 1.0),
        ("\\boxed{1000}", "1,000", 1.0),
        ("\\boxed{1,000}", "1000", 1.0),
        ("\\boxed{10{,}000}", "10000", 1.0),
        ("The answer is 1,250.", "1250", 1.0),
        ("\\boxed{(2, 1)}", "(1, 2)", 0.0),
        ("\\boxed{[0,3]}", "[0, 3)", 0.0),
        ("\\boxed{1,2}", "12", 0.0),
        ("\\boxed{2, 1}", "1, 2", 1.0),
    ],
)
def test_accuracy_keeps_commas_of_tuples_intervals_and_sets(response, reference, expected):
    assert metrics.accuracy(response, math_task(reference)) == expected


def test_accuracy_works_off_the_main_thread_with_a_timeout():
    from concurrent.futures import ThreadPoolExecutor

    pairs = [("\\boxed{1/2}", "0.5"), ("\\boxed{(1,2)}", "(1, 2)"), ("\\boxed{(2,1)}", "(1, 2)")]
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda p: metrics.accuracy(p[0], math_task(p[1])), pairs))
    assert found == [1.0, 1.0, 0.0]
    assert math_check._WORKER.process is not None  # the threads used the worker process


def test_a_stuck_worker_is_killed_and_counts_as_not_equivalent():
    hangs = "print('ready', flush=True)\nimport time\ntime.sleep(600)"
    worker = math_check._Worker([sys.executable, "-c", hangs])
    started = time.monotonic()
    assert worker.compare("1", "1", timeout_s=0) is False
    assert time.monotonic() - started < 30
    assert worker.process is None  # killed; the next call starts a fresh one


# --- doc, qa -------------------------------------------------------------------------------


def test_word_bleu_hand_computed():
    reference = "the cat sat on the mat"
    assert metrics.word_bleu(reference, reference) == pytest.approx(1.0)
    # 2 words, both unigram and the bigram match: precision 1, brevity penalty exp(1 - 6/2).
    assert metrics.word_bleu("the cat", reference) == pytest.approx(math.exp(-2))
    assert metrics.word_bleu("dog", reference) == pytest.approx(0.0, abs=1e-6)


def _bleu_pairs() -> list[tuple[str, str]]:
    doc = tasks.load("builtin:doc")
    rng = random.Random(3)
    letters = "ab c\n"
    noise = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 40))) for _ in range(8)]
    return [
        ("", "anything"),
        ("a", ""),
        ("abc", "abc"),  # shorter than a 4-gram: zero 4-gram precision
        ("abcd", "abcd"),
        ("the cat", "the cat sat on the mat"),
        ("the cat sat on the mat", "the cat"),
        ("tac eht", "the cat"),
        ("xyz", "the cat"),
        ("aaaa aaaa", "aa"),
        ("Grüße, café!  Ünïcode\ttabs", "grüße cafe unicode tabs"),
        ("line one\nline two\n\nline three", "line one line two line three"),
        (doc[0].reference, doc[0].reference),
        (doc[0].reference, doc[1].reference),
        (" ".join(doc[2].reference.split()[:-5]), doc[2].reference),
        (doc[3].goal, doc[3].reference),
        (doc[4].reference[:200], doc[4].reference),
        *zip(noise[:4], noise[4:]),
    ]


def test_paper_bleu_equals_nltk_sentence_bleu_on_raw_strings():
    from nltk.translate.bleu_score import sentence_bleu

    pairs = _bleu_pairs()
    assert len(pairs) >= 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns about zero n-gram overlaps
        for hypothesis, reference in pairs:
            expected = float(sentence_bleu([reference], hypothesis))
            assert metrics.paper_bleu(hypothesis, reference) == pytest.approx(expected, rel=1e-12)
    assert metrics.paper_bleu("abc", "abc") == pytest.approx(sys.float_info.min**0.25 * 1.0)
    assert 0.3 < metrics.paper_bleu(pairs[12][0], pairs[12][1])  # unrelated documents


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
    for name, metric in metrics.DOC_METRICS.items():
        score = metrics.answer_score(doc, near, doc_metric=name)
        assert 0 < score < 1 and score == metric(near, doc.reference)
        assert metrics.solves(doc, near, bleu_threshold=score, doc_metric=name)
        assert not metrics.solves(doc, near, bleu_threshold=score + 1e-6, doc_metric=name)
    with pytest.raises(ValueError, match="unknown doc_metric 'bleu'"):
        metrics.answer_score(doc, near, doc_metric="bleu")


# --- documents: the latest real draft -----------------------------------------------------------

DOC = tasks.load("builtin:doc")[0]  # the four-day week email
PARAGRAPHS = DOC.reference.split("\n\n")
DRAFT = f"Here's a first draft:\n\n{DOC.reference}\n\nLet me know if you'd like any changes!"
EARLY_DRAFT = "Sure! Here is a start:\n\n" + "\n\n".join(PARAGRAPHS[:4])
ASKS = (
    "Happy to help with the email. Before I write it, a few questions. When does the trial "
    "start, and how long will it run? Which day will be off? Who should people send feedback "
    "to? Should customer support keep some coverage on the day off? What tone do you prefer?"
)
PLANS = (
    "I'll write a friendly email that announces the four-day week trial, explains when it "
    "starts and how long it runs, says that Fridays are off, describes how customer support "
    "keeps clients covered, and asks everyone to send their feedback to you. It will be about "
    "three hundred words long, in five short paragraphs, signed by you."
)


def _chat(*texts: str) -> list[dict]:
    return [{"role": ("assistant", "user")[i % 2], "content": t} for i, t in enumerate(texts)]


def test_a_draft_is_a_document_not_any_long_message():
    assert len(ASKS.split()) >= 40 and len(PLANS.split()) >= 40
    assert not metrics.proposes_answer(DOC, ASKS)
    assert not metrics.proposes_answer(DOC, PLANS)
    assert metrics.proposes_answer(DOC, DRAFT) and metrics.proposes_answer(DOC, EARLY_DRAFT)
    assert metrics.draft_text(DRAFT) == DOC.reference.strip()
    assert metrics.draft_text(EARLY_DRAFT) == "\n\n".join(PARAGRAPHS[:4])
    assert metrics.answer_score(DOC, DRAFT) == pytest.approx(1.0)


def test_final_answer_is_the_latest_draft_of_window_then_history():
    history = [{"role": "user", "content": DOC.opening}, *_chat(EARLY_DRAFT, "Add the dates.")]
    window = _chat(ASKS, "June 3, eight weeks.")
    assert metrics.final_answer(DOC, window) is None
    assert metrics.task_success(DOC, window) == 0.0
    assert metrics.final_answer(DOC, window, history) == EARLY_DRAFT
    early = "\n\n".join(PARAGRAPHS[:4])
    for name, metric in metrics.DOC_METRICS.items():
        expected = metric(early, DOC.reference)
        found = metrics.task_success(DOC, window, history=history, doc_metric=name)
        assert found == pytest.approx(expected) and 0 < expected < 1
    assert metrics.final_answer(DOC, _chat(DRAFT, "Thanks"), history) == DRAFT
    columns = metrics.score_columns(DOC, window, history=history, doc_metric="word_bleu")
    assert columns == {
        "task_success": pytest.approx(metrics.word_bleu(early, DOC.reference)),
        "paper_bleu": pytest.approx(metrics.paper_bleu(early, DOC.reference)),
        "word_bleu": pytest.approx(metrics.word_bleu(early, DOC.reference)),
    }


def test_code_answer_in_the_history_counts_when_the_window_has_none():
    history = _chat(f"```python\n{CASE.reference}```", "Can you explain it?")
    window = _chat("It reads the file and splits it into tokens. Anything else?", "No.")
    assert metrics.task_success(CASE, window) == 0.0
    assert metrics.task_success(CASE, window, history=history) == 1.0


def test_doc_metric_is_a_params_key_with_the_papers_default():
    params = config.load("params/smoke.yaml")
    assert params.tasks.doc_metric == "paper_bleu"
    assert set(config.DOC_METRICS) == set(metrics.DOC_METRICS)
    assert config.load("params/smoke.yaml", ["tasks.doc_metric=word_bleu"]).tasks.doc_metric == (
        "word_bleu"
    )
    with pytest.raises(config.ParamsError, match="tasks.doc_metric"):
        config.load("params/smoke.yaml", ["tasks.doc_metric=bleu"])
