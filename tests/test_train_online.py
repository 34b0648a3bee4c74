"""Online DPO (rounds of sample -> MR -> DPO) and GRPO with MR as the reward, on CPU with the
embedded model on smoke-sized data: two code tasks, G = 2 responses per context, S = 2 futures
of one round, the agenda user and the embedded judge, every generation through a fresh cache.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from collab_utils import config, evaluate, llm, models, session, simulate, train, train_rewards
from collab_utils.config import ParamsError, TrainParams
from collab_utils.train_memory import cpu_threads

SMOKE = [
    "generation.max_new_tokens=24",
    "train.group_size=2",
    "train.futures=2",
    "train.batch_size=2",
    "train.lora_dropout=0.0",
]
ONLINE = [*SMOKE, "train.method=online_dpo", "train.online_rounds=2", "train.epochs=3"]
ONLINE += ["train.learning_rate=2e-4"]
GRPO = [*SMOKE, "train.method=grpo", "train.epochs=2", "train.learning_rate=1e-4"]


def setup(tmp_path, overrides):
    """Params, roles, the MR reward and the pairs-shaped records of the two training contexts."""
    params = config.load(
        "params/smoke.yaml",
        [f"output_dir={tmp_path}", f"cache_path={tmp_path / 'generations.sqlite'}", *overrides],
    )
    train_tasks, _ = session.task_splits(params)
    roles = session.load_roles(params)
    reward = train_rewards.MRReward.from_params(params, roles, train_tasks)
    records = [
        {"prompt": simulate.Context.opening(task).messages, "task_id": task.id, "turn": 0}
        for task in train_tasks
    ]
    return params, reward, records


def recipe(params, reward, records, output_dir, reuse=True):
    return train.train_recipe(
        records,
        None,
        model="embedded",
        train_params=params.train,
        output_dir=output_dir,
        seed=params.seed,
        reuse=reuse,
        reward=reward,
    )


def trained(root, overrides, name):
    params, reward, records = setup(root, overrides)
    result = recipe(params, reward, records, root / "train")
    print(f"\n{name} timing {json.dumps(result.timing)}")
    return root, params, reward, records, result


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("online"), ONLINE, "online DPO")


@pytest.fixture(scope="module")
def grpo(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("grpo"), GRPO, "GRPO")


class Counted:
    """A backend or user simulator that records the batch size of every call."""

    def __init__(self, inner, method):
        self.inner, self.method, self.sizes = inner, method, []

    def __getattr__(self, name):
        value = getattr(self.inner, name)
        if name != self.method:
            return value

        def call(items, *args, **kwargs):
            self.sizes.append(len(items))
            return value(items, *args, **kwargs)

        return call


def lora_b(adapter_dir):
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    return {name: t for name, t in weights.items() if "lora_B" in name}


def reloads_and_generates(adapter_dir):
    tuned = llm.load_backend(
        {"backend": "hf", "model": "embedded", "adapter": str(adapter_dir)}, None
    )
    with cpu_threads("cpu"):
        texts = tuned.chat(
            [[{"role": "user", "content": "Write a function that adds two numbers."}]],
            max_new_tokens=12,
            temperature=0,
            seed=0,
        )
    return texts[0].text


def test_the_reward_scores_a_whole_batch_in_one_call_per_role_per_round(tmp_path):
    """Two contexts x 3 completions (one repeated), S 2 futures of 2 rounds: each round one
    user and one assistant call over every live future, the judge one call for ITR and one for
    helpfulness; a second call with the same completions is all cache hits."""
    params, reward, records = setup(tmp_path, [*SMOKE, "reward.window=2"])
    reward.assistant = Counted(reward.assistant, "chat")
    reward.user = Counted(reward.user, "respond")
    reward.judge = Counted(reward.judge, "rate")
    prompts = [records[0]["prompt"]] * 3 + [records[1]["prompt"]] * 3
    texts = ["def f(x): return x", "What should the function return?", "def f(x): return x"]
    texts += ["Could you give an example input?", "import re", "Which format do you want?"]
    batch = {
        "prompts": prompts,
        "completions": [[{"role": "assistant", "content": t}] for t in texts],
        "task_id": [r["task_id"] for r in records for _ in range(3)],
        "turn": [0] * 6,
    }
    with cpu_threads("cpu"):  # a shared CPU: threads for the free cores only
        first = reward(**batch)
    unique = 2 + 3  # the repeated text of context 0 is one candidate
    assert reward.user.sizes[0] == reward.assistant.sizes[0] == unique * 2
    assert len(reward.user.sizes) == len(reward.assistant.sizes) <= 2  # one per round
    assert reward.user.sizes == reward.assistant.sizes  # the same live futures
    assert reward.judge.sizes == [unique * 2, unique]  # ITR of every future, then helpfulness
    assert first[0] == first[2] and all(math.isfinite(r) for r in first)
    assert len(set(first)) > 2  # real scores, not a constant
    assert reward.last["generated_assistant"] > 0 and reward.last["generated_judge"] > 0

    with cpu_threads("cpu"):
        again = reward(**batch)
    assert again == first
    assert {k: v for k, v in reward.last.items() if k.startswith("generated")} == {
        "generated_assistant": 0,
        "generated_user": 0,
        "generated_judge": 0,
    }


@pytest.mark.slow
def test_online_dpo_rounds_sample_from_the_current_adapter_and_lower_the_loss(online):
    root, params, reward, records, result = online
    rounds = result.timing["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for row in rounds:
        assert row["samples"] == 2 * 2 and math.isfinite(row["mean_mr"]) and row["pairs"] >= 1
        assert row["generated"]["policy"] > 0  # round 1: the new adapter samples anew
    first = json.loads((root / "train" / "rounds" / "1" / "train_summary.json").read_text())
    assert first["timing"]["init_adapter"] == str(root / "train" / "rounds" / "0" / "adapter")
    log = result.log.dropna(subset=["loss"])
    for _, steps in log.groupby("round"):
        # each round starts at policy == reference (ln 2) and DPO lowers the loss on its pairs
        assert steps["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-4)
        assert steps["loss"].iloc[-1] < math.log(2) - 0.01, steps[["round", "loss"]]
    round_0 = lora_b(root / "train" / "rounds" / "0" / "adapter")
    final = lora_b(result.adapter_dir)
    assert final.keys() == round_0.keys() and all(t.abs().max() > 0 for t in final.values())
    assert any(not torch.equal(round_0[k], final[k]) for k in final)  # round 1 trained on
    assert reloads_and_generates(result.adapter_dir).strip()
    assert evaluate.trained_label(params.train) == "Online DPO"


@pytest.mark.slow
def test_an_online_dpo_rerun_makes_no_new_generation(online):
    root, params, reward, records, result = online
    (root / "train" / "inputs.sha256").unlink()  # run every round again, not the stored result
    before = reward.generated()
    again = recipe(params, reward, records, root / "train")
    assert not again.timing["reused"]
    for row in again.timing["rounds"]:
        assert row["generated"] == {"policy": 0, "assistant": 0, "user": 0, "judge": 0}
    assert reward.generated() == before
    assert lora_b(again.adapter_dir).keys() == lora_b(result.adapter_dir).keys()
    assert recipe(params, reward, records, root / "train").timing["reused"]  # a stable digest


@pytest.mark.slow
def test_grpo_trains_on_mr_and_the_adapter_reloads(grpo):
    root, params, reward, records, result = grpo
    steps = result.log.dropna(subset=["loss"])
    assert result.timing["steps"] == len(steps) == 2  # 2 contexts x G 2 per step, 2 epochs
    # TRL logs the reward of the step's samples: MR of each, its spread inside the groups
    assert steps["rewards/MRReward/mean"].map(math.isfinite).all()
    assert (steps["reward_std"] > 0).all()  # the group's MRs differ: a learning signal
    assert (steps["grad_norm"] > 0).all() and steps["grad_norm"].map(math.isfinite).all()
    assert (steps["mr/responses"] == 4).all() and (steps["mr/calls"] == 1).all()
    spent = result.timing["reward"]
    assert spent["calls"] == 2 and spent["generated_assistant"] > 0
    weights = lora_b(result.adapter_dir)
    assert len(weights) == 30 * 7 and all(t.abs().max() > 0 for t in weights.values())
    assert reloads_and_generates(result.adapter_dir).strip()
    assert evaluate.trained_label(params.train) == "GRPO"


@pytest.mark.slow
def test_a_grpo_rerun_with_the_same_seed_makes_no_new_reward_generation(grpo):
    root, params, reward, records, result = grpo
    before = reward.generated()
    again = recipe(params, reward, records, root / "again", reuse=False)
    assert reward.generated() == before
    assert again.timing["reward"]["generated_assistant"] == 0
    assert again.timing["reward"]["generated_judge"] == 0
    rewards = result.log["rewards/MRReward/mean"].dropna().tolist()
    assert again.log["rewards/MRReward/mean"].dropna().tolist() == pytest.approx(rewards)


def test_bad_online_settings_fail_before_weights_load(monkeypatch, tmp_path):
    monkeypatch.setattr(train, "load_policy", _no_weights)
    monkeypatch.setattr(models, "resolve", _no_weights)
    with pytest.raises(ParamsError, match=r"train\.group_size.*>= 2 for method grpo"):
        config.load("params/smoke.yaml", ["train.method=grpo", "train.group_size=1"])
    with pytest.raises(ParamsError, match=r"train\.method.*online_dpo, grpo"):
        config.load("params/smoke.yaml", ["train.method=ppo"])
    records = [{"prompt": [{"role": "user", "content": "Hi"}], "task_id": "t", "turn": 0}]
    with pytest.raises(ParamsError, match=r"train\.group_size"):
        train.train_recipe(
            records,
            None,
            model="embedded",
            train_params=TrainParams(method="online_dpo", group_size=1),
            output_dir=tmp_path,
        )
    with pytest.raises(ValueError, match="scores them by MR: pass reward="):
        train.train_recipe(
            records,
            None,
            model="embedded",
            train_params=TrainParams(method="grpo"),
            output_dir=tmp_path,
        )
    assert not any(tmp_path.iterdir())
    assert train_rewards.reward_for(config.load("params/smoke.yaml")) is None  # offline dpo


def test_grpo_refuses_greedy_sampling_before_weights_load(monkeypatch, tmp_path):
    params, reward, records = setup(tmp_path, [*GRPO, "generation.temperature=0"])
    monkeypatch.setattr(train, "load_policy", _no_weights)
    monkeypatch.setattr(models, "resolve", _no_weights)
    with pytest.raises(ValueError, match="temperature is 0"):
        recipe(params, reward, records, tmp_path / "train")
    with pytest.raises(ValueError, match="not among the training tasks"):
        recipe(params, reward, [{**records[0], "task_id": "code/nope"}], tmp_path / "train")


def _no_weights(*args, **kwargs):
    pytest.fail("weights were about to load")
