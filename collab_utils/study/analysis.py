"""Statistics and figures of a study export: the panels of the paper's Fig. 7.

    data = load_export("outputs/quickstart/study/export")
    per_system(data["sessions"], "document_rating")        # mean and 95% bootstrap interval
    compare(data["sessions"], "document_rating", "base")   # difference to base, interval, p
    turn_curve(data)                                       # interaction rating against turn

Intervals are percentile bootstraps of the mean over participants; the test of a difference is
a two-sided permutation test of the difference in means, p = (1 + #{|d*| >= |d|}) / (1 + B).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .store import TABLES


def load_export(folder: str | Path) -> dict[str, pd.DataFrame]:
    """The parquet tables written by `study export` (sessions, messages, events, systems)."""
    folder = Path(folder)
    missing = [name for name in TABLES if not (folder / f"{name}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {', '.join(missing)}.parquet: run `study export`")
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """(mean, low, high): the mean and its percentile bootstrap interval (NaN when empty)."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def permutation_test(a, b, *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of mean(a) - mean(b) under random relabelling of the pooled values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return np.nan
    observed = abs(a.mean() - b.mean())
    pooled = np.concatenate([a, b])
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(pooled, (n_perm, 1)), axis=1)
    diffs = np.abs(shuffled[:, : len(a)].mean(axis=1) - shuffled[:, len(a) :].mean(axis=1))
    return float((1 + np.sum(diffs >= observed - 1e-12)) / (1 + n_perm))


def per_system(
    sessions: pd.DataFrame, column: str, *, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """n, mean and bootstrap interval (95% by default) of `column` per system."""
    rows = []
    for system, group in sessions.groupby("system", sort=True):
        mean, low, high = bootstrap_ci(group[column], level=level, seed=seed)
        rows.append({"system": system, "n": int(group[column].notna().sum()), "mean": mean,
                     "low": low, "high": high})  # fmt: skip
    return pd.DataFrame(rows, columns=["system", "n", "mean", "low", "high"])


def compare(sessions: pd.DataFrame, column: str, reference: str, *, seed: int = 0):
    """Each system against `reference`: difference in means, its bootstrap interval, p-value."""
    groups = {s: g[column].to_numpy(float) for s, g in sessions.groupby("system", sort=True)}
    if reference not in groups:
        raise ValueError(f"no sessions of reference system {reference!r}; have {sorted(groups)}")
    base = groups[reference]
    rng = np.random.default_rng(seed)
    rows = []
    for system, values in groups.items():
        if system == reference:
            continue
        a, b = values[~np.isnan(values)], base[~np.isnan(base)]
        if len(a) == 0 or len(b) == 0:
            low = high = diff = np.nan
        else:
            diff = a.mean() - b.mean()
            boots = rng.choice(a, (2000, len(a))).mean(1) - rng.choice(b, (2000, len(b))).mean(1)
            low, high = np.percentile(boots, [2.5, 97.5])
        rows.append({"system": system, "vs": reference, "difference": diff, "diff_low": low,
                     "diff_high": high, "p_value": permutation_test(a, b, seed=seed)})  # fmt: skip
    columns = ["system", "vs", "difference", "diff_low", "diff_high", "p_value"]
    return pd.DataFrame(rows, columns=columns)


def turn_ratings(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per rated assistant turn: session, system, simulated, turn, rating."""
    sessions = data["sessions"][["id", "system", "simulated"]]
    messages = data["messages"]
    rated = messages[(messages["role"] == "assistant") & messages["rating"].notna()]
    rated = rated.merge(sessions, left_on="session_id", right_on="id")
    return rated[["session_id", "system", "simulated", "turn", "rating"]].reset_index(drop=True)


def turn_curve(data: dict[str, pd.DataFrame], *, seed: int = 0) -> pd.DataFrame:
    """Mean interaction rating and its bootstrap interval per (system, turn)."""
    rows = []
    for (system, turn), group in turn_ratings(data).groupby(["system", "turn"], sort=True):
        mean, low, high = bootstrap_ci(group["rating"], seed=seed)
        rows.append({"system": system, "turn": int(turn), "n": len(group), "mean": mean,
                     "low": low, "high": high})  # fmt: skip
    return pd.DataFrame(rows, columns=["system", "turn", "n", "mean", "low", "high"])


def _with_intervals(fig, summary: pd.DataFrame, row_key: str = "system"):
    """Mean markers with interval bars over violins, one per system."""
    import plotly.graph_objects as go

    fig.add_trace(
        go.Scatter(
            x=summary[row_key],
            y=summary["mean"],
            mode="markers",
            marker={"color": "black", "symbol": "diamond", "size": 9},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": summary["high"] - summary["mean"],
                "arrayminus": summary["mean"] - summary["low"],
            },  # fmt: skip
            name="mean, 95% CI",
        )
    )
    return fig


def violin(sessions: pd.DataFrame, column: str, title: str, y_label: str):
    """Fig. 7 (a)/(c): the distribution per system, every participant, mean with its CI."""
    import plotly.express as px

    fig = px.violin(sessions, x="system", y=column, color="system", box=True, points="all",
                    title=title, labels={column: y_label},
                    category_orders={"system": sorted(sessions["system"].unique())})  # fmt: skip
    return _with_intervals(fig, per_system(sessions, column))


def turn_figure(curve: pd.DataFrame, title: str = "interaction rating against turn"):
    """Fig. 7 (b): mean rating of the assistant's k-th reply per system, 95% CI bars."""
    import plotly.express as px

    fig = px.line(
        curve.assign(plus=curve["high"] - curve["mean"], minus=curve["mean"] - curve["low"]),
        x="turn", y="mean", color="system", markers=True, error_y="plus", error_y_minus="minus",
        hover_data=["n"], title=title, labels={"mean": "rating (1-10)", "turn": "turn"},
        category_orders={"system": sorted(curve["system"].unique())},
    )  # fmt: skip
    return fig.update_xaxes(dtick=1)
