"""The two processes inside the sandbox: the test runner and the solution server.

The sandbox starts this file's code as `python -I -c BOOT WIRE HARNESS tests`; the package itself
is hidden inside the sandbox, so the file is never imported there. The test runner compiles the
task's tests, starts the solution server as a fresh interpreter (`... solution`), binds a proxy
for every name the tests use that the solution defines, runs the tests and writes the one
verdict to a pipe only it holds. It never executes solution code: a call through a proxy sends
plain data to the server and turns the plain data that comes back into new builtin values, so
nothing the solution defines (a class, an `__eq__`, a patched module) exists in the runner.

The server runs the solution and answers calls. It is untrusted and may be rewritten by the
solution at will; what it reports about tampering (builtins, json or unittest changed, frames or
the object graph scanned, hidden packages imported or opened) can only make a run fail.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import json
import os
import signal
import sys

if __name__ != "__main__":  # in the sandbox the boot line has already run sandbox_wire's source
    from collab_utils.sandbox_wire import NATIVE, Channel, Unencodable, decode, encode

# argv[1:3]: the code of sandbox_wire and of this file, compiled by the caller and marshalled.
BOOT = (
    "import binascii, marshal, sys\n"
    "for code in sys.argv[1:3]: exec(marshal.loads(binascii.a2b_base64(code)))"
)
SOLUTION_FILE = "<solution>"
SOLUTION_MODULE = "__sandbox__"
TESTS_MODULE = "__tests__"
CALL_OUTPUT_LIMIT = 65_536

# --- the test runner ------------------------------------------------------------------------------


_REPLY_KEYS = {
    "ok",
    "raise",
    "message",
    "unencodable",
    "forged",
    "out",
    "ready",
    "error",
    "tampered",
}


class SolutionGone(RuntimeError):
    """The solution server ended, hung up or broke the protocol: the run cannot pass."""


class Solution:
    """The solution server as seen from the test runner: calls, and what went wrong."""

    def __init__(self, channel: Channel, pid: int):
        self.channel = channel
        self.pid = pid
        self.tampered: list[str] = []
        self.fatal = ""

    def request(self, message: dict) -> dict:
        if self.fatal:
            raise SolutionGone(self.fatal)
        try:
            self.channel.send(message)
            reply = self.channel.receive()
            if self.channel.pending or not set(reply) <= _REPLY_KEYS:
                raise ValueError("not a reply the server writes")
            return reply
        except (OSError, EOFError):
            self.fatal = "the solution's process ended or closed its channel"
        except (ValueError, RecursionError):
            self.fatal = "the channel carried bytes the solution server does not write"
            self.tampered.append(self.fatal)
        raise SolutionGone(self.fatal)

    def proxy(self, name: str):
        def call(*args, **kwargs):
            message = {"call": name, "args": encode(args), "kwargs": encode(kwargs)}
            return self.answer(self.request(message))

        call.__name__ = call.__qualname__ = name
        return call

    def answer(self, reply: dict):
        if reply.get("out"):
            sys.stdout.write(str(reply["out"])[:CALL_OUTPUT_LIMIT])
        if reply.get("forged"):
            self.tampered.append(str(reply["forged"])[:500])
        if "unencodable" in reply:
            kind = str(reply["unencodable"])[:200]
            raise Unencodable(f"a {kind} cannot cross the sandbox boundary (plain data only)")
        try:
            if "ok" in reply:
                return decode(reply["ok"])
            kind, message = _builtin_exception(reply["raise"]), str(reply.get("message", ""))
        except (KeyError, TypeError, ValueError, RecursionError):
            self.fatal = "the solution server sent a reply it does not write"
            self.tampered.append(self.fatal)
            raise SolutionGone(self.fatal) from None
        if not issubclass(kind, Exception):
            self.fatal = f"the solution raised {kind.__name__}"
            raise SolutionGone(self.fatal)
        raise kind(message)

    def close(self) -> None:
        """Ask for the server's own findings, then end it."""
        if not self.fatal:
            try:
                findings = self.request({"bye": True}).get("tampered", [])
                self.tampered.extend(str(item)[:500] for item in findings)
            except SolutionGone:
                self.fatal = "the solution's process ended before its final check"


def _builtin_exception(names) -> type:
    for name in names:
        kind = getattr(builtins, str(name), None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            return kind
    raise ValueError("no builtin exception named")


def _referenced_names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _referenced_names(const)
    return names


def _start_solution(config: dict, wanted: list[str]) -> tuple[Solution, dict]:
    """Start the server (a fresh interpreter holding only its two pipes and stdio), send it the
    program, and return the server with its first reply."""
    to_server_read, to_server_write = os.pipe()
    from_server_read, from_server_write = os.pipe()
    for fd in (to_server_read, from_server_write):
        os.set_inheritable(fd, True)
    command = [sys.executable, "-I", "-c", BOOT, sys.argv[1], sys.argv[2], "solution"]
    command += [str(to_server_read), str(from_server_write)]
    pid = os.posix_spawn(sys.executable, command, os.environ)
    os.close(to_server_read)
    os.close(from_server_write)
    _undumpable()  # before the program arrives: the server, same uid, cannot ptrace this process
    solution = Solution(Channel(from_server_read, to_server_write), pid)
    hello = {key: config[key] for key in ("code", "protected_paths", "hidden_modules")}
    try:
        return solution, solution.request({**hello, "names": wanted})
    except SolutionGone:
        return solution, {}


def _run_unittest(namespace: dict) -> dict:
    import unittest

    class Tally(unittest.TestResult):
        succeeded = 0

        def addSuccess(self, test):
            super().addSuccess(test)
            self.succeeded += 1

    cases = [
        value
        for value in namespace.values()
        if isinstance(value, type)
        and issubclass(value, unittest.TestCase)
        and value.__module__ == TESTS_MODULE
    ]
    if not cases:
        return {"status": "error", "detail": "tests define neither check() nor a TestCase"}
    loader = unittest.TestLoader()
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(case) for case in cases)
    total = suite.countTestCases()
    tally = Tally()
    suite.run(tally)
    passed = tally.succeeded + len(tally.expectedFailures)
    problems = tally.failures + tally.errors
    detail = problems[0][1].strip().splitlines()[-1] if problems else f"{passed} of {total} passed"
    return {
        "status": "passed" if total and passed == total else "failed",
        "detail": detail,
        "tests_total": total,
        "tests_passed": passed,
    }


def _judge(config: dict) -> dict:
    try:
        tests = compile(config["tests"], "<tests>", "exec")
    except SyntaxError as exc:
        return {"status": "error", "detail": f"the tests do not compile: {exc}"}
    entry_point = config["entry_point"]
    wanted = sorted((_referenced_names(tests) - set(dir(builtins))) | {entry_point} - {""})
    solution, ready = _start_solution(config, wanted)
    names = ready.get("ready")
    if "error" in ready or type(names) is not list:
        solution.tampered.extend(str(item)[:500] for item in ready.get("tampered", ()))
        detail = str(ready.get("error") or solution.fatal or "the solution server did not start")
        return _final(solution, {"status": "error", "detail": detail[:500]})
    namespace = _module_namespace(TESTS_MODULE)
    namespace.update((name, solution.proxy(name)) for name in wanted if name in names)
    try:
        exec(tests, namespace)
        if callable(namespace.get("check")):
            if entry_point not in names:
                verdict = {"status": "error", "detail": f"entry point {entry_point!r} not defined"}
            else:
                namespace["check"](namespace[entry_point])
                verdict = {"status": "passed", "detail": "check() passed"}
            verdict.update(tests_total=1, tests_passed=int(verdict["status"] == "passed"))
        else:
            verdict = _run_unittest(namespace)
    except BaseException as exc:  # noqa: BLE001 - a failing check() may raise anything
        verdict = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"}
        verdict.update(tests_total=1, tests_passed=0)
    solution.close()
    return _final(solution, verdict)


def _module_namespace(name: str) -> dict:
    """Globals of a module registered under `name`, so dataclasses and pickle can find it."""
    module = sys.modules[name] = type(sys)(name)
    module.__builtins__ = builtins
    return vars(module)


def _final(solution: Solution, verdict: dict) -> dict:
    """The tests' verdict, overruled by tampering or by a solution process that went away."""
    os.kill(solution.pid, signal.SIGKILL)
    if solution.tampered:
        return {**verdict, "status": "tampered", "tampered": list(dict.fromkeys(solution.tampered))}
    if solution.fatal and verdict["status"] != "error":
        return {**verdict, "status": "failed", "detail": solution.fatal, "tests_passed": 0}
    return verdict


def _enter_sandbox(config: dict) -> None:
    """Drop to the sandbox uid (when run as root) and set the resource limits.

    bubblewrap has already set no_new_privs, so no later exec gains privileges."""
    import resource

    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
        if os.getuid() != config["uid"] or os.geteuid() != config["uid"]:
            os._exit(71)
    for name, value in config["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _undumpable() -> None:
    """No ptrace, /proc/PID/mem or /proc/PID/fd of this process for anyone without privileges."""
    import ctypes

    PR_SET_DUMPABLE = 4
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0):
        os._exit(72)


def tests_main() -> None:
    config = json.loads(sys.stdin.readline())
    os.set_inheritable(config["verdict_fd"], False)  # the server must never hold it
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _enter_sandbox(config)
    verdict = _judge(config)
    sys.stdout.flush()
    os.write(config["verdict_fd"], (json.dumps(verdict) + "\n").encode())
    os._exit(0)


# --- the solution server --------------------------------------------------------------------------


class _Sentinel:
    """A value no honest `__eq__` claims to equal."""


def _watch(config: dict, findings: list[str]) -> None:
    """Audit hook: note imports or opens of hidden packages and scans of the harness."""
    hidden = set(config["hidden_modules"])
    protected = tuple(os.path.join(path, "") for path in config["protected_paths"])

    def hook(event, args):
        if event == "import" and str(args[0]).partition(".")[0] in hidden:
            findings.append(f"imported {args[0]}")
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if os.path.join(path, "").startswith(protected):
                findings.append(f"opened {path}")
        elif event == "sys._getframe" and args[0].f_code.co_filename.startswith("<sandbox-"):
            findings.append("looked at the harness's frames (sys._getframe)")
        elif event in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
            findings.append(f"scanned the interpreter's objects ({event})")

    sys.addaudithook(hook)


# Modules of the verdict machinery, with the classes in them whose contents count too.
WATCHED = {
    "builtins": (),
    "json": (),
    "json.encoder": ("JSONEncoder",),
    "json.decoder": ("JSONDecoder",),
    "unittest": (),
    "unittest.case": ("TestCase",),
    "unittest.result": ("TestResult",),
}
# A documented hook honest programs patch to serialize their own types; it cannot reach a verdict.
UNWATCHED = {"json.encoder.JSONEncoder.default"}


class Machinery:
    """Records each watched namespace when first loaded (a meta path finder for those not loaded
    yet, so the server need not import unittest), and says at the end what was replaced."""

    def __init__(self):
        self.spaces: dict = {}
        self.before: dict = {}
        for name in WATCHED:
            if name in sys.modules:
                self.record(sys.modules[name])
        sys.meta_path.insert(0, self)

    def record(self, module) -> None:
        names = WATCHED[module.__name__]
        spaces = {module.__name__: module}
        spaces.update((f"{module.__name__}.{name}", getattr(module, name)) for name in names)
        self.spaces.update(spaces)
        self.before.update((name, dict(vars(space))) for name, space in spaces.items())

    def find_spec(self, name, path=None, target=None):
        if name not in WATCHED or name in self.spaces:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                self.record(module)

            spec.loader.exec_module = exec_module
        return spec

    def changes(self) -> list[str]:
        changed = [
            f"{name}.{key} replaced"
            for name, space in self.spaces.items()
            for key, value in self.before[name].items()
            if vars(space).get(key, _Sentinel) is not value and f"{name}.{key}" not in UNWATCHED
        ]
        return changed + [
            f"sys.modules[{name!r}] replaced"
            for name, space in self.spaces.items()
            if name in WATCHED and sys.modules.get(name) is not space
        ]


def _reply(result) -> dict:
    reply = {}
    try:
        reply["ok"] = encode(result)
    except (Unencodable, RecursionError):
        reply["unencodable"] = f"{type(result).__module__}.{type(result).__qualname__}"
    if type(result) not in NATIVE:
        try:
            claims = bool(result == _Sentinel())
        except BaseException:  # noqa: BLE001 - the solution's __eq__ may raise anything
            claims = False
        if claims:
            name = type(result).__qualname__
            reply["forged"] = f"returned an instance of {name} that claims to equal anything"
    return reply


def _describe(exc: BaseException, with_type: bool = True) -> str:
    try:
        text = str(exc)[:2000]
    except BaseException:  # noqa: BLE001 - the program's __str__ may raise anything
        text = "(unprintable)"
    return f"{type(exc).__name__}: {text}" if with_type else text


def solution_main() -> None:
    import contextlib
    import io

    channel = Channel(int(sys.argv[4]), int(sys.argv[5]))
    config = channel.receive()
    machinery = Machinery()
    findings: list[str] = []
    _watch(config, findings)
    namespace = _module_namespace(SOLUTION_MODULE)
    server = os.getpid()
    try:
        exec(compile(config["code"], SOLUTION_FILE, "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - report whatever the program raised
        if os.getpid() == server:
            sys.stdout.flush()
            tampered = findings + machinery.changes()
            channel.send({"error": _describe(exc), "tampered": tampered})
        os._exit(0)
    if os.getpid() != server:  # a child the program forked came back into the harness
        os._exit(0)
    channel.send({"ready": [name for name in config["names"] if callable(namespace.get(name))]})
    while True:
        request = channel.receive()
        if "bye" in request:
            sys.stdout.flush()
            sys.stderr.flush()
            channel.send({"tampered": findings + machinery.changes()})
            os._exit(0)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                function = namespace[request["call"]]
                result = function(*decode(request["args"]), **decode(request["kwargs"]))
            reply = _reply(result)
        except BaseException as exc:  # noqa: BLE001 - the solution may raise anything
            mro = [cls.__name__ for cls in type(exc).__mro__ if cls.__module__ == "builtins"]
            reply = {"raise": mro, "message": _describe(exc, with_type=False)}
        if os.getpid() != server:  # a child the program forked came back into the harness
            os._exit(0)
        reply["out"] = captured.getvalue()[:CALL_OUTPUT_LIMIT]
        try:
            channel.send(reply)
        except OverflowError:
            channel.send({"unencodable": "value over the message size limit", "out": reply["out"]})


if __name__ == "__main__":
    {"tests": tests_main, "solution": solution_main}[sys.argv[3]]()
