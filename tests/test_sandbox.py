"""The sandbox: real benchmark programs pass, stubs and hostile programs never do."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collab_utils import sandbox, sandbox_wire, tasks

ISOLATED = sandbox.guarantees()["isolation"] == "bubblewrap"
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="bubblewrap cannot run here")
PROJECT = Path(__file__).parents[1]


def processes_with(token: str) -> list[int]:
    """Live processes whose command line contains `token`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if token.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def test_humaneval_canonical_solutions_pass_and_stubs_fail():
    problems = tasks.load("humaneval")
    assert len(problems) == 164
    started = time.monotonic()
    canonical = sandbox.run_many([(t.reference, t.tests, t.entry_point) for t in problems])
    wall_s = time.monotonic() - started
    print(f"\nHumanEval: 164 canonical solutions checked in {wall_s:.1f}s wall")
    stubs = sandbox.run_many(
        [(t.metadata["prompt"] + "    return None\n", t.tests, t.entry_point) for t in problems]
    )
    failing = [
        (t.id, r.status, r.detail) for t, r in zip(problems, canonical, strict=True) if not r.passed
    ]
    assert failing == []
    passing_stubs = [t.id for t, r in zip(problems, stubs, strict=True) if r.passed]
    assert passing_stubs == []


def test_check_function_pass_and_fail():
    tests = "def check(candidate):\n    assert candidate(2) == 4\n"
    assert sandbox.run_tests("def double(x):\n    return 2 * x\n", tests, "double").passed
    wrong = sandbox.run_tests("def double(x):\n    return x\n", tests, "double")
    assert (wrong.passed, wrong.status, wrong.fraction_passed) == (False, "failed", 0.0)


def test_unittest_test_cases_report_the_fraction_passed():
    tests = textwrap.dedent(
        """
        import unittest

        class TestCases(unittest.TestCase):
            def test_one(self):
                self.assertEqual(inc(1), 2)

            def test_two(self):
                self.assertEqual(inc(2), 3)

            def test_three(self):
                self.assertEqual(inc(3), 5)
        """
    )
    result = sandbox.run_tests("def inc(x):\n    return x + 1\n", tests, "inc")
    assert (result.status, result.tests_passed, result.tests_total) == ("failed", 2, 3)
    assert result.fraction_passed == pytest.approx(2 / 3)


def test_values_exceptions_helpers_and_printed_text_cross_the_boundary():
    code = textwrap.dedent(
        """
        import collections, datetime

        def helper(n):
            return n * 2

        def f(kind):
            print("computing", kind)
            if kind == "bad":
                raise ValueError("no such kind")
            return {
                "counter": collections.Counter("aab"),
                "nested": [(1, 2.5), {3, 4}, frozenset("x"), b"\\x00", None, True, 1 + 2j],
                "big": 2**200,
                "day": datetime.date(2024, 5, 6),
                "span": datetime.timedelta(days=2, seconds=3),
            }[kind]
        """
    )
    tests = textwrap.dedent(
        """
        import contextlib, datetime, io, unittest

        class TestCases(unittest.TestCase):
            def test_values(self):
                self.assertEqual(f("counter"), {"a": 2, "b": 1})
                self.assertIs(type(f("counter")), dict)
                self.assertEqual(f("nested"), [(1, 2.5), {3, 4}, frozenset("x"), b"\\x00", None, True, 1 + 2j])
                self.assertEqual(f("big"), 2**200)
                self.assertEqual(f("day"), datetime.date(2024, 5, 6))
                self.assertEqual(f("span"), datetime.timedelta(days=2, seconds=3))

            def test_errors_and_helpers(self):
                with self.assertRaisesRegex(ValueError, "no such kind"):
                    f("bad")
                self.assertEqual(helper(21), 42)

            def test_printed_text(self):
                seen = io.StringIO()
                with contextlib.redirect_stdout(seen):
                    f("big")
                self.assertEqual(seen.getvalue(), "computing big\\n")
        """
    )
    result = sandbox.run_tests(code, tests, "f")
    assert (result.status, result.tests_passed, result.tests_total) == ("passed", 3, 3), result


def test_wire_round_trips_plain_values_and_refuses_the_rest():
    value = [1, -(2**70), 0.5, float("inf"), "é", (1, [2]), {1: {"a"}}, b"x", bytearray(b"y")]
    assert sandbox_wire.decode(sandbox_wire.encode(value)) == value
    with pytest.raises(sandbox_wire.Unencodable):
        sandbox_wire.encode(object())
    for forged in (["zz", 1], {"ok": 1}, ["d", 1], ["c", "1", 2], ["i", 5]):
        with pytest.raises(ValueError):
            sandbox_wire.decode(forged)


def test_missing_entry_point_and_missing_tests_are_errors():
    check = "def check(candidate):\n    assert candidate() == 1\n"
    assert sandbox.run_tests("def other():\n    return 1\n", check, "wanted").status == "error"
    assert sandbox.run_tests("def f():\n    return 1\n", "x = 1\n", "f").status == "error"
    assert sandbox.run_tests("def f(:\n", check, "f").status == "error"


def test_run_many_keeps_order():
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    items = [(f"def f():\n    return {value}\n", tests, "f") for value in (1, 2, 1)]
    assert [r.passed for r in sandbox.run_many(items, max_workers=2)] == [True, False, True]


def test_infinite_loop_times_out():
    started = time.monotonic()
    result = sandbox.run_tests(
        "def f():\n    while True:\n        pass\n",
        "def check(candidate):\n    candidate()\n",
        "f",
        timeout_s=2,
    )
    assert (result.status, result.passed) == ("timeout", False)
    assert time.monotonic() - started < 10


def test_fork_storm_is_contained():
    code = textwrap.dedent(
        """
        import os

        def f():
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """
    )
    result = sandbox.run_tests(code, "def check(candidate):\n    candidate()\n", "f", timeout_s=3)
    assert not result.passed


@needs_isolation
def test_a_correct_program_leaving_a_background_process_keeps_its_pass():
    token = str(secrets.randbelow(10**9))
    code = textwrap.dedent(
        f"""
        import os

        print("printed at import")

        def f():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", "300.{token}"])
                os._exit(0)
            print("still printed")
            return 1
        """
    )
    result = sandbox.run_tests(code, "def check(candidate):\n    assert candidate() == 1\n", "f")
    assert result.status == "passed"
    assert sorted(result.output.splitlines()) == ["printed at import", "still printed"]
    assert processes_with(f"300.{token}") == []


def test_eight_gigabyte_allocation_fails():
    code = "def f():\n    return len(bytearray(8 * 1024 ** 3))\n"
    tests = "def check(candidate):\n    assert candidate() == 8 * 1024 ** 3\n"
    assert not sandbox.run_tests(code, tests, "f").passed


@needs_isolation
def test_files_outside_the_work_folder_survive(tmp_path):
    protected = tmp_path / "protected"
    protected.mkdir()
    sentinel = protected / "sentinel.txt"
    sentinel.write_text("keep me")
    code = textwrap.dedent(
        """
        import os

        def f(folder):
            os.remove(os.path.join(folder, "sentinel.txt"))
            with open(os.path.join(folder, "intruder.txt"), "w") as handle:
                handle.write("was here")
            return True
        """
    )
    tests = f"def check(candidate):\n    assert candidate({str(protected)!r})\n"
    assert not sandbox.run_tests(code, tests, "f").passed
    assert sentinel.read_text() == "keep me"
    assert not (protected / "intruder.txt").exists()


@needs_isolation
def test_no_connection_reaches_the_host():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(1.0)
    port = listener.getsockname()[1]
    code = textwrap.dedent(
        f"""
        import socket

        def f():
            with socket.create_connection(("127.0.0.1", {port}), timeout=3) as connection:
                connection.sendall(b"hello from the sandbox")
            return True
        """
    )
    try:
        result = sandbox.run_tests(code, "def check(candidate):\n    assert candidate()\n", "f")
        assert not result.passed
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


@needs_isolation
def test_killing_the_caller_and_every_process_fails():
    code = textwrap.dedent(
        """
        import os, signal

        def f(caller):
            for target in (caller, os.getppid(), -1):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
            return True
        """
    )
    tests = f"def check(candidate):\n    assert candidate({os.getpid()})\n"
    assert not sandbox.run_tests(code, tests, "f").passed


def test_exit_before_or_during_the_tests_is_not_a_pass():
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    for code in (
        "import sys\n\ndef f():\n    return 1\n\nsys.exit(0)\n",
        "import os\n\ndef f():\n    os._exit(0)\n",
        "import sys\n\ndef f():\n    sys.exit(0)\n",
    ):
        result = sandbox.run_tests(code, tests, "f")
        assert (result.passed, result.status in ("failed", "error")) == (False, True), code


def test_verdicts_written_to_every_descriptor_are_not_a_pass():
    code = textwrap.dedent(
        """
        import os

        def f():
            fake = b'{"status": "passed", "tests_total": 1, "tests_passed": 1}\\n'
            for fd in range(0, 64):
                try:
                    os.write(fd, fake + b'{"ok": 1}\\n')
                except OSError:
                    pass
            return 0
        """
    )
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    result = sandbox.run_tests(code, tests, "f")
    assert (result.passed, result.status) == (False, "tampered")


def test_printing_100_megabytes_is_truncated():
    code = textwrap.dedent(
        """
        import sys

        def f():
            line = '{"status": "passed"} passed OK\\n' * 1000
            for _ in range(100_000_000 // len(line)):
                sys.stdout.write(line)
            sys.stdout.flush()
            return 0
        """
    )
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    result = sandbox.run_tests(code, tests, "f", timeout_s=30)
    assert (result.passed, result.status) == (False, "failed")
    assert len(result.output.encode()) <= sandbox.OUTPUT_LIMIT_BYTES


@needs_isolation
def test_the_callers_environment_is_invisible():
    secret = secrets.token_hex(16)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    code = textwrap.dedent(
        """
        import glob, os

        def f():
            found = os.environ.get("COLLAB_TEST_SECRET")
            if found:
                return found
            for path in glob.glob("/proc/*/environ"):
                try:
                    data = open(path, "rb").read()
                except OSError:
                    continue
                for item in data.split(b"\\0"):
                    if item.startswith(b"COLLAB_TEST_SECRET="):
                        return item.split(b"=", 1)[1].decode()
            return ""
        """
    )
    tests = (
        "import hashlib\n\ndef check(candidate):\n"
        f"    assert hashlib.sha256(candidate().encode()).hexdigest() == {digest!r}\n"
    )
    # A fresh caller process holds the secret in its initial environment (/proc/PID/environ).
    runner = (
        "import sys\nfrom collab_utils import sandbox\n"
        "r = sandbox.run_tests(sys.stdin.read(), sys.argv[1], 'f')\nprint(r.status, r.passed)\n"
    )
    env = {**os.environ, "COLLAB_TEST_SECRET": secret, "PYTHONPATH": str(PROJECT)}
    completed = subprocess.run(
        [sys.executable, "-c", runner, tests],
        input=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert completed.stdout.split()[-2:] == ["failed", "False"]


def test_without_isolation_model_code_runs_only_when_allowed():
    """With bubblewrap out of reach, run_tests refuses unless allow_unisolated=True."""
    runner = textwrap.dedent(
        """
        import warnings
        from collab_utils import sandbox
        warnings.simplefilter("ignore")
        args = ("def f():\\n    return 1\\n", "def check(c):\\n    assert c() == 1\\n", "f")
        try:
            sandbox.run_tests(*args)
        except sandbox.SandboxUnavailable as exc:
            print("refused:", exc)
        result = sandbox.run_tests(*args, allow_unisolated=True)
        print(result.status, result.isolation, sandbox.guarantees()["private_filesystem"])
        """
    )
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(PROJECT)}
    completed = subprocess.run(
        [sys.executable, "-c", runner], env=env, capture_output=True, text=True, timeout=60
    )
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("refused: cannot isolate model code here (bubblewrap")
    assert lines[1] == "passed none False"


def test_guarantees_and_overhead_are_reported():
    report = sandbox.guarantees()
    assert report["separate_process"] and report["verdict_outside_solution"]
    assert report["isolation"] in ("bubblewrap", "none")
    overhead = sandbox.measure_overhead(n=3, allow_unisolated=True)
    assert overhead["runs"] == 3 and overhead["seconds_per_run"] > 0
