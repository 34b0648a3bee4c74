"""`report.html`: a run's executed notebooks as one HTML page, plotly figures interactive.

The executed notebooks are concatenated (a heading per stage) and exported once with
nbconvert; plotly outputs carry their own plotly.js, so the page works offline.
"""

from __future__ import annotations

from pathlib import Path

from .io import write_text


def build(run_dir: str | Path, notebooks: list[Path] | None = None) -> Path:
    """Write <run_dir>/report.html from the executed stage notebooks of the run folder."""
    import nbformat
    from nbconvert import HTMLExporter

    run_dir = Path(run_dir)
    notebooks = notebooks or sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{run_dir}: no executed notebooks to report")
    merged = nbformat.v4.new_notebook()
    merged.cells.append(nbformat.v4.new_markdown_cell(f"# CollabLLM run `{run_dir.name}`"))
    for path in notebooks:
        notebook = nbformat.reads(Path(path).read_text(), as_version=4)
        merged.metadata = merged.metadata or notebook.metadata
        merged.cells.append(nbformat.v4.new_markdown_cell(f"# Stage: {Path(path).stem}"))
        merged.cells.extend(notebook.cells)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": run_dir.name}})
    return write_text(run_dir / "report.html", body)
