import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import pytest
import yaml

from collab_utils import config, runs


def test_prepare_writes_resolved_params_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_UTILS_ROOT", str(config.project_root()))
    params_file = tmp_path / "tiny.yaml"
    params_file.write_text(f"output_dir: {tmp_path / 'out'}\nreward:\n  lam: 1e-4\n")
    params = runs.prepare(params_file, ["seed=5"])
    assert params.run_dir == tmp_path / "out" / "tiny_seed5"
    resolved = yaml.safe_load(params.run.params.read_text())
    assert resolved["seed"] == 5 and resolved["reward"]["lam"] == 1e-4
    assert resolved["run_name"] == "tiny_seed5"
    env = json.loads(params.run.env.read_text())
    assert env["packages"]["transformers"] == importlib.metadata.version("transformers")
    assert env["cpu_count"] == os.cpu_count() and env["python"] == platform.python_version()


def test_cli_reports_a_bad_params_file_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  windo: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "collab_utils", "run", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "'reward.windo'" in result.stderr
    assert "did you mean 'reward.window'" in result.stderr


def test_sweep_file_is_validated_before_any_run(tmp_path):
    base = config.project_root() / "params" / "smoke.yaml"
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text(f"base: {base}\nvary:\n  reward.window: [1, -1]\n")
    with pytest.raises(config.ParamsError, match=r"bad.yaml: run bad_window-1: .*'reward.window'"):
        runs.load_sweep(bad_value)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"base: {base}\nvary:\n  reward.lamda: [1]\n")
    with pytest.raises(config.ParamsError, match="did you mean 'reward.lam'"):
        runs.load_sweep(unknown)
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"base: {base}\nvaries: {{}}\n")
    with pytest.raises(config.ParamsError, match="unknown sweep keys"):
        runs.load_sweep(typo)
    good = tmp_path / "lam.yaml"
    good.write_text(f"base: {base}\nset: [seed=3]\nvary:\n  reward.lam: [1.0e-4, 1.0e-3]\n")
    _, overrides, names = runs.load_sweep(good)
    assert names == ["lam_lam0.0001", "lam_lam0.001"]
    assert overrides[1] == ["seed=3", "reward.lam=0.001", "run_name=lam_lam0.001"]


def test_runs_with_different_overrides_get_their_own_folders(tmp_path):
    placed = [f"output_dir={tmp_path}", f"cache_path={tmp_path / 'cache.sqlite'}"]
    first = runs.prepare("params/smoke.yaml", [*placed, "reward.lam=1e-4"])
    second = runs.prepare("params/smoke.yaml", [*placed, "reward.lam=2e-4", "seed=3"])
    plain = runs.prepare("params/smoke.yaml", placed)
    assert [p.run_name for p in (first, second, plain)] == [
        "smoke_lam0.0001",
        "smoke_lam0.0002_seed3",
        "smoke",
    ]
    for params, lam in ((first, 1e-4), (second, 2e-4)):
        assert config.load(params.run.params).reward.lam == lam
    named = runs.prepare("params/smoke.yaml", [*placed, "reward.lam=1e-4", "run_name=mine"])
    assert named.run_dir == tmp_path / "mine"


def test_overrides_as_one_papermill_string():
    params = config.load("params/smoke.yaml", "reward.lam=1e-4 seed=4")
    assert (params.reward.lam, params.seed) == (1e-4, 4)
    assert params.overrides == ["reward.lam=0.0001", "seed=4"]


# --- bad sweep files (issue 18 item 5)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"- base: x\n- vary: {}\n", "a sweep file is a mapping"),
        (b"5\n", "got int 5"),
        (b"base: [1\n", "not valid YAML"),
        (b"", "the sweep file is empty"),
        (b"\x00\x01binary", "binary"),
        ("base: x\n".encode("utf-16"), "UTF-16"),
        (b"base: caf\xe9\n", "not UTF-8"),
        (b"a: &a [1, 2]\nbase: *a\n", "aliases"),
        (b"base: [a]\nvary: {seed: [1]}\n", "key 'base'"),
        (b"base: SMOKE\nset: seed=1\nvary: {seed: [1]}\n", "key 'set'"),
        (b"base: SMOKE\nvary: {seed: [1, 2, 1]}\n", "repeats 1: list each value once"),
        (b"base: SMOKE\nvary: {reward.lam: [1.0e-4, 0.0001]}\n", "repeats"),
        (b"base: SMOKE\nvary: {reward.mu: [.nan]}\n", "'reward.mu'"),
        (b"base: SMOKE\nvary: {run_name: [..]}\n", "'run_name'"),
    ],
)
def test_bad_sweep_files_are_named_errors(tmp_path, content, words):
    smoke = str(config.project_root() / "params" / "smoke.yaml").encode()
    path = tmp_path / "sw.yaml"
    path.write_bytes(content.replace(b"SMOKE", smoke))
    with pytest.raises(config.ParamsError, match="sw.yaml") as info:
        runs.load_sweep(path)
    assert words in str(info.value)


def test_a_sweep_directory_is_named(tmp_path):
    with pytest.raises(config.ParamsError, match="is a directory, not a sweep file"):
        runs.load_sweep(tmp_path)


def test_cli_names_a_bad_sweep_file_without_a_traceback(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "collab_utils", "sweep", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "list.yaml" in result.stderr
    assert "Traceback" not in result.stderr
