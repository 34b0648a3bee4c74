"""The first screen of `report.html`: what ran, with which models and settings, how long each
stage took, Table 1, Table 2 and the MR scatter, before any code.

Every value is read from the run folder (params.yaml, env.json, metrics.json, the executed
notebooks' papermill metadata, figures/) and escaped: task names and model names come from
files a user may not have written.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from . import config
from .run_folder import RunFolder

SCATTER = "helpfulness_vs_mr"  # notebook 02's figure: single-turn helpfulness against MR
COLUMN_WORDS = {
    "task_success": "task success",
    "itr": "interactivity (ITR)",
    "tokens_k": "tokens (thousands)",
    "rounds": "rounds",
    "clarify_when_ambiguous": "asks when ambiguous",
    "answer_when_clear": "answers when clear",
    "n": "conversations",
}
STYLE = """
.run-summary { font-family: system-ui, sans-serif; max-width: 1400px; margin: 0 auto 2em; }
.run-summary table { border-collapse: collapse; margin: 0.3em 1.5em 1em 0; font-size: 13px; }
.run-summary th, .run-summary td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
.run-summary .panels { display: flex; flex-wrap: wrap; align-items: flex-start; }
.run-summary img { width: 440px; border: 1px solid #eee; }
.run-summary figure { margin: 0 0 1em; }
details.folded-code > summary { cursor: pointer; color: #666; font-size: 12px; }
"""


def changed_settings(params: config.Params) -> list[tuple[str, object, object]]:
    """(dotted key, default, this run's value) for every setting that differs from the schema."""
    ignored = {"run_name", "output_dir", "cache_path"}

    def flat(data: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in data.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(flat(value, f"{name}."))
            elif name not in ignored:
                out[name] = value
        return out

    default = flat(config.Params().to_dict())
    mine = flat(params.to_dict())
    return [
        (key, default.get(key), value) for key, value in mine.items() if default.get(key) != value
    ]


def stage_seconds(notebook) -> float | None:
    """Wall time of an executed notebook (an nbformat node), from the metadata papermill writes."""
    duration = notebook.metadata.get("papermill", {}).get("duration")
    return float(duration) if duration is not None else None


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3g}"
    return html.escape("–" if value is None else str(value))


def _table(caption: str, header: list[str], rows: list[list], escaped: bool = False) -> str:
    """An HTML table; cells are escaped here unless `escaped` says the caller did it."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    show = (lambda v: v if isinstance(v, str) else _cell(v)) if escaped else _cell
    body = "".join("<tr>" + "".join(f"<td>{show(v)}</td>" for v in row) + "</tr>" for row in rows)
    return (
        f'<table class="summary-table"><caption>{html.escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _system_table(caption: str, table: dict) -> str:
    """A metrics.json table ({system: {column: value}}) with its columns named in words and
    each `<column>_sem` written beside its column as ± (the standard error of the mean)."""
    found = list(dict.fromkeys(c for values in table.values() for c in values))
    columns = [c for c in COLUMN_WORDS if c in found]
    columns += [c for c in found if c not in columns and not c.endswith("_sem")]
    header = ["system", *(COLUMN_WORDS.get(c, c.replace("_", " ")) for c in columns)]

    def value(values: dict, column: str) -> str:
        text = _cell(values.get(column))
        sem = values.get(f"{column}_sem")
        return text if sem is None or math.isnan(sem) else f"{text} ± {_cell(sem)}"

    rows = [
        [_cell(system), *(value(values, c) for c in columns)] for system, values in table.items()
    ]
    return _table(caption, header, rows, escaped=True)


def _scatter(run: RunFolder) -> str:
    png = run.figures / f"{SCATTER}.png"
    if png.is_file():
        data = base64.b64encode(png.read_bytes()).decode()
        return (
            f'<figure><img alt="single-turn helpfulness against multiturn-aware reward" '
            f'src="data:image/png;base64,{data}"/><figcaption>Helpfulness against MR per '
            f"candidate (notebook 02; interactive below)</figcaption></figure>"
        )
    return "<p>No PNG of the MR scatter (Chromium absent): see notebook 02 below.</p>"


def summary_html(run_dir: str | Path, times: list[tuple[str, float | None]]) -> str:
    """The summary section placed before the notebooks; `times`: (stage, seconds) per stage."""
    run = RunFolder(run_dir)
    params = config.load(run.params) if run.params.is_file() else None
    env = json.loads(run.env.read_text()) if run.env.is_file() else {}
    metrics = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    models = [
        [role, spec.backend, spec.model, spec.adapter or ""]
        for role, spec in (vars(params.models).items() if params else [])
    ]
    total = sum(t for _, t in times if t is not None)
    machine = f"{env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores"
    if env.get("gpu"):
        machine += f", GPU {env['gpu'].get('name')}"
    tables = [
        _system_table("Table 1: held-out conversations (mean ± s.e.m.)", metrics["table1"])
        if metrics.get("table1")
        else "<p>No Table 1 (the evaluation stage did not run).</p>",
        _system_table("Table 2: ask or answer", metrics["table2"]) if metrics.get("table2") else "",
        '<div class="panels">',
        _table("Models", ["role", "backend", "model", "adapter"], models),
        _table("Wall time per stage", ["stage", "seconds"], times),
        "</div>",
    ]
    parts = [
        f"<h1>CollabLLM run {html.escape(run.root.name)}</h1>",
        f"<p>{len(times)} stages in {total / 60:.1f} min on {html.escape(machine)}; "
        f"commit {html.escape(str(env.get('git_commit') or 'unknown')[:12])}. "
        "The notebooks follow, code folded under <i>code</i>.</p>",
        f'<div class="panels"><div>{"".join(tables)}</div>{_scatter(run)}</div>',
        _table(
            "Settings that differ from the defaults",
            ["key", "default", "this run"],
            changed_settings(params) if params else [],
        ),  # fmt: skip
    ]
    return f'<style>{STYLE}</style><section class="run-summary" id="run-summary">{"".join(parts)}</section>'
