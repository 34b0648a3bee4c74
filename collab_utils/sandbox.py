"""Run untrusted generated code against tests in an isolated child process.

Each run gets a separate Python process in a fresh temp dir with a stripped environment, CPU,
memory, file-size and process limits, and its own session (process group). Run as root, the child
drops to a dedicated unprivileged uid (one per concurrent run) and enters a new network namespace,
so it can neither touch the caller's files, processes and environment nor reach the network; after
the run every process left with that uid is killed, which also catches double-forked grandchildren
that left the process group. `guarantees()` says what is enforced on this machine and warns once,
loudly, about what is not.

A run counts as passed only when the harness, after the tests finished, writes a verdict tagged
with a random nonce to a private pipe: exiting early (`sys.exit`, `os._exit`, a crash, a kill)
never yields a pass. The nonce lives only in the harness's memory, so code that digs it out of the
interpreter (e.g. through `gc`) could forge a verdict; the sandbox contains hostile code, it does
not make an in-process test harness tamper-proof.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "guarantees", "run_many", "run_tests"]

log = logging.getLogger(__name__)

OUTPUT_LIMIT_BYTES = 8_192
VERDICT_LIMIT_BYTES = 65_536
MEMORY_LIMIT_MB = 2_048
FILE_SIZE_LIMIT_MB = 16
MAX_PROCESSES = 32
UID_POOL_BASE = 1_900_000_000
UID_POOL_SIZE = 256
LOCK_DIR = Path(tempfile.gettempdir()) / "collab-sandbox-locks"
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
RESULT_FD = 3

# Runs inside the child. Reads its config (with the nonce) from stdin, isolates itself, then runs
# the program and the tests in one namespace and writes the verdict to RESULT_FD.
_HARNESS = r"""
def _harness():
    import ctypes, json, os, resource, sys, unittest
    config = json.loads(sys.stdin.readline())
    nonce = config.pop("nonce")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    write, dumps, exit_now = os.write, json.dumps, os._exit
    result_fd = config["result_fd"]
    libc = ctypes.CDLL(None, use_errno=True)
    if config["unshare_flags"] and libc.unshare(config["unshare_flags"]) != 0:
        sys.stderr.write("sandbox: unshare failed, errno %d\n" % ctypes.get_errno())
        exit_now(70)
    for limit, value in config["limits"].items():
        resource.setrlimit(getattr(resource, limit), (value, value))
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot regain privileges
    if config["uid"] is not None:
        # The interpreter may live where the sandbox uid cannot look (e.g. /root/.pyenv): reach
        # its import directories through descriptors opened now, as root.
        reachable = {}
        for entry in sys.path:
            if os.path.isdir(entry) and entry not in reachable:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
                reachable[entry] = "/proc/self/fd/%d" % fd

        def remap(path):
            for real in sorted(reachable, key=len, reverse=True):
                if path == real or path.startswith(real + os.sep):
                    return reachable[real] + path[len(real):]
            return path

        sys.path[:] = [remap(entry) for entry in sys.path]
        for module in list(sys.modules.values()):
            if isinstance(getattr(module, "__path__", None), list):
                module.__path__[:] = [remap(entry) for entry in module.__path__]
        sys.path_importer_cache.clear()
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
        if os.getuid() != config["uid"] or os.geteuid() != config["uid"]:
            exit_now(71)

    def report(verdict):
        write(result_fd, (nonce + " " + dumps(verdict) + "\n").encode())
        exit_now(0)

    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        exec(compile(config["code"], "<solution>", "exec"), namespace)
        exec(compile(config["tests"], "<tests>", "exec"), namespace)
    except BaseException as exc:
        report({"status": "error", "detail": "%s: %s" % (type(exc).__name__, exc)})
    candidate = namespace.get(config["entry_point"]) if config["entry_point"] else None
    if callable(namespace.get("check")):
        if candidate is None:
            report({"status": "error", "detail": "entry point %r not defined"
                    % config["entry_point"]})
        try:
            namespace["check"](candidate)
        except BaseException as exc:
            report({"status": "failed", "detail": "%s: %s" % (type(exc).__name__, exc),
                    "tests_total": 1, "tests_passed": 0})
        report({"status": "passed", "detail": "check() passed", "tests_total": 1,
                "tests_passed": 1})
    cases = [v for v in namespace.values() if isinstance(v, type)
             and issubclass(v, unittest.TestCase) and v is not unittest.TestCase]
    if not cases:
        report({"status": "error", "detail": "tests define neither check() nor a TestCase"})
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in cases)
    outcome = unittest.TestResult()
    try:
        suite.run(outcome)
    except BaseException as exc:
        report({"status": "error", "detail": "%s: %s" % (type(exc).__name__, exc)})
    problems = outcome.failures + outcome.errors
    total = outcome.testsRun
    passed = total - len(problems) - len(outcome.unexpectedSuccesses)
    detail = problems[0][1].strip().splitlines()[-1] if problems else "%d tests passed" % total
    report({"status": "passed" if total and passed == total else "failed", "detail": detail,
            "tests_total": total, "tests_passed": passed})

_harness()
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run; `passed` is True only for a verified, complete pass."""

    status: str  # 'passed' | 'failed' | 'timeout' | 'error'
    detail: str
    tests_total: int = 0
    tests_passed: int = 0
    output: str = ""
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def fraction_passed(self) -> float:
        """Fraction of test methods passed (1.0/0.0 for a single check() function)."""
        return self.tests_passed / self.tests_total if self.tests_total else 0.0


_guarantees: dict | None = None
_guarantees_lock = threading.Lock()


def guarantees() -> dict:
    """What the sandbox enforces on this machine (probed once; warns once about what is missing)."""
    global _guarantees
    with _guarantees_lock:
        if _guarantees is None:
            _guarantees = _probe_guarantees()
            missing = [name for name, on in _guarantees.items() if on is False]
            if missing:
                message = (
                    "collab_utils.sandbox cannot enforce on this machine: "
                    + ", ".join(missing)
                    + ". Generated code may reach what these would have protected."
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
        return {name: on for name, on in _guarantees.items() if name != "unshare_flags"}


def _probe_guarantees() -> dict:
    is_root = os.geteuid() == 0
    flags = CLONE_NEWNET if is_root else CLONE_NEWUSER | CLONE_NEWNET
    probe = (
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"sys.exit(0 if libc.unshare({flags}) == 0 else 1)"
    )
    network = subprocess.run([sys.executable, "-I", "-c", probe], check=False).returncode == 0
    return {
        "separate_process": True,
        "resource_limits": True,  # RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_CORE
        "stripped_environment": True,
        "kill_process_group_on_timeout": True,
        "network_isolated": network,
        "unprivileged_uid": is_root,  # protects the caller's files, processes and /proc environ
        "kills_escaped_processes": is_root,  # via the dedicated uid
        "unshare_flags": flags if network else 0,
    }


@contextlib.contextmanager
def _sandbox_uid():
    """Lease a dedicated uid from a file-locked pool (shared across processes); None if not root."""
    if os.geteuid() != 0:
        yield None
        return
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    start = secrets.randbelow(UID_POOL_SIZE)
    for attempt in range(UID_POOL_SIZE * 4):
        uid = UID_POOL_BASE + (start + attempt) % UID_POOL_SIZE
        handle = open(LOCK_DIR / str(uid), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            if attempt % UID_POOL_SIZE == UID_POOL_SIZE - 1:
                time.sleep(0.05)
            continue
        try:
            _kill_uid(uid)  # a crashed earlier caller may have left processes behind
            yield uid
        finally:
            _kill_uid(uid)
            handle.close()
        return
    raise RuntimeError("no free sandbox uid")


def _live_pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 -1").split()[1]) == uid and "Z" not in fields.get("State", ""):
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    """Kill every process running as `uid`, rescanning until none is left (NPROC bounds forks)."""
    for _ in range(100):
        pids = _live_pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    log.error("sandbox: processes of uid %d survive SIGKILL", uid)


def _limits(timeout_s: float, memory_mb: int, uid: int | None) -> dict:
    cpu = int(timeout_s) + 2
    processes = MAX_PROCESSES
    if uid is None:  # RLIMIT_NPROC counts all processes of the (shared) real uid
        processes += len(_live_pids_of_uid(os.getuid()))
    return {
        "RLIMIT_CPU": cpu,
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_FSIZE": FILE_SIZE_LIMIT_MB * 1024 * 1024,
        "RLIMIT_NPROC": processes,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 256,
    }


def _read_capped(stream, limit: int, sink: list) -> None:
    """Keep the first `limit` bytes of a stream and drain (discard) the rest."""
    kept = 0
    while chunk := stream.read(65_536):
        if kept < limit:
            sink.append(chunk[: limit - kept])
            kept += len(sink[-1])


def run_tests(
    code: str,
    tests: str,
    entry_point: str,
    timeout_s: float = 10.0,
    memory_mb: int = MEMORY_LIMIT_MB,
) -> SandboxResult:
    """Run `code` then `tests` (HumanEval `check(candidate)` or unittest `TestCase`s) sandboxed."""
    guarantees()
    started = time.monotonic()
    nonce = secrets.token_hex(16)
    with (
        _sandbox_uid() as uid,
        tempfile.TemporaryDirectory(
            prefix="collab-sandbox-", ignore_cleanup_errors=True
        ) as workdir,
    ):
        if uid is not None:
            os.chown(workdir, uid, uid)
        verdict_read, verdict_write = os.pipe()
        config = {
            "nonce": nonce,
            "code": code,
            "tests": tests,
            "entry_point": entry_point,
            "result_fd": verdict_write,
            "unshare_flags": _guarantees["unshare_flags"],
            "limits": _limits(timeout_s, memory_mb, uid),
            "uid": uid,
            "gid": uid,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _HARNESS],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
                start_new_session=True,
                pass_fds=(verdict_write,),
            )
        except BaseException:
            os.close(verdict_read)
            raise
        finally:
            os.close(verdict_write)
        with os.fdopen(verdict_read, "rb") as verdict_stream:
            status, verdict, output, exit_code = _supervise(
                process, config, verdict_stream, timeout_s, uid
            )
    if status is None:
        status = "error"
        verdict = {"detail": f"no verdict from the harness (exit code {exit_code})"}
    return SandboxResult(
        status=status,
        detail=str(verdict.get("detail", ""))[:500],
        tests_total=int(verdict.get("tests_total", 0)),
        tests_passed=int(verdict.get("tests_passed", 0)),
        output=output,
        duration_s=round(time.monotonic() - started, 3),
    )


def _supervise(process, config, verdict_stream, timeout_s, uid):
    """Feed the config, wait until done or timed out, kill leftovers, read output and verdict."""
    output_chunks: list[bytes] = []
    verdict_chunks: list[bytes] = []
    readers = [
        threading.Thread(
            target=_read_capped, args=(process.stdout, OUTPUT_LIMIT_BYTES, output_chunks)
        ),
        threading.Thread(
            target=_read_capped, args=(verdict_stream, VERDICT_LIMIT_BYTES, verdict_chunks)
        ),
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    try:
        process.stdin.write((json.dumps(config) + "\n").encode())
        process.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = False
    try:
        exit_code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the session leader's pid is its group id
    if uid is not None:
        _kill_uid(uid)  # grandchildren that escaped the group (setsid, double fork)
    exit_code = process.wait()
    for reader in readers:
        reader.join(timeout=5)
    output = b"".join(output_chunks).decode("utf-8", "replace")
    if timed_out:
        return "timeout", {"detail": f"timed out after {timeout_s:g}s"}, output, exit_code
    status, verdict = _parse_verdict(b"".join(verdict_chunks), config["nonce"])
    return status, verdict, output, exit_code


def _parse_verdict(raw: bytes, nonce: str) -> tuple[str | None, dict]:
    """The first line tagged with the nonce; (None, {}) when there is none."""
    for line in raw.decode("utf-8", "replace").splitlines():
        tag, _, payload = line.partition(" ")
        if secrets.compare_digest(tag, nonce):
            with contextlib.suppress(ValueError):
                verdict = json.loads(payload)
                if verdict.get("status") in {"passed", "failed", "error"}:
                    return verdict["status"], verdict
    return None, {}


def run_many(items, max_workers: int | None = None) -> list[SandboxResult]:
    """Run many (code, tests, entry_point[, timeout_s]) items or dicts in parallel, in order."""
    workers = max_workers or os.cpu_count() or 1

    def run_one(item):
        if isinstance(item, dict):
            return run_tests(**item)
        return run_tests(*item)

    guarantees()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_one, items))
