"""DPO with LoRA on CPU with the embedded model: weights move, the loss falls, the adapter loads.

One short training run (4 pairs, 2 epochs, batch 2: 4 steps) is shared by the tests below.
"""

import json
import math
import shutil
import time

import pytest
from safetensors.torch import load_file

from collab_utils import llm, models, train, train_memory
from collab_utils.config import TrainParams


def user(text):
    return [{"role": "user", "content": text}]


def reply(text):
    return [{"role": "assistant", "content": text}]


PAIRS = [
    {
        "prompt": user("Write a function that sorts a list."),
        "chosen": reply("Before I write it: ascending or descending, and should it sort in place?"),
        "rejected": reply("def f(x): return x"),
        "task_id": "sort",  # metadata rides along and stays out of training
        "gap": 0.6,
    },
    {
        "prompt": user("Help me write an email to my boss."),
        "chosen": reply("Happy to help. What is the email about, and what tone do you want?"),
        "rejected": reply("Dear boss, hello."),
    },
    {
        "prompt": user("Solve the equation for me."),
        "chosen": reply("Which equation? Please share it and I will solve it step by step."),
        "rejected": reply("x = 4."),
    },
    {
        "prompt": user("Summarize the article."),
        "chosen": reply("Could you paste the article, and how long should the summary be?"),
        "rejected": reply("It is about things."),
    },
]

EPOCHS, STEPS = 2, 4
TEST_PARAMS = TrainParams(
    learning_rate=3e-4, epochs=EPOCHS, batch_size=2, gradient_accumulation_steps=1, max_length=128
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("dpo")
    started = time.perf_counter()
    result = train.train_dpo(
        PAIRS,
        model="embedded",
        train_params=TEST_PARAMS,
        output_dir=output_dir,
        seed=0,
        eval_pairs=PAIRS,
    )
    print(f"\ntraining took {time.perf_counter() - started:.1f} s; timing {result.timing}")
    return result


@pytest.mark.slow
def test_adapter_is_saved_with_paper_lora_settings(trained):
    files = {p.name for p in trained.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    config = json.loads((trained.adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (32, 16, 0.1)
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(config["target_modules"]) == projections


@pytest.mark.slow
def test_lora_weights_moved_away_from_their_zero_init(trained):
    weights = load_file(trained.adapter_dir / "adapter_model.safetensors")
    lora_b = {name: t for name, t in weights.items() if "lora_B" in name}
    assert len(lora_b) == 30 * 7  # every projection of every layer
    assert all(t.abs().max() > 0 for t in lora_b.values())  # peft initialises lora_B to zero


@pytest.mark.slow
def test_dpo_loss_falls_over_the_epochs(trained):
    steps = trained.log.dropna(subset=["loss"])
    assert len(steps) == trained.timing["steps"] == STEPS
    assert {"rewards/margins", "rewards/chosen", "rewards/rejected"} <= set(steps.columns)
    assert steps["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    first_epoch = steps[steps["epoch"] <= 1]["loss"].mean()
    last_epoch = steps[steps["epoch"] > EPOCHS - 1]["loss"].mean()
    assert last_epoch < first_epoch - 0.05
    assert steps[steps["epoch"] > EPOCHS - 1]["rewards/margins"].mean() > 0
    logged = [json.loads(line) for line in trained.log_path.read_text().splitlines()]
    assert sum("loss" in row for row in logged) == STEPS


@pytest.mark.slow
def test_dpo_loss_on_agrees_with_trl_and_drops_below_ln2(trained):
    assert train.dpo_loss_on(PAIRS[:1], "embedded") == pytest.approx(math.log(2))
    after = train.dpo_loss_on(PAIRS, "embedded", trained.adapter_dir, beta=TEST_PARAMS.beta)
    assert after < math.log(2) - 0.1
    final_eval = trained.log.dropna(subset=["eval_loss"])["eval_loss"].iloc[-1]
    assert after == pytest.approx(final_eval, abs=1e-3)  # our loss is TRL's on the same weights


@pytest.mark.slow
def test_saved_adapter_loads_in_the_hf_backend_and_changes_generations(trained, embedded):
    spec = {"backend": "hf", "model": "embedded", "adapter": str(trained.adapter_dir)}
    tuned = llm.load_backend(spec, None)
    prompts = [pair["prompt"] for pair in PAIRS]
    after = [g.text for g in tuned.chat(prompts, max_new_tokens=16, temperature=0, seed=0)]
    before = [g.text for g in embedded.chat(prompts, max_new_tokens=16, temperature=0, seed=0)]
    assert all(after)
    assert after != before


def test_empty_pair_set_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="pairs is empty.*min_gap"):
        train.train_dpo([], model="embedded", train_params=TEST_PARAMS, output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_pairs_in_another_format_fail_before_training(tmp_path):
    flat = [{"prompt": "Sort it.", "chosen": "Ascending?", "rejected": "No."}]
    with pytest.raises(ValueError, match=r"pairs\[0\]: expected TRL's conversational"):
        train.train_dpo(flat, model="embedded", train_params=TEST_PARAMS, output_dir=tmp_path)


def test_tokenizer_without_chat_template_fails_before_loading_weights(tmp_path):
    from transformers import AutoTokenizer

    embedded = models.resolve("embedded")
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "chat_template.jinja").unlink(missing_ok=True)
    shutil.copy(embedded / "config.json", tmp_path / "model")  # no weights: never loaded
    with pytest.raises(ValueError, match="has no chat template"):
        train.train_dpo(
            PAIRS, model=str(tmp_path / "model"), train_params=TEST_PARAMS, output_dir=tmp_path
        )


def test_model_too_large_for_memory_fails_from_its_config(tmp_path):
    huge = {  # a 405B-parameter Llama: config only, no weights
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    }
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "config.json").write_text(json.dumps(huge))
    assert train_memory.count_parameters(tmp_path / "huge") == pytest.approx(405.8e9, rel=1e-3)
    with pytest.raises(train_memory.ModelTooLargeError, match=r"405\.\d\dB parameters .* QLoRA"):
        train.train_dpo(
            PAIRS, model=str(tmp_path / "huge"), train_params=TEST_PARAMS, output_dir=tmp_path
        )


def test_forced_4bit_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: 4-bit is allowed")
    params = TrainParams(quantize_4bit="yes")
    with pytest.raises(ValueError, match="QLoRA needs a GPU"):
        train.train_dpo(PAIRS, model="embedded", train_params=params, output_dir=tmp_path)
