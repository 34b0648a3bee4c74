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

    args = parser.parse_args(argv)
    from . import config, runs
    from .cache import CacheError

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
        elif args.command == "cache":
            return _cache_command(args.action, args.path)
    except (config.ParamsError, runs.StageError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
