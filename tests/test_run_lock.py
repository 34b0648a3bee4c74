"""A run folder is locked while a run uses it, and a stage notebook appears under its final
name only once it finished (issue 18 item 6). The stages here are tiny notebooks in a project
root of their own (COLLAB_UTILS_ROOT), so each test runs in seconds, not minutes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from collab_utils import config, runs
from collab_utils.cache import GenerationCache
from collab_utils.run_folder import RunFolder

SLOW_STAGE = """
import json, os, time
from pathlib import Path
from collab_utils import config
from collab_utils.cache import Entry, GenerationCache
params = config.load(params_file, overrides)
cache = GenerationCache(params.cache_file)
keys = [f"item{i}" for i in range(N)]
found = cache.get_many(keys)
fresh = 0
for key in keys:
    if key in found:
        continue
    time.sleep(DELAY)  # "generating"
    cache.put_many({key: Entry(f"generated {key}", 1, 1)})
    fresh += 1
    if fresh == 3:
        (params.run.root / "progress").write_text(str(os.getpid()))
(params.run.root / "fresh.json").write_text(json.dumps(fresh))
"""


def _project(tmp_path: Path, code: str, n: int = 8, delay: float = 0.4) -> Path:
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('params_file = ""\noverrides = []')
    parameters.metadata["tags"] = ["parameters"]
    body = code.replace("N)", f"{n})").replace("DELAY", str(delay))
    notebook.cells = [parameters, nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "language": "python",
        "display_name": "Python 3",
    }
    nbformat.write(notebook, root / "notebooks" / f"{runs.STAGES[1]}.ipynb")
    (root / "params" / "tiny.yaml").write_text(
        f"run_name: tiny\noutput_dir: {tmp_path / 'out'}\ncache_path: {tmp_path / 'cache.sqlite'}\n"
    )
    return root


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _cli_run(root: Path, **popen):
    env = {**os.environ, "COLLAB_UTILS_ROOT": str(root)}
    command = [sys.executable, "-m", "collab_utils", "run", str(root / "params" / "tiny.yaml")]
    return subprocess.Popen(command, env=env, cwd=root, **popen)


def test_a_second_lock_of_a_folder_names_the_first_pid(tmp_path):
    with runs.locked(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(runs.RunLocked, match=f"in use by another run \\(PID {os.getpid()}\\)"):
            with runs.locked(tmp_path / "run"):
                pass
    with runs.locked(tmp_path / "run"):  # released: taken again
        pass


def test_a_dead_pids_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{dead.pid}\n")
    with runs.locked(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())


def test_second_run_refuses_and_kill_9_leaves_no_half_run_notebook(tmp_path, monkeypatch):
    root = _project(tmp_path, SLOW_STAGE)
    run = RunFolder(tmp_path / "out" / "tiny")
    first = _cli_run(
        root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while not (run / "progress").exists() and first.poll() is None:
        assert time.monotonic() < deadline, "the stage never started generating"
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended early"

    second = _cli_run(root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert f"in use by another run (PID {first.pid})" in err

    # kill -9, mid-stage, the runner and the kernel (which runs in a session of its own)
    kernel = int((run / "progress").read_text())
    os.killpg(first.pid, signal.SIGKILL)
    os.kill(kernel, signal.SIGKILL)
    first.wait()
    while Path(f"/proc/{kernel}").exists() and "Z" not in _state(kernel):
        time.sleep(0.05)
    stage = runs.STAGES[1]
    assert not run.notebook(stage).exists(), "a half-run notebook under its final name"
    assert not run.report.exists()
    assert run.lock.read_text().strip() == str(first.pid)  # a dead PID's lock file is left
    stored = len(GenerationCache(tmp_path / "cache.sqlite"))
    assert 3 <= stored < 8

    monkeypatch.setenv("COLLAB_UTILS_ROOT", str(root))
    runs.run(root / "params" / "tiny.yaml")  # takes the dead run's lock over
    executed = nbformat.read(run.notebook(stage), as_version=4)
    assert all(c.get("execution_count") for c in executed.cells if c.cell_type == "code")
    assert json.loads((run / "fresh.json").read_text()) == 8 - stored  # nothing cached redone
    assert not run.running_notebook(stage).exists() and run.report.is_file()


def test_a_failed_stage_keeps_its_copy_apart_from_the_final_name(tmp_path, monkeypatch):
    root = _project(tmp_path, "raise RuntimeError('stage broke')")
    monkeypatch.setenv("COLLAB_UTILS_ROOT", str(root))
    with pytest.raises(runs.StageError, match="stage broke.*failed_01_user_simulator.ipynb"):
        runs.run(root / "params" / "tiny.yaml")
    run = RunFolder(tmp_path / "out" / "tiny")
    assert not run.notebook(runs.STAGES[1]).exists()
    assert run.failed_notebook(runs.STAGES[1]).is_file()
    assert config.load(run.params).run_name == "tiny"
