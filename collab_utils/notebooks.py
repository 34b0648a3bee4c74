"""Student copies of the notebooks for a course (outputs in git are nbstripout's job: `make`
installs it as a git filter).

    python -m collab_utils.notebooks student notebooks/ outputs/student/

Exercises sit at the end of each stage notebook; their solutions are cells tagged `solution`.
A student copy drops those cells and the outputs, and keeps everything else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .io import write_text

SOLUTION_TAG = "solution"
EXERCISE_MARK = "## Exercises"


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _save(path: Path, notebook: dict) -> Path:
    return write_text(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def _clean(notebook: dict) -> dict:
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
        cell.get("metadata", {}).pop("papermill", None)
    notebook.get("metadata", {}).pop("papermill", None)
    return notebook


def student_copy(source: str | Path, target: str | Path) -> Path:
    """A copy without outputs and without the cells tagged `solution`."""
    notebook = _clean(_load(Path(source)))
    notebook["cells"] = [
        c for c in notebook["cells"] if SOLUTION_TAG not in c.get("metadata", {}).get("tags", [])
    ]
    return _save(Path(target), notebook)


def exercises_start(cells: list[dict]) -> int | None:
    """Index of the markdown cell that opens the exercises, or None."""
    return next(
        (
            i
            for i, c in enumerate(cells)
            if c["cell_type"] == "markdown" and "".join(c["source"]).startswith(EXERCISE_MARK)
        ),
        None,
    )


def up_to_exercises(source: str | Path, target: str | Path) -> Path:
    """A copy that stops before the exercises heading (what a student runs first)."""
    notebook = _load(Path(source))
    stop = exercises_start(notebook["cells"])
    notebook["cells"] = notebook["cells"][:stop]
    return _save(Path(target), notebook)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m collab_utils.notebooks")
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="write student copies (no solutions)")
    student.add_argument("source_dir")
    student.add_argument("target_dir")
    args = parser.parse_args(argv)
    for path in sorted(Path(args.source_dir).glob("*.ipynb")):
        print(student_copy(path, Path(args.target_dir) / path.name))


if __name__ == "__main__":
    main()
