"""Table 1 across runs: Base rows once, one trained row per run, named by method."""

from __future__ import annotations

from collab_utils import evaluate


def _row(success: float) -> dict:
    return {"task_success": success, "itr": 0.5, "tokens_k": 0.1, "rounds": 2.0}


def test_across_runs_keeps_base_rows_once_and_each_trained_row():
    tables = {
        "methods_sft": {"Base": _row(0.1), "Proactive Base": _row(0.2), "SFT": _row(0.3)},
        "methods_dpo": {
            "Base": _row(0.9),
            "Proactive Base": _row(0.9),
            "Offline DPO from base": _row(0.4),
        },
        "methods_grpo": {"Base": _row(0.9), "Proactive Base": _row(0.9), "GRPO": _row(0.5)},
    }
    table = evaluate.across_runs(tables)
    assert list(table.index) == ["Base", "Proactive Base", "SFT", "Offline DPO from base", "GRPO"]
    assert table.loc["Base", "task_success"] == 0.1  # from the first run
    assert table.loc["GRPO", "task_success"] == 0.5


def test_across_runs_names_repeated_methods_by_run():
    tables = {
        "lambda_0": {"Base": _row(0.1), "Offline DPO from base": _row(0.3)},
        "lambda_1": {"Base": _row(0.1), "Offline DPO from base": _row(0.4)},
    }
    table = evaluate.across_runs(tables)
    assert list(table.index) == [
        "Base",
        "Offline DPO from base (lambda_0)",
        "Offline DPO from base (lambda_1)",
    ]
    assert "Proactive Base" not in table.index
