"""`study simulate 30` over three systems (base, proactive, a LoRA adapter) through the real
HTTP interface, `study export`, and notebook 07 headless on that export."""

import json
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from collab_utils import config, models, runs

SMOKE = "params/smoke.yaml"


def overrides(folder) -> list[str]:
    return [
        f"output_dir={folder}",
        f"cache_path={folder / 'cache.sqlite'}",
        "generation.max_new_tokens=8",
    ]


def cli(*words, folder, extra=()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "collab_utils", "study", *words, SMOKE, *extra]
    for item in overrides(folder):
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def simulated_export(tmp_path_factory):
    """30 simulated participants, one message each, then the parquet export."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("study_sim")
    model = AutoModelForCausalLM.from_pretrained(models.resolve("embedded"))
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(folder / "adapter")  # untrained, but real
    db = ["--db", str(folder / "study.sqlite")]
    adapter = ["--adapter", f"trained={folder / 'adapter'}", "--turns", "1"]
    printed = cli("simulate", "30", folder=folder, extra=[*db, *adapter]).stdout
    cli("export", folder=folder, extra=[*db, "--out", str(folder / "export")])
    return folder / "export", printed


def test_30_simulated_participants_over_3_systems_give_10_each(simulated_export):
    export, printed = simulated_export
    assert "30 simulated participants, 30 finished" in printed
    sessions = pd.read_parquet(export / "sessions.parquet")
    messages = pd.read_parquet(export / "messages.parquet")
    systems = pd.read_parquet(export / "systems.parquet").set_index("name")
    assert Counter(sessions["system"]) == {"base": 10, "proactive": 10, "trained": 10}
    assert sessions["simulated"].all() and sessions["finished_at"].notna().all()
    assert sessions["document_rating"].between(1, 10).all()
    assert (sessions["time_spent_s"] > 0).all() and sessions["completion_code"].str.len().eq(
        8
    ).all()
    replies = messages[messages["role"] == "assistant"]
    assert len(replies) == 30 and replies["rating"].between(1, 10).all()
    assert set(systems.index) == {"base", "proactive", "trained"}
    assert systems["fingerprint"].nunique() == 3
    assert json.loads(systems.loc["trained", "detail"])["adapter"].endswith("adapter")
    # the sessions of each system carry that system's fingerprint
    assert (sessions["fingerprint"] == sessions["system"].map(systems["fingerprint"])).all()


def test_notebook_07_runs_headless_on_the_simulated_export(simulated_export, tmp_path):
    export, _ = simulated_export
    notebook = config.project_root() / "notebooks" / "07_human_study.ipynb"
    executed = runs.execute(
        notebook,
        tmp_path / notebook.name,
        {"params_file": SMOKE, "overrides": overrides(tmp_path), "export_dir": str(export)},
    )
    cells = json.loads(executed.read_text())["cells"]
    figures = [
        output
        for cell in cells
        for output in cell.get("outputs", [])
        if "application/vnd.plotly.v1+json" in output.get("data", {})
    ]
    assert len(figures) == 3
    text = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    assert "30 sessions, 30 finished; reference: base" in text
    folder = config.load(SMOKE, overrides(tmp_path)).run_dir / "figures"
    for name in ("study_document_ratings", "study_turn_ratings", "study_time_spent"):
        assert (folder / f"{name}.html").is_file()
