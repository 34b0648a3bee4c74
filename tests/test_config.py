import pytest

from collab_utils import config
from collab_utils.config import ParamsError


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_run_name_from_file_stem(tmp_path):
    params = config.load(write(tmp_path, "seed: 3\n", "my_run.yaml"))
    assert params.run_name == "my_run"
    assert params.seed == 3
    assert params.reward.window == 2 and params.reward.n_samples == 3
    assert params.run_dir.name == "my_run"


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    params = config.load(write(tmp_path, "reward:\n  lam: 5e-4\n"))
    assert params.reward.lam == pytest.approx(5e-4)


def test_overrides_parse_yaml_scalars(tmp_path):
    path = write(tmp_path, "reward:\n  lam: 5.0e-4\n")
    params = config.load(
        path, ["reward.lam=1e-3", "models.user.backend=agenda", "tasks.limit=null"]
    )
    assert params.reward.lam == pytest.approx(1e-3)
    assert params.models.user.backend == "agenda"
    assert params.tasks.limit is None


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("reward:\n  lamda: 0.1\n", "reward.lamda", "did you mean 'reward.lam'"),
        ("sed: 1\n", "sed", "unknown key"),
        ("reward:\n  window: two\n", "reward.window", "expected int, got str"),
        ("reward:\n  n_samples: 1.5\n", "reward.n_samples", "expected int"),
        ("reward:\n  window: -1\n", "reward.window", "must be >= 0"),
        ("reward:\n  token_budget: 0\n", "reward.token_budget", "must be >= 1 or null"),
        ("tasks:\n  accept_bleu: 2\n", "tasks.accept_bleu", "must be in [0, 1]"),
        ("generation:\n  top_p: 1.5\n", "generation.top_p", "(0, 1]"),
        ("models:\n  user: {backend: gpt}\n", "models.user.backend", "must be one of"),
        ("models:\n  judge: {backend: agenda}\n", "models.judge.backend", "user role only"),
        ("models:\n  user: {backend: openai}\n", "models.user.base_url", "required"),
        ("reward: 3\n", "reward", "expected a mapping"),
        ("run_name: 'a b'\n", "run_name", "letters, digits"),
        ("models:\n  assistant: {load_in_4bit: 'yes'}\n", "models.assistant.load_in_4bit", "bool"),
    ],
)
def test_bad_params_name_the_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        config.load(path)
    message = str(err.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert words in message


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "seed: 1\nreward:\n  lam: [1, 2\n")
    with pytest.raises(ParamsError, match=r"exp.yaml: line \d+: not valid YAML"):
        config.load(path)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ParamsError, match="not key=value"):
        config.load(path, ["reward.lam"])
    with pytest.raises(ParamsError, match="'reward.lamb'"):
        config.load(path, ["reward.lamb=1"])


def test_dumped_params_load_back_equal(tmp_path):
    params = config.load(write(tmp_path, "reward:\n  lam: 1e-4\n"), ["seed=7"])
    dumped = params.dump(tmp_path / "out" / "params.yaml")
    again = config.load(dumped)
    assert again.to_dict() == params.to_dict()


def test_shipped_params_files_are_valid():
    root = config.project_root()
    files = sorted((root / "params").glob("*.yaml"))
    assert files, "no params files shipped"
    for path in files:
        config.load(path)
