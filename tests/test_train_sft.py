"""SFT with LoRA on CPU with the embedded model, and DPO continued from the SFT adapter.

The masks: TRL's labels are -100 on every system and user token and equal the input ids on
every assistant turn. One SFT run (4 two-turn conversations) and one SFT → DPO run are shared by
the tests below; the DPO run re-uses the SFT adapter (same data and parameters).
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from collab_utils import config, llm, models, pairs, train, train_data
from collab_utils.config import ParamsError, TrainParams
from collab_utils.train_memory import cpu_threads

SYSTEM = "You are a careful assistant."


def conversation(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    roles = ["user", "assistant"] * len(turns)
    return {"messages": messages + [{"role": r, "content": t} for r, t in zip(roles, turns)]}


CONVERSATIONS = [
    conversation(
        "Write a function that sorts a list.",
        "Ascending or descending, and in place or a new list?",
        "Ascending, a new list.",
        "def sort_list(xs):\n    return sorted(xs)",
    ),
    conversation(
        "Help me write an email to my boss.",
        "What is the email about, and what tone do you want?",
        "Asking for Friday off, polite.",
        "Dear Ms. Lee, may I take Friday off? Thank you, Sam",
    ),
    conversation(
        "Solve the equation for me.",
        "Which equation? Please share it.",
        "2x + 3 = 11",
        "2x = 8, so x = 4.",
    ),
    conversation(
        "Summarize the article.",
        "Could you paste the article, and how long should the summary be?",
        "It says cats sleep 15 hours a day. One line.",
        "Cats sleep about 15 hours a day.",
    ),
]

PAIRS = [
    {
        "prompt": [{"role": "user", "content": "Write a function that sorts a list."}],
        "chosen": [{"role": "assistant", "content": "Ascending or descending?"}],
        "rejected": [{"role": "assistant", "content": "def f(x): return x"}],
    },
    {
        "prompt": [{"role": "user", "content": "Summarize the article."}],
        "chosen": [{"role": "assistant", "content": "Could you paste the article?"}],
        "rejected": [{"role": "assistant", "content": "It is about things."}],
    },
]

# No dropout: TRL's first-step log-probs can then be compared with ours exactly.
SFT_PARAMS = TrainParams(
    method="sft",
    sft_learning_rate=2e-3,
    learning_rate=5e-4,
    epochs=3,
    batch_size=2,
    gradient_accumulation_steps=1,
    max_length=128,
    lora_dropout=0.0,
)
SFT_STEPS = 6  # 4 conversations / batch 2 × 3 epochs
DPO_FROM_SFT = TrainParams(**{**SFT_PARAMS.__dict__, "method": "dpo", "init": "sft"})  # 3 steps


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    sft_file = pairs.write_jsonl(CONVERSATIONS, root / "sft.jsonl")
    result = train.train_recipe(
        None, sft_file, model="embedded", train_params=SFT_PARAMS, output_dir=root / "sft"
    )
    print(f"\nSFT timing {result.timing}")
    return root, sft_file, result


@pytest.fixture(scope="module")
def dpo_from_sft(sft_run):
    root, sft_file, sft = sft_run
    result = train.train_recipe(
        PAIRS,
        sft_file,
        model="embedded",
        train_params=DPO_FROM_SFT,
        output_dir=root,
        seed=0,
        reuse=True,  # the SFT step finds sft_run's adapter: same data, parameters and seed
    )
    print(f"\nDPO timing {result.timing}")
    return sft, result


def assistant_runs(labels, input_ids):
    """Contiguous runs of labelled positions, as (start, end)."""
    runs, start = [], None
    for i, label in enumerate([*labels, -100]):
        if label != -100 and start is None:
            start = i
        if label == -100 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_sft_labels_cover_every_assistant_turn_and_nothing_else(tmp_path):
    """TRL's batch, as training sees it: two two-turn conversations, one with a system turn."""
    path = models.resolve("embedded")
    tokenizer = train_data.load_chat_tokenizer(path, "embedded")
    batch_conversations = [
        CONVERSATIONS[1]["messages"],
        [{"role": "system", "content": SYSTEM}, *CONVERSATIONS[2]["messages"]],
    ]
    rows = train_data.sft_dataset_rows(
        [{"messages": m} for m in batch_conversations], tokenizer, 128, "hand-made"
    )
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    plan = train.plan_for(SFT_PARAMS)
    trainer = train.sft_trainer(rows, tokenizer, policy, SFT_PARAMS, plan, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row, messages in enumerate(batch_conversations):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        length = int(batch["attention_mask"][row].sum())
        assert all(label == -100 for label in labels[length:])  # padding
        runs = assistant_runs(labels, ids)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(runs) == len(replies) == 2  # both assistant turns are targets
        for (start, end), reply in zip(runs, replies):
            assert labels[start:end] == ids[start:end]
            assert tokenizer.decode(ids[start:end]) == reply + "<|im_end|>\n"
        masked = tokenizer.decode([t for t, label in zip(ids[:length], labels) if label == -100])
        for message in messages:
            if message["role"] != "assistant":  # every system and user token is masked
                assert message["content"] in masked
        assert "You are a helpful AI assistant named SmolLM" in masked or row == 1  # template's
        assert masked.count("<|im_start|>assistant\n") == 2  # role headers are prompt


@pytest.mark.slow
def test_sft_loss_falls_and_the_adapter_reloads_and_generates(sft_run, embedded):
    root, sft_file, result = sft_run
    steps = result.log.dropna(subset=["loss"])
    assert result.timing["steps"] == len(steps) == SFT_STEPS
    first_epoch = steps[steps["epoch"] <= 1]["loss"].mean()
    last_epoch = steps[steps["epoch"] > 2]["loss"].mean()
    assert last_epoch < 0.7 * first_epoch, steps[["epoch", "loss"]]
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    lora_b = [
        t
        for n, t in load_file(result.adapter_dir / "adapter_model.safetensors").items()
        if "lora_B" in n
    ]
    assert len(lora_b) == 30 * 7 and all(t.abs().max() > 0 for t in lora_b)
    summary = json.loads((root / "sft" / "train_summary.json").read_text())
    assert summary["train_params"]["method"] == "sft"

    tuned = llm.load_backend(
        {"backend": "hf", "model": "embedded", "adapter": str(result.adapter_dir)}, None
    )
    prompts = [c["messages"][:1] for c in CONVERSATIONS]
    with cpu_threads("cpu"):  # a shared CPU: threads for the free cores only
        after = [g.text for g in tuned.chat(prompts, max_new_tokens=16, temperature=0, seed=0)]
        before = [g.text for g in embedded.chat(prompts, max_new_tokens=16, temperature=0, seed=0)]
    assert all(text.strip() for text in after)
    assert after != before

    again = train.train_recipe(
        None,
        sft_file,
        model="embedded",
        train_params=SFT_PARAMS,
        output_dir=root / "sft",
        reuse=True,
    )
    assert again.timing["reused"] and again.adapter_dir == result.adapter_dir


@pytest.mark.slow
def test_dpo_with_init_sft_starts_from_the_sft_adapter(dpo_from_sft):
    sft, dpo = dpo_from_sft
    assert dpo.timing["init_adapter"] == str(sft.adapter_dir)
    assert dpo.adapter_dir == sft.adapter_dir.parent.parent / "adapter"
    assert not (dpo.adapter_dir / "ref").exists()  # TRL's frozen reference copy is not saved
    steps = dpo.log.dropna(subset=["loss"])
    first = steps.iloc[0]
    # policy == reference at the first step: both are the SFT model
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    # and TRL's first-step log-probs (both pairs in the batch) are the SFT model's, not the base's
    sft_logps = train.completion_logps(PAIRS, "embedded", sft.adapter_dir)
    assert first["logps/chosen"] == pytest.approx(sft_logps.policy_chosen.mean(), abs=0.05)
    assert abs(sft_logps.policy_chosen.mean() - sft_logps.reference_chosen.mean()) > 1.0
    # DPO moved the SFT weights and lowered its loss against the SFT reference
    sft_weights = load_file(sft.adapter_dir / "adapter_model.safetensors")
    dpo_weights = load_file(dpo.adapter_dir / "adapter_model.safetensors")
    assert sft_weights.keys() == dpo_weights.keys()
    assert any(not torch.equal(sft_weights[k], dpo_weights[k]) for k in sft_weights)
    after = train.dpo_loss_on(
        PAIRS,
        "embedded",
        dpo.adapter_dir,
        beta=DPO_FROM_SFT.beta,
        reference_adapter=sft.adapter_dir,
    )
    assert after < math.log(2)


def test_unknown_method_is_a_params_error_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setattr(train, "load_policy", _no_weights)  # no weights may load
    with pytest.raises(ParamsError, match=r"train\.method.*dpo, sft, online_dpo, grpo"):
        config.load("params/smoke.yaml", ["train.method=nonsense"])
    with pytest.raises(ParamsError, match=r"train\.method"):
        train.train_recipe(
            PAIRS,
            CONVERSATIONS,
            model="embedded",
            output_dir=tmp_path,
            train_params=TrainParams(method="nonsense"),
        )
    with pytest.raises(ParamsError, match=r"train\.init"):
        config.load("params/smoke.yaml", ["train.method=sft", "train.init=sft"])


def test_sft_file_without_assistant_turns_fails_before_weights_load(monkeypatch, tmp_path):
    monkeypatch.setattr(train, "load_policy", _no_weights)
    monkeypatch.setattr(models, "resolve", _no_weights)
    bad = [CONVERSATIONS[0], {"messages": [{"role": "user", "content": "Hello?"}]}]
    sft_file = pairs.write_jsonl(bad, tmp_path / "sft.jsonl")
    with pytest.raises(ValueError, match=rf"{sft_file}: record 2: no assistant turn"):
        train.train_recipe(
            None, sft_file, model="embedded", train_params=SFT_PARAMS, output_dir=tmp_path / "t"
        )
    with pytest.raises(ValueError, match="sft.jsonl is empty|is empty"):
        train.train_sft([], model="embedded", train_params=SFT_PARAMS, output_dir=tmp_path)
    assert not (tmp_path / "t").exists()


def _no_weights(*args, **kwargs):
    pytest.fail("weights were about to load")
