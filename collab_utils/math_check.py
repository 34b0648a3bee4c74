"""Math answer equivalence through math-verify, with a timeout on every thread.

math-verify's own timeouts use SIGALRM, which works only in the main thread. There,
`equivalent` calls it directly. Elsewhere (a thread pool, a web server) the comparison runs in a
worker process, this file run as a script, whose main thread uses those timeouts; the caller
waits at most `hard_limit_s` and kills a worker stuck in C code. A comparison that times out is
not an equivalence.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import threading
import time

TIMEOUT_S = 5  # math-verify's per-step limit (parsing each side, verifying)
_STARTUP_S = 120.0  # the worker imports sympy once

log = logging.getLogger(__name__)


def compare(gold: str, predicted: str, timeout_s: int = TIMEOUT_S) -> bool:
    """math-verify equivalence in this thread (the main thread of its process); an answer
    neither side can parse compares as text."""
    from math_verify import parse, verify

    parsed_gold = parse(f"${gold}$", parsing_timeout=timeout_s)
    parsed_predicted = parse(f"${predicted}$", parsing_timeout=timeout_s)
    if not parsed_gold or not parsed_predicted:
        return gold.strip() == predicted.strip()
    return bool(verify(parsed_gold, parsed_predicted, timeout_seconds=timeout_s))


def equivalent(gold: str, predicted: str, timeout_s: int = TIMEOUT_S) -> bool:
    """`compare` with math-verify's timeouts, from any thread."""
    if threading.current_thread() is threading.main_thread():
        return compare(gold, predicted, timeout_s)
    return _WORKER.compare(gold, predicted, timeout_s)


class _Worker:
    """One worker process, used by one thread at a time, restarted after a kill or a crash."""

    def __init__(self, command: list[str]):
        self.command = command
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None

    def compare(self, gold: str, predicted: str, timeout_s: int) -> bool:
        hard_limit_s = 3 * timeout_s + 5.0  # two parses and a verification, plus slack
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = subprocess.Popen(
                    self.command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    bufsize=1,
                )
                if self._read_line(_STARTUP_S) != "ready":
                    self._kill("did not start")
                    return False
            request = {"gold": gold, "predicted": predicted, "timeout_s": timeout_s}
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
            except OSError:
                self._kill("closed its input")
                return False
            line = self._read_line(hard_limit_s)
            if not line:
                self._kill(f"gave no verdict within {hard_limit_s:.0f} s")
                return False
            return bool(json.loads(line)["equal"])

    def _read_line(self, limit_s: float) -> str | None:
        deadline = time.monotonic() + limit_s
        stdout = self.process.stdout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([stdout], [], [], left)[0]:
                line = stdout.readline()
                return line.strip()
        return None

    def _kill(self, why: str) -> None:
        log.warning("math-verify worker %s; killed, counted as not equivalent", why)
        self.process.kill()
        self.process.wait()
        self.process = None


_WORKER = _Worker([sys.executable, __file__])


def _serve() -> None:
    """The worker: one JSON request per input line, one `{"equal": bool}` per output line."""
    import math_verify  # noqa: F401 (imported before saying ready)

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        equal = compare(request["gold"], request["predicted"], request["timeout_s"])
        print(json.dumps({"equal": equal}), flush=True)


if __name__ == "__main__":
    _serve()
