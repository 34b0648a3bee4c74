"""Notebooks are committed clean: no outputs, a `parameters` cell, valid JSON."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs_and_a_parameters_cell(path):
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert not [c for c in code if c.get("outputs")], f"{path.name} has outputs: strip them"
    assert all(c.get("execution_count") is None for c in code), f"{path.name}: execution counts"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    if path.name != "06_sweep_report.ipynb":  # the sweep report takes a sweep folder instead
        assert "params_file" in source and "overrides" in source
