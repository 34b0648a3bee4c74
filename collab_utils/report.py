"""`report.html`: a run's executed notebooks as one HTML page, plotly figures interactive.

The page opens with a one-screen summary (`report_summary`: what ran, models, changed
settings, time per stage, Table 1, Table 2, the MR scatter); then the executed notebooks,
concatenated (a heading per stage) and exported once with nbconvert, code folded under
"code". Each notebook carries its own copy of plotly.js (about 4.8 MB); the page keeps the
first and drops the others, so it works offline at the size of one copy. The page loads
nothing from the network: require.js and the widget manager are not needed, MathJax is left
out and equations are converted to MathML (latex2mathml), which browsers draw natively.
Progress bars and warnings (stderr) are left out: they are frozen noise in a static page.

Text from task files and models reaches the page escaped (chatview, pandas, plotly all escape).
As a second wall the page carries a Content-Security-Policy that lets only the scripts the
report itself needs run (plotly.js, the figures, nbconvert's own), by hash: an event handler
(`onerror=`), a `javascript:` link or a `<script>` that slipped into an output does not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path

from .io import write_text
from .report_summary import stage_seconds, summary_html
from .run_folder import RunFolder

NO_SCRIPT = "data:text/javascript,"
REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>')
EMPTY_SCRIPT = re.compile(r'<script[^>]*\ssrc="data:text/javascript,"[^>]*>\s*</script>')
INLINE_SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.DOTALL)
# What the report's own scripts begin with: plotly.js, its config, each figure, and the
# scripts of nbconvert's lab template (MathJax config, mermaid diagrams).
OWN_SCRIPTS = (
    "/**\n* plotly.js v",
    "window.PlotlyConfig",
    "window.PLOTLYENV",
    "if (window.MathJax",
    "init_mathjax",
    'document.addEventListener("DOMContentLoaded", async () => {\n    const diagrams',
)


NONE = "'none'"
BODY_OPEN = re.compile(r"<body[^>]*>")


def with_csp(page: str) -> str:
    """`page` with a Content-Security-Policy allowing only the report's own scripts."""
    page = EMPTY_SCRIPT.sub("", REMOTE_SCRIPT.sub("", page))
    hashes = []
    for match in INLINE_SCRIPT.finditer(page):
        if "src=" in match["attrs"] or not match["body"].lstrip().startswith(OWN_SCRIPTS):
            continue
        digest = hashlib.sha256(match["body"].encode()).digest()
        hashes.append(f"'sha256-{base64.b64encode(digest).decode()}'")
    policy = (
        f"script-src {' '.join(dict.fromkeys(hashes)) or NONE}; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-src 'none'"
    )
    meta = f'<meta http-equiv="Content-Security-Policy" content="{policy}"/>'
    return page.replace("<head>", f"<head>\n{meta}", 1)


PLOTLY_BUNDLE = "* plotly.js v"  # the banner of the library that the notebook renderer inlines


def is_plotly_bundle(output) -> bool:
    """Whether a notebook output is the inlined plotly.js library."""
    html = output.get("data", {}).get("text/html", "")
    return PLOTLY_BUNDLE in ("".join(html) if isinstance(html, list) else html)


def drop_repeated_plotly_bundles(cells) -> None:
    """Remove every inlined plotly.js but the first, which precedes all the figures."""
    seen = False
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if is_plotly_bundle(output):
                if seen:
                    continue
                seen = True
            kept.append(output)
        cell["outputs"] = kept


WIDGET = "application/vnd.jupyter.widget-view+json"
FOLDED_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block input_group -%}
<details class="folded-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
"""
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?=[^\s$])([^$\n]+?)(?<=\S)\$(?![\w$])")


def drop_noise(cells) -> None:
    """Remove stderr streams (progress bars, warnings) and widget views from the outputs."""
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"] = [
            output
            for output in cell.get("outputs", [])
            if not (output.get("output_type") == "stream" and output.get("name") == "stderr")
            and WIDGET not in output.get("data", {})
        ]


def latex_to_mathml(markdown: str) -> str:
    """`$...$` and `$$...$$` in a markdown cell as MathML; text that fails to parse stays."""
    from latex2mathml.converter import convert

    def render(match, display):
        try:
            return convert(match[1].strip(), display=display)
        except Exception:  # not LaTeX after all (a price, a shell variable): keep the text
            return match[0]

    markdown = DISPLAY_MATH.sub(lambda m: render(m, "block"), markdown)
    return INLINE_MATH.sub(lambda m: render(m, "inline"), markdown)


def _text(name: str) -> str:
    """`name` as literal text in a markdown cell: HTML and markdown syntax escaped."""
    return re.sub(r"([\\`*_\[\]#!|~])", r"\\\1", html.escape(name))


def build(run_dir: str | Path, notebooks: list[Path] | None = None) -> Path:
    """Write <run_dir>/report.html from the executed stage notebooks of the run folder."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    run = RunFolder(run_dir)
    run_dir = run.root
    notebooks = notebooks or sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{run_dir}: no executed notebooks to report")
    merged = nbformat.v4.new_notebook()
    times = []
    for path in notebooks:
        notebook = nbformat.reads(Path(path).read_text(), as_version=4)
        times.append((Path(path).stem, stage_seconds(notebook)))
        merged.metadata = merged.metadata or notebook.metadata
        merged.cells.append(nbformat.v4.new_markdown_cell(f"# Stage: {_text(Path(path).stem)}"))
        for index, cell in enumerate(notebook.cells):
            cell.id = f"{Path(path).stem[:2]}-{index}"  # stages reuse ids; the page needs one each
            merged.cells.append(cell)
    drop_repeated_plotly_bundles(merged.cells)
    drop_noise(merged.cells)
    for cell in merged.cells:
        if cell.cell_type == "markdown":
            cell.source = latex_to_mathml(cell.source)
    merged.metadata.pop("widgets", None)  # progress bars: text is enough, no widget manager
    exporter = HTMLExporter(
        template_name="lab",
        template_file="folded.html.j2",
        extra_loaders=[jinja2.DictLoader({"folded.html.j2": FOLDED_TEMPLATE})],
        require_js_url=NO_SCRIPT,
        mathjax_url=NO_SCRIPT,
    )
    body, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": run_dir.name}})
    body = BODY_OPEN.sub(lambda m: m[0] + summary_html(run, times), body, count=1)
    return write_text(run.report, with_csp(body))
