"""The whole pipeline through papermill with params/smoke.yaml: run, kill and resume, sweep,
and the report in a real headless Chromium."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from collab_utils import config, evaluate, runs
from collab_utils.cache import GenerationCache
from collab_utils.run_folder import RunFolder, SweepFolder

pytestmark = pytest.mark.slow
SMOKE = "params/smoke.yaml"
STAGES = [f"{s}.ipynb" for s in runs.STAGES]


def isolated(folder: Path) -> list[str]:
    """Overrides that put a run and its generation cache in `folder`."""
    return [f"output_dir={folder}", f"cache_path={folder / 'cache.sqlite'}"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    return RunFolder(runs.run(SMOKE, isolated(folder))), folder


@pytest.mark.timeout(1500)  # the first user of the module fixture also pays for the smoke run
def test_smoke_run_goes_through_every_stage(smoke_run):
    run, _ = smoke_run
    files = [run.notebook(s) for s in runs.STAGES]
    for path in [*files, run.params, run.env, run.report, run.pairs, run.sft]:
        assert path.is_file(), path
    assert (run.adapter / "adapter_config.json").is_file()
    metrics = json.loads(run.metrics.read_text())
    systems = {evaluate.BASE, evaluate.PROACTIVE, evaluate.OFFLINE_DPO}
    assert set(metrics["table1"]) == systems
    for numbers in metrics["table1"].values():
        assert 0 <= numbers["task_success"] <= 1 and numbers["tokens_k"] > 0
        assert 1 <= numbers["rounds"] <= 2
    assert set(metrics["table2"]) == systems
    assert metrics["token_counter"] == "embedded" and metrics["judge"]["sees_goal"] is False
    pairs = [json.loads(line) for line in run.pairs.read_text().splitlines()]
    min_gap = config.load(run.params).pairs.min_gap
    assert pairs and all(p["gap"] >= min_gap and p["gap"] > 0 for p in pairs)
    log = pd.read_json(run.train_log, lines=True)
    assert log["loss"].notna().any()


def _read_outputs(run: RunFolder) -> dict:
    return {
        "pairs": run.pairs.read_text(),
        "candidates": pd.read_parquet(run.datagen_candidates)[
            ["task_id", "turn", "candidate", "response", "mr"]
        ],
        "metrics": json.loads(run.metrics.read_text()),
    }


@pytest.mark.timeout(1500)  # a run killed in stage 03, then a full resumed run
def test_killed_run_resumes_with_same_results_and_no_repeated_generation(smoke_run, tmp_path):
    reference, reference_folder = smoke_run
    overrides = isolated(tmp_path)
    command = [sys.executable, "-m", "collab_utils", "run", SMOKE]
    for item in overrides:
        command += ["--set", item]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed = RunFolder(tmp_path / "smoke")
    marker = killed.datagen_turn(0)
    deadline = time.monotonic() + 1200
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marker.exists(), "the run never reached the data-generation stage"
    # the runner and every process under it: the notebook kernel runs in a session of its own,
    # and an orphaned kernel would go on writing generations for a moment
    kernels = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    for child in kernels:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()
    psutil.wait_procs(kernels, timeout=30)
    assert not killed.metrics.exists()
    stored_before = len(GenerationCache(tmp_path / "cache.sqlite"))

    run = RunFolder(runs.run(SMOKE, overrides))
    generated = {
        stage: sum(json.loads(run.generations(stage).read_text()).values()) for stage in runs.STAGES
    }
    assert len(generated) == len(runs.STAGES) == 6
    before_datagen = ("00_case_study", "01_user_simulator", "02_multiturn_reward")
    assert [generated[stage] for stage in before_datagen] == [0, 0, 0]
    # everything the restarted run generated is new: nothing stored before was made again
    stored_after = len(GenerationCache(tmp_path / "cache.sqlite"))
    assert sum(generated.values()) == stored_after - stored_before
    again, reference = _read_outputs(run), _read_outputs(reference)
    assert again["pairs"] == reference["pairs"]
    pd.testing.assert_frame_equal(again["candidates"], reference["candidates"])
    assert again["metrics"]["table1"] == reference["metrics"]["table1"]
    assert len(GenerationCache(tmp_path / "cache.sqlite")) == len(
        GenerationCache(reference_folder / "cache.sqlite")
    )


def test_lambda_sweep_reuses_every_rollout(smoke_run, tmp_path):
    _, folder = smoke_run
    sweep_file = tmp_path / "lam.yaml"
    shared = [*isolated(tmp_path), "pairs.path_lam=5.0e-4"]
    shutil.copy(folder / "cache.sqlite", tmp_path / "cache.sqlite")  # the smoke run's cache
    sweep_file.write_text(
        f"base: {config.resolve_path(SMOKE)}\nset: {json.dumps(shared)}\n"
        "vary:\n  reward.lam: [5.0e-4, 1.0e-3, 2.0e-3]\n"
    )
    sweep = SweepFolder(runs.sweep(sweep_file))
    listing = json.loads(sweep.listing.read_text())["runs"]
    assert len(listing) == 3
    lams = []
    for run in map(RunFolder, listing.values()):
        counts = json.loads(run.generations("03_preference_pairs").read_text())
        assert counts == {"assistant": 0, "user": 0, "judge": 0}, run.root.name
        lams.append(config.load(run.params).reward.lam)
    assert lams == [5e-4, 1e-3, 2e-3]
    table = pd.read_csv(sweep.table)
    assert len(table) == 3 and (table["rollout_generations"] == 0).all()
    assert sweep.notebook.is_file()


def test_report_inlines_plotly_js_once(smoke_run):
    from collab_utils import report

    run, _ = smoke_run
    bundles = sum(
        report.is_plotly_bundle(output)
        for stage in runs.STAGES
        for cell in json.loads(run.notebook(stage).read_text())["cells"]
        for output in cell.get("outputs", [])
    )
    assert bundles >= 2  # each executed notebook with a figure carries its own copy
    assert run.report.read_text().count(report.PLOTLY_BUNDLE) == 1


def test_report_renders_every_figure_in_headless_chromium(smoke_run):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    run, _ = smoke_run
    expected = sum(
        1
        for stage in runs.STAGES
        for cell in json.loads(run.notebook(stage).read_text())["cells"]
        for output in cell.get("outputs", [])
        if "application/vnd.plotly.v1+json" in output.get("data", {})
    )
    assert expected >= 5
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(run.report.as_uri(), wait_until="load")
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}",
            timeout=60_000,
        )
        rendered = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        browser.close()
    assert rendered == expected
    assert errors == []


FIRST_SCREEN = """() => {
  const code = document.querySelector('.jp-CodeCell');
  const codeTop = code.getBoundingClientRect().top + window.scrollY;
  const above = (el) => el.getBoundingClientRect().bottom + window.scrollY <= codeTop;
  const onScreen = (el) => el.getBoundingClientRect().top < window.innerHeight;
  const captions = [...document.querySelectorAll('#run-summary table caption')];
  const figures = [...document.querySelectorAll('#run-summary figure img')];
  return {
    tables_above_code: captions.filter((c) => above(c.parentElement)).map((c) => c.textContent),
    tables_on_first_screen: captions.filter(onScreen).map((c) => c.textContent),
    figures_above_code: figures.filter((f) => above(f) && f.naturalWidth > 0).length,
    folded: [...document.querySelectorAll('details.folded-code')].filter((d) => !d.open).length,
    code_cells: document.querySelectorAll('.jp-CodeCell').length,
    visible_code: [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-editor')]
      .filter((e) => e.checkVisibility()).length,
    mathml: document.querySelectorAll('math').length,
    raw_latex: document.body.innerText.includes('R_\\\\text'),
  };
}"""


def test_report_opens_with_a_summary_screen_and_folded_code(smoke_run):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    run, _ = smoke_run
    metrics = json.loads(run.metrics.read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(run.report.as_uri(), wait_until="load")
        page.screenshot(path=run / "report_first_screen.png")
        seen = page.evaluate(FIRST_SCREEN)
        browser.close()
    expected = ["Table 1"] + (["Table 2"] if metrics["table2"] else [])
    for name in expected:
        assert any(t.startswith(name) for t in seen["tables_above_code"]), seen
        assert any(t.startswith(name) for t in seen["tables_on_first_screen"]), seen
    assert any(t.startswith("Settings that differ") for t in seen["tables_above_code"]), seen
    assert seen["figures_above_code"] >= 1, seen
    assert seen["folded"] == seen["code_cells"] > 0 and seen["visible_code"] == 0, seen
    assert seen["mathml"] > 0 and not seen["raw_latex"], seen
    assert (run / "report_first_screen.png").stat().st_size > 10_000


def test_student_copies_drop_solutions_and_run_up_to_the_exercises(smoke_run, tmp_path):
    from collab_utils import notebooks

    run, _ = smoke_run
    folder = config.project_root() / "notebooks"
    for name in STAGES:
        source = json.loads((folder / name).read_text())
        solutions = [c for c in source["cells"] if "solution" in c["metadata"].get("tags", [])]
        assert solutions, f"{name} has no solution cells"
        student = notebooks.student_copy(folder / name, tmp_path / "student" / name)
        cells = json.loads(student.read_text())["cells"]
        assert len(cells) == len(source["cells"]) - len(solutions)
        assert not any("solution" in c["metadata"].get("tags", []) for c in cells)
        assert any("## Exercises" in "".join(c["source"]) for c in cells)
        head = notebooks.up_to_exercises(student, tmp_path / "head" / name)
        runs.execute(
            head,
            tmp_path / "executed" / name,
            {"params_file": str(run.params), "overrides": []},
        )


def test_case_study_notebook_runs_in_the_pipeline_and_checks_fig6(smoke_run):
    run, _ = smoke_run
    outputs = "".join(
        "".join(o.get("text", "")) for c in json.loads(run.notebook("00_case_study").read_text())["cells"]
        for o in c.get("outputs", [])
    )  # fmt: skip
    assert "Fig. 6 ordering holds" in outputs


def test_papermill_cli_takes_overrides_as_one_string(smoke_run, tmp_path):
    """As a papermill user writes it: `-p overrides "reward.lam=1e-4"`."""
    _, folder = smoke_run
    shutil.copy(folder / "cache.sqlite", tmp_path / "cache.sqlite")  # generations are cached
    overrides = f"reward.lam=1e-4 output_dir={tmp_path} cache_path={tmp_path / 'cache.sqlite'}"
    notebook = config.project_root() / "notebooks" / "02_multiturn_reward.ipynb"
    command = [sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb")]
    command += ["-p", "params_file", SMOKE, "-p", "overrides", overrides, "--cwd"]
    command += [str(config.project_root())]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    run = RunFolder(tmp_path / "smoke_lam0.0001")
    assert config.load(run.params).reward.lam == 1e-4
    assert (pd.read_parquet(run.futures).lam == 1e-4).all()
