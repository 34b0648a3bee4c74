"""Issue 13's experiment without the notebooks: data generation, pairs, training, evaluation.

    python -m collab_utils.ask_experiment params/ask_laptop.yaml [--set reward.window=0 ...]
    python -m collab_utils.ask_experiment --sweep params/sweeps/ask_window.yaml

The same library calls as notebooks 03-05 (datagen.generate, pairs.build_pairs,
train.train_dpo, evaluate.evaluate + evaluate.ask_metrics), writing the same run-folder
files (pairs.jsonl, adapter, eval transcripts, metrics.json), plus `pair_kinds` in
datagen_stats.json: how many chosen/rejected replies were asking or answering, by candidate
kind. Everything is cached, so a second run only re-reads (warm).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from . import config, datagen, evaluate, metrics, pairs, runs, session, simulate, train
from .io import write_json, write_parquet
from .run_folder import SweepFolder


def pair_kinds(pair_list: list[dict]) -> dict:
    """Counts of (side, candidate kind, move) over pairs; the move is read off the text after
    the fact (metrics.clarify_or_answer): it never enters pair building."""
    counts: dict[str, int] = {}
    for pair in pair_list:
        for side in ("chosen", "rejected"):
            text = pair[side][-1]["content"] if isinstance(pair[side], list) else pair[side]
            key = f"{side}/{pair[f'{side}_kind']}/{metrics.clarify_or_answer(text)}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def run(params_file: str, overrides: list[str] | None = None) -> dict:
    started = time.perf_counter()
    params, run_folder = session.start(params_file, overrides)
    params.dump(run_folder.params)
    roles = session.load_roles(params)
    train_tasks, heldout = session.task_splits(params)
    timing = {}

    data = datagen.generate(train_tasks, roles, params, run_folder.datagen, progress=False)
    write_parquet(run_folder.datagen_futures, data.futures)
    write_parquet(run_folder.datagen_candidates, data.candidates)
    pair_list, report = pairs.build_pairs(
        data.candidates, min_gap=params.pairs.min_gap, pairs_per_turn=params.pairs.pairs_per_turn
    )
    pairs.write_jsonl(pair_list, run_folder.pairs)
    kinds = pair_kinds(pair_list)
    write_json(run_folder.datagen_stats, {"pairs": report, "pair_kinds": kinds})
    timing["datagen_s"] = time.perf_counter() - started

    result = train.train_dpo(
        pair_list,
        model=params.models.assistant.model,
        train_params=params.train,
        output_dir=run_folder.train,
        seed=params.seed,
        reuse=True,
    )
    timing["train_s"] = time.perf_counter() - started - timing["datagen_s"]

    trained = session.load_roles(params, adapter=result.adapter_dir).assistant
    systems = {
        evaluate.BASE: roles.assistant,
        evaluate.PROACTIVE: evaluate.Prompted(roles.assistant, simulate.PROACTIVE_SYSTEM_PROMPT),
        evaluate.OFFLINE_DPO: trained,
    }
    transcripts = evaluate.evaluate(
        heldout,
        systems,
        user=roles.user,
        judge=roles.judge if params.reward.mu > 0 else None,
        rounds=params.eval.rounds,
        seed=params.seed,
        sampling=params.sampling(),
        judge_max_new_tokens=params.generation.judge_max_new_tokens,
        judging=params.judge,
    )
    write_parquet(run_folder.eval_transcripts, transcripts)
    intervals = evaluate.ask_metrics(transcripts, heldout, seed=params.seed)
    timing["total_s"] = time.perf_counter() - started
    out = {
        "heldout_tasks": [t.id for t in heldout],
        "train_tasks": len(train_tasks),
        "pairs": report,
        "pair_kinds": kinds,
        "intervals": intervals,
        "timing": timing,
    }
    write_json(run_folder.metrics, out)
    return out


def sweep(sweep_file: str) -> Path:
    """Every run of a sweep file (`runs.load_sweep`), then notebook 06 on the sweep folder."""
    base, overrides, names = runs.load_sweep(sweep_file)
    run_dirs = {}
    for name, override in zip(names, overrides):
        out = run(str(base), override)
        run_dirs[name] = str(config.load(base, override).run_dir)
        _print(out)
    first = config.load(base, overrides[0])
    folder = SweepFolder(config.resolve_path(first.output_dir) / Path(sweep_file).stem)
    write_json(folder.listing, {"sweep_file": str(sweep_file), "runs": run_dirs})
    notebook = config.project_root() / "notebooks" / folder.notebook.name
    runs.execute(notebook, folder.notebook, {"sweep_dir": str(folder.root)})
    return folder.root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params_file", nargs="?")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--sweep", help="a sweep file instead of one params file")
    args = parser.parse_args(argv)
    if args.sweep:
        print(sweep(args.sweep))
        return
    _print(run(args.params_file, args.overrides))


def _print(out: dict) -> None:
    table = pd.DataFrame(
        {
            system: {
                metric: f"{v['mean']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"
                for metric, v in values.items()
            }
            for system, values in out["intervals"].items()
        }
    ).T
    print(json.dumps({k: out[k] for k in ("pairs", "pair_kinds", "timing")}, indent=1))
    print(table.to_string())


if __name__ == "__main__":
    main()
