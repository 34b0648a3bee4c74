"""The run folder contract: every file a run writes and reads, named in one place.

    run = RunFolder("outputs/quickstart")
    pairs.write_jsonl(records, run.pairs)          # outputs/quickstart/pairs.jsonl
    run.adapter                                    # outputs/quickstart/train/adapter

Notebooks, `runs`, `report` and the tests use these names instead of string literals, so a
file moves by changing one line here. `RunFolder` is path-like: `Path(run)` is its root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def datagen_turn(store: Path, turn: int) -> Path:
    """The stored futures of one data-generation turn inside a datagen folder."""
    return Path(store) / f"turn_{turn}.parquet"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # --- set-up (runs.prepare)
    @property
    def params(self) -> Path:
        """The resolved parameters every stage reads."""
        return self.root / "params.yaml"

    @property
    def env(self) -> Path:
        """Versions, CPU, memory and GPU of the machine."""
        return self.root / "env.json"

    @property
    def lock(self) -> Path:
        """Held (flock) by the run using the folder; holds that run's PID."""
        return self.root / ".lock"

    def notebook(self, stage: str) -> Path:
        """The executed copy of a stage notebook (`stage` without `.ipynb`), present only once
        the stage finished: it is executed under `running_notebook` and renamed at the end."""
        return self.root / f"{stage}.ipynb"

    def running_notebook(self, stage: str) -> Path:
        """A stage notebook while it executes (hidden: reports and globs never pick it up)."""
        return self.root / f".{stage}.running.ipynb"

    def failed_notebook(self, stage: str) -> Path:
        """The executed copy of a stage that failed, up to the failing cell."""
        return self.root / f"failed_{stage}.ipynb"

    def generations(self, stage: str) -> Path:
        """How many generations a stage sent to a model, per role."""
        return self.root / "generations" / f"{stage}.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # --- 01 user simulators
    @property
    def simulator_conversations(self) -> Path:
        return self.root / "simulator_conversations.parquet"

    @property
    def simulator_stats(self) -> Path:
        return self.root / "simulator_stats.json"

    # --- 02 multiturn-aware reward
    @property
    def futures(self) -> Path:
        """One row per (context, candidate, future) with every term of R*."""
        return self.root / "futures.parquet"

    @property
    def candidates(self) -> Path:
        """One row per candidate with its MR."""
        return self.root / "candidates.parquet"

    # --- 03 data generation and pairs
    @property
    def datagen(self) -> Path:
        """Stored data-generation turns (`turn_<t>.parquet`), resumable."""
        return self.root / "datagen"

    def datagen_turn(self, turn: int) -> Path:
        return datagen_turn(self.datagen, turn)

    @property
    def datagen_futures(self) -> Path:
        return self.root / "datagen_futures.parquet"

    @property
    def datagen_candidates(self) -> Path:
        return self.root / "datagen_candidates.parquet"

    @property
    def datagen_stats(self) -> Path:
        return self.root / "datagen_stats.json"

    @property
    def pairs(self) -> Path:
        """Chosen/rejected pairs, TRL's conversational preference format."""
        return self.root / "pairs.jsonl"

    @property
    def sft(self) -> Path:
        """The chosen conversation paths, for SFT."""
        return self.root / "sft.jsonl"

    # --- 04 training
    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def adapter(self) -> Path:
        return self.train / "adapter"

    @property
    def train_log(self) -> Path:
        return self.train / "train_log.jsonl"

    # --- 05 evaluation
    @property
    def eval_transcripts(self) -> Path:
        return self.root / "eval_transcripts.parquet"

    @property
    def eval_qa(self) -> Path:
        return self.root / "eval_qa.parquet"

    @property
    def metrics(self) -> Path:
        """Table 1 and Table 2 of the run."""
        return self.root / "metrics.json"


@dataclass(frozen=True)
class SweepFolder:
    """A sweep's folder: its run listing and the comparison table of notebook 06."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def listing(self) -> Path:
        """{"sweep_file": ..., "runs": {name: run folder}}."""
        return self.root / "sweep.json"

    @property
    def table(self) -> Path:
        return self.root / "sweep_table.csv"

    @property
    def notebook(self) -> Path:
        return self.root / "06_sweep_report.ipynb"
