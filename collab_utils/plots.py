"""Plotly figures that work in JupyterLab, under papermill and in the static report.

`setup()` picks a renderer that shows figures natively in JupyterLab and also leaves an HTML
copy with plotly.js inside, so an executed notebook converted to HTML stays interactive offline.
`save(fig, run_dir, name)` writes figures/<name>.html (plotly.min.js beside it, no network
needed), and a PNG when a browser is present.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from .io import atomic_write
from .run_folder import RunFolder

_png_warned = False


def setup() -> None:
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"
    pio.templates.default = "plotly_white"


def browser() -> str | None:
    """A Chrome/Chromium executable for kaleido's PNG export, if one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def save(fig, run_dir: str | Path, name: str) -> dict[str, Path]:
    """Write figures/<name>.html (always) and figures/<name>.png (when a browser exists)."""
    global _png_warned
    folder = RunFolder(run_dir).figures
    written = {
        "html": atomic_write(
            folder / f"{name}.html",
            # plotly.min.js once per folder, beside the figures: offline and small
            lambda tmp: fig.write_html(tmp, include_plotlyjs="directory", full_html=True),
        )
    }
    if browser() is None:
        if not _png_warned:
            warnings.warn(
                "no Chromium found: figures are saved as HTML only (apt install chromium)"
            )
            _png_warned = True
        return written
    try:
        written["png"] = atomic_write(
            folder / f"{name}.png", lambda tmp: fig.write_image(tmp, format="png", scale=2)
        )
    except Exception as exc:  # kaleido depends on a browser it starts itself
        if not _png_warned:
            warnings.warn(f"PNG export failed ({type(exc).__name__}: {exc}); HTML only")
            _png_warned = True
    return written
