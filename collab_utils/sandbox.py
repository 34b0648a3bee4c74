"""Run untrusted generated code against a task's tests; only the tests decide the verdict.

Design note: which channels exist, and why none can be forged.

- Two processes run inside the sandbox (`sandbox_harness`): a test runner and, started by it as
  a fresh interpreter, a solution server that executes the program. The runner executes only the
  task's tests, with a proxy for each name the tests use that the program defines. It never runs
  program code, so its builtins, `unittest`, `json`, compiled tests and TestCases (taken from
  the test source alone) are out of the program's reach; it is non-dumpable, so the program
  (same uid, no capabilities) can neither ptrace it nor open its memory or descriptors.
- The call channel (two pipes between runner and server) carries plain data only
  (`sandbox_wire`): the runner turns each reply into new builtin values, so a returned object of
  a class the program defined, or of a library type it subclassed, never reaches the tests; an
  instance of a plain type's subclass arrives as an exact copy of its plain value, anything else
  is a failed call. A reply the server never writes, or a server that goes away mid-run, fails the
  run and the former is recorded as `tampered`.
- The verdict pipe: only the runner holds it (the server is started without it), and it writes
  one JSON line after the tests. Exiting early, crashing or being killed never yields a pass.
- The program's output (stdout and stderr, capped) is kept for reading and never parsed.
- The server reports what it saw the program change or probe (builtins, json, unittest replaced;
  frames or the object graph scanned; hidden packages imported or opened). That report can only
  turn a run into `tampered` (score 0), never into a pass.

Isolation (`sandbox_isolation`): bubblewrap namespaces and a private filesystem, a leased uid when
run as root, a memory cap for the whole process tree. Where bubblewrap cannot run, model code runs
only if the caller passes `allow_unisolated=True`; every result records the isolation it had.
Without isolation the program can write to files the runner later reads or imports (and read the
hidden tests), so none of the above holds there beyond the in-process tricks.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import logging
import marshal
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from collab_utils import sandbox_harness, sandbox_isolation, sandbox_wire

__all__ = [
    "SandboxResult",
    "SandboxUnavailable",
    "guarantees",
    "measure_overhead",
    "run_many",
    "run_tests",
]

log = logging.getLogger(__name__)

OUTPUT_LIMIT_BYTES = 8_192
VERDICT_LIMIT_BYTES = 65_536
MEMORY_LIMIT_MB = 2_048
FILE_SIZE_LIMIT_MB = 16
MAX_PROCESSES = 32
STATUSES = ("passed", "failed", "error", "timeout", "tampered", "memory")
TRIVIAL = (
    "def f(x):\n    return x + 1\n",
    "def check(candidate):\n    assert candidate(1) == 2\n",
    "f",
)
_CODES = [
    binascii.b2a_base64(
        marshal.dumps(compile(Path(module.__file__).read_text(), name, "exec"))
    ).decode()
    for module, name in ((sandbox_wire, "<sandbox-wire>"), (sandbox_harness, "<sandbox-harness>"))
]


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate model code and the caller did not allow running it anyway."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run; `passed` is True only for a complete, untampered pass."""

    status: str  # one of STATUSES
    detail: str
    tests_total: int = 0
    tests_passed: int = 0
    output: str = ""
    duration_s: float = 0.0
    isolation: str = ""  # 'bubblewrap' or 'none'
    tampered: tuple[str, ...] = ()  # what the program changed or probed, when status is tampered

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def fraction_passed(self) -> float:
        """Fraction of test methods passed (1.0/0.0 for a check() function); 0 when tampered."""
        if self.status == "tampered" or not self.tests_total:
            return 0.0
        return self.tests_passed / self.tests_total


_guarantees: dict | None = None
_guarantees_lock = threading.Lock()


def guarantees() -> dict:
    """What the sandbox enforces on this machine (probed once; warns once about what is missing)."""
    global _guarantees
    with _guarantees_lock:
        if _guarantees is None:
            _guarantees = _probe()
            if _guarantees["isolation"] == "none":
                message = (
                    "collab_utils.sandbox cannot isolate model code on this machine ("
                    + _guarantees["why_not_isolated"]
                    + "); it will run model code only when called with allow_unisolated=True."
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
        return dict(_guarantees)


def _probe() -> dict:
    """Isolation is what a trivial program actually passes under, not what should work."""
    as_root = os.geteuid() == 0
    cgroup = sandbox_isolation.has_cgroup()
    why_not = "" if shutil.which("bwrap") else "bubblewrap (bwrap) is not installed"
    if not why_not:
        trial = _run(*TRIVIAL, 30.0, MEMORY_LIMIT_MB, isolated=True, cgroup=cgroup)
        if not trial.passed:
            why_not = (
                f"a trivial program does not pass under bubblewrap ({trial.status}: "
                f"{trial.detail}; {trial.output.strip()[-300:]})"
            )
    isolated = not why_not
    return {
        "isolation": "bubblewrap" if isolated else "none",
        "why_not_isolated": why_not,
        "separate_process": True,
        "verdict_outside_solution": True,  # the test runner never executes program code
        "resource_limits": True,  # RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_CORE
        "private_filesystem": isolated,  # only the interpreter and empty tmpfs folders
        "network_isolated": isolated,
        "pid_namespace": isolated,  # every process the run started ends with it
        "unprivileged_uid": isolated or not as_root,
        "memory_cap": "cgroup v1" if isolated and cgroup else "process-tree watchdog",
    }


def _limits(timeout_s: float, memory_mb: int) -> dict:
    return {
        "RLIMIT_CPU": int(timeout_s) + 2,
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_FSIZE": FILE_SIZE_LIMIT_MB * 1024 * 1024,
        "RLIMIT_NPROC": MAX_PROCESSES,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 256,
    }


_unisolated_allowed = False


def allow_unisolated(allowed: bool) -> None:
    """Whether model code may run without isolation where the machine cannot isolate it: the
    params key `tasks.allow_unisolated` (set by `session.load_roles`), off by default."""
    global _unisolated_allowed
    _unisolated_allowed = bool(allowed)


def run_tests(
    code: str,
    tests: str,
    entry_point: str,
    timeout_s: float = 10.0,
    memory_mb: int = MEMORY_LIMIT_MB,
    allow_unisolated: bool | None = None,
) -> SandboxResult:
    """Run `code` against `tests` (HumanEval `check(candidate)` or unittest `TestCase`s).

    Raises SandboxUnavailable where the machine cannot isolate the run, unless
    `allow_unisolated` (default: the params' `tasks.allow_unisolated`) is True: then the
    program runs as a plain child process.
    """
    report = guarantees()
    isolated = report["isolation"] == "bubblewrap"
    allowed = _unisolated_allowed if allow_unisolated is None else allow_unisolated
    if not isolated and not allowed:
        raise SandboxUnavailable(
            f"cannot isolate model code here ({report['why_not_isolated']}); install bubblewrap "
            "(apt install bubblewrap) and allow unprivileged user namespaces, or set "
            "tasks.allow_unisolated: true in the params to run it without isolation"
        )
    cgroup = report["memory_cap"] == "cgroup v1"
    return _run(code, tests, entry_point, timeout_s, memory_mb, isolated, cgroup)


def _run(code, tests, entry_point, timeout_s, memory_mb, isolated, cgroup) -> SandboxResult:
    started = time.monotonic()
    config = {
        "code": code,
        "tests": tests,
        "entry_point": entry_point,
        "limits": _limits(timeout_s, memory_mb),
        "protected_paths": sandbox_isolation.hidden_paths(),
        "hidden_modules": list(sandbox_isolation.HIDDEN_MODULES),
    }
    memory_cap = sandbox_isolation.MemoryCap(memory_mb << 20, use_cgroup=cgroup)
    as_root = os.geteuid() == 0
    with contextlib.ExitStack() as stack:
        uid = stack.enter_context(sandbox_isolation.lease_uid()) if isolated and as_root else None
        stack.enter_context(memory_cap)
        if isolated:
            command, cwd = list(sandbox_isolation.bwrap_command(as_root)), "/"
        else:
            cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="collab-sandbox-"))
            command = []
        command += [sys.executable, "-I", "-c", sandbox_harness.BOOT, *_CODES, "tests"]
        status, verdict, output = _execute(
            memory_cap.command(command), {**config, "uid": uid}, cwd, timeout_s, memory_cap
        )
    if status == "error" and memory_cap.hit:
        status, verdict = "memory", {"detail": f"memory cap of {memory_mb} MB reached"}
    return SandboxResult(
        status=status,
        detail=str(verdict.get("detail", ""))[:500],
        tests_total=int(verdict.get("tests_total", 0)),
        tests_passed=int(verdict.get("tests_passed", 0)),
        output=output,
        duration_s=round(time.monotonic() - started, 3),
        isolation="bubblewrap" if isolated else "none",
        tampered=tuple(str(item) for item in verdict.get("tampered", ()))[:20],
    )


def _execute(command, config, cwd, timeout_s, memory_cap):
    """Start the runner, feed its config, wait (killing its tree on timeout), read the verdict."""
    verdict_read, verdict_write = os.pipe()
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"},
            start_new_session=True,
            pass_fds=(verdict_write,),
        )
    except BaseException:
        os.close(verdict_read)
        raise
    finally:
        os.close(verdict_write)
    memory_cap.watch(process.pid)
    output_chunks: list[bytes] = []
    verdict_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=_read_capped, args=(stream, limit, sink), daemon=True)
        for stream, limit, sink in (
            (process.stdout, OUTPUT_LIMIT_BYTES, output_chunks),
            (os.fdopen(verdict_read, "rb"), VERDICT_LIMIT_BYTES, verdict_chunks),
        )
    ]
    for reader in readers:
        reader.start()
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write((json.dumps({**config, "verdict_fd": verdict_write}) + "\n").encode())
        process.stdin.close()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the session leader's pid is its group id
    exit_code = process.wait()
    for reader in readers:
        reader.join(timeout=5)
    output = b"".join(output_chunks).decode("utf-8", "replace")
    if timed_out:
        return "timeout", {"detail": f"timed out after {timeout_s:g}s"}, output
    verdict = _parse_verdict(b"".join(verdict_chunks))
    if verdict is None:
        return (
            "error",
            {"detail": f"no verdict from the test runner (exit code {exit_code})"},
            output,
        )
    return verdict["status"], verdict, output


def _read_capped(stream, limit: int, sink: list) -> None:
    """Keep the first `limit` bytes of a stream, drain the rest, close it at its end."""
    kept = 0
    with stream:
        while chunk := stream.read(65_536):
            if kept < limit:
                sink.append(chunk[: limit - kept])
                kept += len(sink[-1])


def _parse_verdict(raw: bytes) -> dict | None:
    """The runner's one-line verdict, or None when there is no well-formed one."""
    try:
        verdict = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    if type(verdict) is not dict or verdict.get("status") not in STATUSES:
        return None
    return verdict


def run_many(
    items, max_workers: int | None = None, allow_unisolated: bool = False
) -> list[SandboxResult]:
    """Run many (code, tests, entry_point[, timeout_s]) items or dicts in parallel, in order."""
    workers = max_workers or os.cpu_count() or 1

    def run_one(item):
        if isinstance(item, dict):
            return run_tests(**{"allow_unisolated": allow_unisolated, **item})
        return run_tests(*item, allow_unisolated=allow_unisolated)

    guarantees()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_one, items))


def measure_overhead(n: int = 20, allow_unisolated: bool = False) -> dict:
    """Seconds per sandboxed run of a trivial passing program (median of `n` runs in a row)."""
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        result = run_tests(*TRIVIAL, allow_unisolated=allow_unisolated)
        seconds.append(time.perf_counter() - started)
        if not result.passed:
            raise RuntimeError(f"the trivial program did not pass: {result.status} {result.detail}")
    return {
        "seconds_per_run": round(statistics.median(seconds), 4),
        "runs": n,
        "isolation": guarantees()["isolation"],
    }
