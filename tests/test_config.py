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
        ("train:\n  method: ppo\n", "train.method", "must be one of dpo, sft, online_dpo, grpo"),
        ("train:\n  method: grpo\n  group_size: 1\n", "train.group_size", ">= 2 for method grpo"),
        ("train:\n  method: online_dpo\n  group_size: 1\n", "train.group_size", ">= 2"),
        ("train:\n  futures: 0\n", "train.futures", "must be >= 1 or null"),
        ("train:\n  online_rounds: 0\n", "train.online_rounds", "must be >= 1"),
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


# --- hostile and careless params files (issue 18 item 5)

ALIAS_BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
reward: {mu: *g}
"""


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    import time

    start = time.perf_counter()
    with pytest.raises(ParamsError, match=r"bomb.yaml: line 2: .*aliases .*not allowed"):
        config.load(write(tmp_path, ALIAS_BOMB, "bomb.yaml"))
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("reward: {mu: .nan}\n", "reward.mu", "finite"),
        ("reward: {mu: -.inf}\n", "reward.mu", "finite"),
        ("reward: {mu: -1}\n", "reward.mu", ">= 0"),
        ("reward: {lam: .nan}\n", "reward.lam", "finite"),
        ("pairs: {path_lam: .nan}\n", "pairs.path_lam", "finite"),
        ("pairs: {path_lam: -1.0e-3}\n", "pairs.path_lam", ">= 0"),
        ("pairs: {min_gap: .inf}\n", "pairs.min_gap", "finite"),
        ("train: {epochs: .inf}\n", "train.epochs", "finite"),
        ("train: {epochs: 1.0e9}\n", "train.epochs", "(0, 1000]"),
        ("train: {learning_rate: .inf}\n", "train.learning_rate", "finite"),
        ("train: {learning_rate: 5}\n", "train.learning_rate", "(0, 1]"),
        ("train: {learning_rate: 1" + "0" * 400 + "}\n", "train.learning_rate", "finite"),
        ("generation: {temperature: .inf}\n", "generation.temperature", "finite"),
        ("generation: {temperature: 1.0e300}\n", "generation.temperature", "[0, 10]"),
        ("generation: {top_p: .nan}\n", "generation.top_p", "finite"),
        ("models: {judge: {timeout_s: .inf}}\n", "models.judge.timeout_s", "finite"),
        ("models: {judge: {timeout_s: 1.0e12}}\n", "models.judge.timeout_s", "(0, 86400]"),
        ("tasks: {holdout_fraction: .nan}\n", "tasks.holdout_fraction", "finite"),
        ("run_name: ..\n", "run_name", "parent"),
        ("run_name: .\n", "run_name", "folder itself"),
        ("run_name: ../x\n", "run_name", "letters"),
    ],
)
def test_impossible_numbers_and_run_names_name_the_key(tmp_path, text, key, words):
    with pytest.raises(ParamsError) as info:
        config.load(write(tmp_path, text))
    message = str(info.value)
    assert "exp.yaml" in message and f"'{key}'" in message and words in message


def test_overrides_are_checked_the_same_way(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    for item, words in [
        ("reward.mu=.nan", "finite"),
        ("run_name=..", "parent"),
        ("seed=[1", "override 'seed=[1'"),
        ("reward.mu=*x", "override"),
    ]:
        with pytest.raises(ParamsError, match="exp.yaml") as info:
            config.load(path, [item])
        assert words in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("seed: 1\n".encode("utf-16"), "UTF-16"),
        ("seed: 1\nrun_name: caf\xe9\n".encode("latin-1"), "line 2: the params file is not UTF-8"),
        (b"- 1\n- 2\n", "expected a mapping of keys at the top level, got list"),
        (b"5\n", "got int 5"),
        (b"seed: [1\n", "not valid YAML"),
        (b"seed: \x07\n", "not valid YAML"),
    ],
)
def test_unreadable_files_are_named_as_such(tmp_path, content, words):
    path = tmp_path / "exp.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match="exp.yaml") as info:
        config.load(path)
    assert words in str(info.value)


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(ParamsError, match="is a directory, not a params file"):
        config.load(tmp_path)
    with pytest.raises(ParamsError, match="params file not found"):
        config.load(tmp_path / "missing.yaml")


def test_a_huge_value_in_an_error_is_shortened(tmp_path):
    path = write(tmp_path, "seed: '" + "x" * 100_000 + "'\n")
    with pytest.raises(ParamsError) as info:
        config.load(path)
    assert "'seed'" in str(info.value) and len(str(info.value)) < 500
