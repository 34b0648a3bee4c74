"""`python -m collab_utils study ...`: serve the study page, export its data, simulate it.

    python -m collab_utils study PARAMS.yaml [--port N]          serve the participant page
    python -m collab_utils study export PARAMS.yaml [--out DIR]  the database as parquet
    python -m collab_utils study simulate N PARAMS.yaml          N simulated participants

Options go after the words; `--set key=value` overrides parameters as for `run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = "PARAMS.yaml | export PARAMS.yaml | simulate N PARAMS.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="+", metavar="ARGS", help=USAGE)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a parameter (repeatable)")  # fmt: skip
    parser.add_argument("--db", help="the study database (default <run>/study/study.sqlite)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--tasks", default="builtin:doc", help="task source for participants")
    parser.add_argument("--systems", help="comma-separated: base,proactive,trained or NAMEs")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="another system: a LoRA adapter (repeatable)")  # fmt: skip
    parser.add_argument("--consent", help="a text file with the consent text to show")
    parser.add_argument("--admin-token", help="default: $COLLAB_STUDY_ADMIN_TOKEN or random")
    parser.add_argument("--max-turns", type=int, default=20, help="messages per participant")
    parser.add_argument("--batch-wait-ms", type=float, default=50.0,
                        help="how long a batch waits for more requests (hf backend)")  # fmt: skip
    parser.add_argument("--turns", type=int, default=3, help="simulate: messages each")
    parser.add_argument("--out", help="export: folder (default <run>/study/export)")


def _command(words: list[str]) -> tuple[str, str, int]:
    """(command, params file, n) from the positional words."""
    if words[0] == "export" and len(words) == 2:
        return "export", words[1], 0
    if words[0] == "simulate" and len(words) == 3 and words[1].isdigit():
        return "simulate", words[2], int(words[1])
    if len(words) == 1 and words[0] not in ("export", "simulate"):
        return "serve", words[0], 0
    raise ValueError(f"expected `study {USAGE}`; got `study {' '.join(words)}`")


def _adapters(items: list[str]) -> dict[str, str]:
    adapters = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r}: expected NAME=PATH")
        adapters[name] = path
    return adapters


def run(args: argparse.Namespace) -> int:
    """Execute a parsed `study` command; errors are printed, not raised."""
    from .. import config
    from .participants import SimulationError, simulate
    from .server import open_study, running, serve, study_folder
    from .store import Store, StoreError

    try:
        command, params_file, n = _command(args.words)
        params = config.load(params_file, args.overrides)
        if command == "export":
            db = Path(args.db or study_folder(params) / "study.sqlite")
            if not db.is_file():
                raise ValueError(f"no study database at {db}: serve or simulate the study first")
            out = Path(args.out or study_folder(params) / "export")
            for path in Store(db).export(out).values():
                print(path)
            return 0
        adapters = _adapters(args.adapter)
        names = args.systems.split(",") if args.systems else None
        study = open_study(
            params,
            db=args.db,
            task_source=args.tasks,
            systems=names,
            adapters=adapters,
            consent=Path(args.consent).read_text() if args.consent else None,
            admin_token=args.admin_token,
            max_turns=args.max_turns,
            batch_wait_s=args.batch_wait_ms / 1000,
        )
        if command == "serve":
            serve(study, args.host, args.port)
            return 0
        with running(study.app(), args.host, 0) as url:
            result = simulate(study, url, n, turns=args.turns)
        study.close()
        print(f"{len(result['sessions'])} simulated participants, {result['finished']} finished, "
              f"{result['midpoint_ratings']} midpoint ratings -> {study.store.path}")  # fmt: skip
        return 0
    except (ValueError, OSError, StoreError, SimulationError, config.ParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
