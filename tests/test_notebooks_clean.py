"""Notebooks are committed clean and teach one arc: no outputs, a `parameters` cell, an
"Exercises" markdown cell with solutions after it, and student copies without the solutions."""

import json
from pathlib import Path

import pytest

from collab_utils import notebooks

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs_and_a_parameters_cell(path):
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert not [c for c in code if c.get("outputs")], f"{path.name} has outputs: strip them"
    assert all(c.get("execution_count") is None for c in code), f"{path.name}: execution counts"
    tagged = [c for c in code if "parameters" in tags(c)]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    if path.name != "06_sweep_report.ipynb":  # the sweep report takes a sweep folder instead
        assert "params_file" in source and "overrides" in source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_heading_then_solution_cells_that_the_student_copy_drops(path, tmp_path):
    cells = json.loads(path.read_text())["cells"]
    start = notebooks.exercises_start(cells)
    assert start is not None, f"{path.name}: no markdown cell starting with '## Exercises'"
    solutions = [i for i, c in enumerate(cells) if notebooks.SOLUTION_TAG in tags(c)]
    assert solutions, f"{path.name}: no cell tagged 'solution'"
    assert min(solutions) > start, f"{path.name}: a solution cell comes before the exercises"
    for i in solutions:
        source = "".join(cells[i]["source"])
        code_lines = [
            line
            for line in source.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert cells[i]["cell_type"] == "code" and code_lines, (
            f"{path.name}: solution {i} is no code"
        )
    student = json.loads(notebooks.student_copy(path, tmp_path / path.name).read_text())["cells"]
    assert len(student) == len(cells) - len(solutions)
    assert not any(notebooks.SOLUTION_TAG in tags(c) for c in student)
    assert notebooks.exercises_start(student) == start
