"""Command line: `python -m collab_utils {run,sweep,bench,provision} ...`."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m collab_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the stage notebooks for a params file")
    run.add_argument("params", help="a params YAML file, e.g. params/quickstart.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (repeatable)",
    )

    sweep = commands.add_parser("sweep", help="one run per value of a sweep file, then a report")
    sweep.add_argument("sweep_file", help="e.g. params/sweeps/lambda.yaml")

    bench = commands.add_parser("bench", help="measure speed ratios, print and write JSON")
    bench.add_argument("--out", default="outputs/bench.json", help="where to write the JSON")
    bench.add_argument("--no-server", action="store_true", help="skip the llama.cpp server")

    commands.add_parser("provision", help="convert the embedded model once (GGUF -> safetensors)")

    args = parser.parse_args(argv)
    from . import config, runs

    try:
        if args.command == "run":
            print(f"run folder: {runs.run(args.params, args.overrides)}")
        elif args.command == "sweep":
            print(f"sweep folder: {runs.sweep(args.sweep_file)}")
        elif args.command == "bench":
            from .bench import run_bench

            run_bench(args.out, with_server=not args.no_server)
        elif args.command == "provision":
            from .models import provision_embedded

            print(f"embedded model: {provision_embedded()}")
    except (config.ParamsError, runs.StageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
