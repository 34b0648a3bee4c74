"""Containment as root and as an ordinary user: what a program can read, leave, reach and hold.

Each variant runs one caller process (as root, or as a throwaway uid with no passwd entry and a
home of its own holding planted secrets) that runs the attack programs in the sandbox and, as a
control, runs the same attacks outside it, so every check below is one that can fail.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

import collab_utils

PROJECT = Path(__file__).parents[1]
DATA_FILE = Path(collab_utils.__file__).parent / "data" / "code.jsonl"
USER_UID = 1_899_999_999  # outside the sandbox's own uid pool
REPORT = "import json\n\ndef check(candidate):\n    print('RESULT', json.dumps(candidate()))\n"

RUNNER = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from collab_utils import sandbox
    job = json.load(sys.stdin)
    out = {"results": {}, "controls": {}}
    for attack in job:
        try:
            result = sandbox.run_tests(attack["code"], attack["tests"], "f", **attack["limits"])
            out["results"][attack["name"]] = [result.status, result.output, result.isolation]
        except sandbox.SandboxUnavailable as exc:
            out["results"][attack["name"]] = ["refused", str(exc), "none"]
        if attack["control"]:
            namespace = {}
            exec(attack["code"], namespace)
            out["controls"][attack["name"]] = namespace["f"]()
    print(json.dumps(out))
    """
)


def attacks(home: str, token: str, socket_path: str, abstract: str) -> list[dict]:
    readable = [f"{home}/.ssh/id_rsa", f"{home}/.cache/collab_utils/secret.txt"]
    readable += [str(DATA_FILE), str(PROJECT / "README.md")]
    reads = f"""
import os

def f():
    found = []
    for path in {readable!r}:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
            found.append(path)
        except OSError:
            pass
    return found
"""
    leaves = f"""
import os, time

def f():
    written = []
    for folder in ("/tmp", "/dev/shm", "/var/tmp", os.getcwd(), os.path.expanduser("~")):
        try:
            with open(os.path.join(folder, "{token}-" + str(os.getpid())), "wb") as handle:
                handle.write(b"x" * 1_000_000)
            written.append(folder)
        except OSError:
            pass
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(1)
            for folder in ("/tmp", "/dev/shm", "/var/tmp"):
                open(os.path.join(folder, "{token}-late"), "w").close()
        os._exit(0)
    return written
"""
    sockets = f"""
import socket

def f():
    reached = []
    for address in ({socket_path!r}, "\\0" + {abstract!r}):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(2)
        try:
            client.connect(address)
            client.sendall(b"{token}")
            reached.append(address.strip("\\0"))
        except OSError:
            pass
        finally:
            client.close()
    return reached
"""
    hold = """
import os, select, time

def f():
    ready_read, ready_write = os.pipe()
    release_read, release_write = os.pipe()
    for _ in range(4):
        if os.fork() == 0:
            os.close(release_write)
            block = b"x" * (120 << 20)
            os.write(ready_write, b"1")
            select.select([release_read], [], [], 20)
            os._exit(len(block) and 0)
    os.close(release_read)
    held = ended = 0
    deadline = time.time() + 15
    while held + ended < 4 and time.time() < deadline:
        if select.select([ready_read], [], [], 0.05)[0]:
            held += len(os.read(ready_read, 4))
        while ended < 4 and os.waitpid(-1, os.WNOHANG)[0]:
            ended += 1
    os.close(release_write)
    return held
"""
    small, large = {"memory_mb": 256, "timeout_s": 30}, {"memory_mb": 2048, "timeout_s": 30}
    return [
        {"name": "reads", "code": reads, "limits": {}, "control": True},
        {"name": "leaves", "code": leaves, "limits": {}, "control": False},
        {"name": "sockets", "code": sockets, "limits": {}, "control": True},
        {"name": "memory", "code": hold, "limits": small, "control": False},
        {"name": "memory_control", "code": hold, "limits": large, "control": False},
    ]


def _user_python() -> str | None:
    """An interpreter the throwaway uid can run (the venv's may live under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        probe = [python, "-c", "import sys; assert sys.version_info >= (3, 11)"]
        try:
            subprocess.run(probe, user=USER_UID, group=USER_UID, extra_groups=[], check=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return python
    return None


class Listener:
    """A Unix socket on the host that records what connected clients send."""

    def __init__(self, address: str):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(address)
        self.server.listen(8)
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.received.append(connection.recv(100))
                except OSError:
                    pass


@pytest.fixture(params=["root", "ordinary user"])
def caller(request):
    """Runs RUNNER as the variant's caller; yields (run(attacks) -> report, home, uid)."""
    as_root = os.geteuid() == 0
    if request.param == "root" and not as_root:
        pytest.skip("needs root")
    uid = USER_UID if request.param == "ordinary user" and as_root else os.geteuid()
    python = sys.executable
    if uid != os.geteuid():
        python = _user_python()
        if python is None:
            pytest.skip(f"no Python >= 3.11 here that uid {uid} may run")
    home = tempfile.mkdtemp(prefix="collab-home-", dir="/tmp")
    for secret in (".ssh/id_rsa", ".cache/collab_utils/secret.txt"):
        path = Path(home, secret)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("-----BEGIN PRIVATE KEY-----\n")
        path.chmod(0o600)
    for folder, names, files in os.walk(home):
        for path in [folder, *(os.path.join(folder, name) for name in names + files)]:
            os.chown(path, uid, uid)
    os.chmod(home, 0o700)

    def run(job: list[dict]) -> dict:
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "PYTHONPATH": str(PROJECT)}
        ids = {"user": uid, "group": uid, "extra_groups": []} if uid != os.geteuid() else {}
        done = subprocess.run(
            [python, "-c", RUNNER],
            input=json.dumps(job),
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            **ids,
        )
        return json.loads(done.stdout)

    yield run, home
    shutil.rmtree(home, ignore_errors=True)


def reported(result: list) -> object:
    """What the attack program returned, printed by the REPORT check; None without a report."""
    status, output, _ = result
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if status in ("passed", "tampered") and lines else None


def test_the_program_sees_nothing_leaves_nothing_reaches_nothing_holds_no_more(caller):
    run, home = caller
    token = f"collab-leak-{secrets.token_hex(6)}"
    socket_dir = tempfile.mkdtemp(prefix="collab-sock-", dir="/tmp")
    os.chmod(socket_dir, 0o755)
    socket_path, abstract = f"{socket_dir}/socket", f"collab-{token}"
    listeners = [Listener(socket_path), Listener("\0" + abstract)]
    os.chmod(socket_path, 0o777)
    job = attacks(home, token, socket_path, abstract)
    for attack in job:
        attack["tests"] = REPORT
    try:
        report = run(job)
        time.sleep(1.5)  # the detached writer of the 'leaves' attack would be done by now
    finally:
        for listener in listeners:
            listener.server.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    results, controls = report["results"], report["controls"]
    if all(result[0] == "refused" for result in results.values()):
        pytest.skip(f"no isolation for this caller, model code refused: {results['reads'][1]}")
    assert {result[2] for result in results.values()} == {"bubblewrap"}

    # Outside the sandbox this caller reads its home, the package data and the project tree.
    assert len(controls["reads"]) == 4
    assert reported(results["reads"]) == []

    leaked = [p for d in ("/tmp", "/dev/shm", "/var/tmp") for p in glob.glob(f"{d}/{token}*")]
    assert leaked == []
    assert {"/tmp", "/dev/shm"} <= set(reported(results["leaves"]))

    assert controls["sockets"] == [socket_path, abstract]
    assert reported(results["sockets"]) == []
    received = [message for listener in listeners for message in listener.received]
    assert received == [token.encode()] * 2  # the control's two connections, none from the sandbox

    # 4 x 120 MB held at once fits under 2048 MB, not under 256 MB (in any mix of processes).
    assert reported(results["memory_control"]) == 4
    held = reported(results["memory"])
    assert held is None or held < 4, results["memory"]
    assert held is not None or results["memory"][0] == "memory"
