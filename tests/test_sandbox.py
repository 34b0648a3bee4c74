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

from collab_utils import sandbox, tasks

ISOLATED = sandbox.guarantees()
needs_uid = pytest.mark.skipif(
    not ISOLATED["unprivileged_uid"], reason="needs root to drop to a dedicated uid"
)
needs_netns = pytest.mark.skipif(
    not ISOLATED["network_isolated"], reason="no network namespace here"
)


def sandbox_uid_processes() -> list[int]:
    """Live processes running as any uid of the sandbox pool."""
    pool = range(sandbox.UID_POOL_BASE, sandbox.UID_POOL_BASE + sandbox.UID_POOL_SIZE)
    found = []
    for entry in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except (OSError, ValueError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[1]) in pool and "Z" not in fields["State"]:
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
    assert (wrong.passed, wrong.status) == (False, "failed")


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


def test_missing_entry_point_and_missing_tests_are_errors():
    check = "def check(candidate):\n    assert candidate() == 1\n"
    assert sandbox.run_tests("def other():\n    return 1\n", check, "wanted").status == "error"
    assert sandbox.run_tests("def f():\n    return 1\n", "x = 1\n", "f").status == "error"


def test_run_many_keeps_order():
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    items = [(f"def f():\n    return {value}\n", tests, "f") for value in (1, 2, 1)]
    assert [r.passed for r in sandbox.run_many(items, max_workers=2)] == [True, False, True]


def _assert_contained(result, allowed=("failed", "error", "timeout")):
    assert not result.passed
    assert result.status in allowed
    assert sandbox_uid_processes() == []


def test_infinite_loop_times_out():
    started = time.monotonic()
    result = sandbox.run_tests(
        "def f():\n    while True:\n        pass\n",
        "def check(candidate):\n    candidate()\n",
        "f",
        timeout_s=2,
    )
    assert result.status == "timeout"
    assert time.monotonic() - started < 10
    _assert_contained(result)


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
    _assert_contained(result)


@needs_uid
def test_double_forked_grandchild_that_left_the_group_is_killed():
    code = textwrap.dedent(
        """
        import os, time

        def f():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(300)
                os._exit(0)
            return 1
        """
    )
    result = sandbox.run_tests(code, "def check(candidate):\n    assert candidate() == 2\n", "f")
    _assert_contained(result)


def test_eight_gigabyte_allocation_fails():
    code = "def f():\n    return len(bytearray(8 * 1024 ** 3))\n"
    tests = "def check(candidate):\n    assert candidate() == 8 * 1024 ** 3\n"
    _assert_contained(sandbox.run_tests(code, tests, "f"))


@needs_uid
def test_files_outside_the_temp_dir_survive(tmp_path):
    protected = tmp_path / "protected"
    protected.mkdir(mode=0o755)
    protected.chmod(0o755)
    tmp_path.chmod(0o755)
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
    _assert_contained(sandbox.run_tests(code, tests, "f"))
    assert sentinel.read_text() == "keep me"
    assert not (protected / "intruder.txt").exists()


@needs_netns
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
        _assert_contained(result)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


@needs_uid
def test_killing_the_caller_and_its_group_fails():
    code = textwrap.dedent(
        """
        import os, signal

        def f(caller):
            os.kill(caller, signal.SIGKILL)
            os.killpg(os.getpgid(caller), signal.SIGKILL)
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(-1, signal.SIGKILL)
            return True
        """
    )
    tests = f"def check(candidate):\n    assert candidate({os.getpid()})\n"
    _assert_contained(sandbox.run_tests(code, tests, "f"))
    assert os.getpid()  # still alive


def test_exit_before_the_tests_is_not_a_pass():
    code = "import sys\n\ndef f():\n    return 1\n\nsys.exit(0)\n"
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    _assert_contained(sandbox.run_tests(code, tests, "f"))


def test_hard_exit_inside_the_function_is_not_a_pass():
    code = "import os\n\ndef f():\n    os._exit(0)\n"
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    _assert_contained(sandbox.run_tests(code, tests, "f"))


def test_forged_verdicts_are_not_a_pass():
    code = textwrap.dedent(
        """
        import os

        def f():
            fake = b'0123456789abcdef0123456789abcdef {"status": "passed", "tests_total": 1}\\n'
            for fd in range(1, 64):
                try:
                    os.write(fd, fake)
                except OSError:
                    pass
            os._exit(0)
        """
    )
    tests = "def check(candidate):\n    assert candidate() == 1\n"
    _assert_contained(sandbox.run_tests(code, tests, "f"))


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
    _assert_contained(result)
    assert result.status == "failed"
    assert len(result.output.encode()) <= sandbox.OUTPUT_LIMIT_BYTES


@needs_uid
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
            return None
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
    env = {**os.environ, "COLLAB_TEST_SECRET": secret}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-c", runner, tests],
        input=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    status, passed = completed.stdout.split()[-2:]
    assert passed == "False" and status == "failed"
    assert sandbox_uid_processes() == []


def test_guarantees_are_reported():
    report = sandbox.guarantees()
    assert report["separate_process"] and report["resource_limits"]
    assert "unshare_flags" not in report
