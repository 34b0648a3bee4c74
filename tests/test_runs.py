import json
import subprocess
import sys

import yaml

from collab_utils import config, runs


def test_prepare_writes_resolved_params_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_UTILS_ROOT", str(config.project_root()))
    params_file = tmp_path / "tiny.yaml"
    params_file.write_text(f"output_dir: {tmp_path / 'out'}\nreward:\n  lam: 1e-4\n")
    params = runs.prepare(params_file, ["seed=5"])
    assert params.run_dir == tmp_path / "out" / "tiny"
    resolved = yaml.safe_load((params.run_dir / "params.yaml").read_text())
    assert resolved["seed"] == 5 and resolved["reward"]["lam"] == 1e-4
    assert resolved["run_name"] == "tiny"
    env = json.loads((params.run_dir / "env.json").read_text())
    assert env["packages"]["transformers"].startswith("5.")
    assert env["cpu_count"] >= 1 and "gpu" in env and env["python"].startswith("3.")


def test_cli_reports_a_bad_params_file_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  windo: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "collab_utils", "run", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "'reward.windo'" in result.stderr
    assert "did you mean 'reward.window'" in result.stderr
