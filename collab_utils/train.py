"""Training with LoRA: SFT, DPO, DPO from the SFT adapter, online DPO and GRPO; the only
module that imports TRL.

    result = train.train_recipe(pairs, run.sft, model="embedded", train_params=params.train,
                                output_dir=params.run.train, seed=params.seed, reuse=True,
                                reward=mr)   # mr: train_rewards.MRReward, online methods only
    backend = llm.load_backend({"backend": "hf", "model": "embedded",
                                "adapter": str(result.adapter_dir)})

`train.method` picks the recipe: `dpo` (`trl.DPOTrainer` on the preference pairs), `sft`
(`trl.SFTTrainer` on the MR-chosen conversations of sft.jsonl, loss on assistant turns only),
`online_dpo` (rounds of sampling from the current adapter, MR, DPO: `train_online`) or `grpo`
(`trl.GRPOTrainer`, the MR of each sampled response as its reward: `train_rewards`).
`train.init: sft` trains SFT first and continues DPO from that adapter (the paper-era recipe).
All use a peft `LoraConfig` (paper defaults in `TrainParams`: r 32, alpha 16, dropout 0.1, all
linear projections; DPO beta 0.1, lr 5e-6). With CUDA and `quantize_4bit` auto/yes the base
model loads in 4-bit NF4 (QLoRA); on CPU it is plain LoRA in float32 (`train_policy`). The DPO
reference is the policy's starting point: the base (adapter switched off), or a frozen copy of
the SFT adapter.

Bad input fails before any weights load (checks in `train_data`): an empty set, a record in
another format, a tokenizer without a chat template, a model that cannot fit the memory at hand,
an online method without its reward or with a group of one.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import models
from .config import ONLINE_METHODS, TrainParams
from .io import mark_done, up_to_date, write_json, write_text
from .params_yaml import KeyProblem, ParamsError
from .train_data import (
    fitting_pairs,
    load_chat_tokenizer,
    preference_records,
    sft_dataset_rows,
    sft_records,
)
from .train_logps import completion_logps, dpo_loss_on
from .train_memory import GIB, check_memory, cpu_threads
from .train_policy import Plan, load_policy, lora_config, plan_for, save_adapter

__all__ = [
    "TrainResult",
    "completion_logps",
    "dpo_loss_on",
    "load_chat_tokenizer",
    "preference_records",
    "sft_trainer",
    "stored_result",
    "train_dpo",
    "train_grpo",
    "train_recipe",
    "train_sft",
]

MARKER = "inputs.sha256"  # digest of a training run's inputs, written when it finished
_ONLINE_KEYS = ("group_size", "futures", "online_rounds")
# Parameters train_dpo does not read: its inputs digest leaves them out (the SFT adapter it may
# start from enters the digest through its weights instead).
_NOT_DPO = ("method", "init", "sft_learning_rate", *_ONLINE_KEYS)
_NOT_GRPO = ("method", "init", "sft_learning_rate", "online_rounds", "beta", "sft_weight")


@dataclass
class TrainResult:
    adapter_dir: Path
    log: pd.DataFrame  # one row per logged step (loss, rewards/*) and per evaluation
    timing: dict  # steps, train/eval seconds, seconds_per_step, peak_gpu_memory_gb, device
    log_path: Path


def train_recipe(
    pairs: list[dict] | None,
    conversations: list[dict] | str | Path | None,
    *,
    model: str,
    train_params: TrainParams,
    output_dir: str | Path,
    seed: int = 0,
    eval_pairs: list[dict] | None = None,
    reuse: bool = False,
    reward=None,
) -> TrainResult:
    """Train what `train_params.method` / `.init` say; the adapter lands in output_dir/adapter.

    dpo + init base: `train_dpo` on `pairs`. sft: `train_sft` on `conversations` (sft.jsonl or
    its records). dpo + init sft: `train_sft` into output_dir/sft, then `train_dpo` from it.
    online_dpo / grpo: `train_online.online_dpo` / `train_grpo` on the contexts of `pairs`
    (one per task and turn), scored by `reward` (a `train_rewards.MRReward`).
    """
    _check(train_params)
    output_dir = Path(output_dir)
    common = {"model": model, "train_params": train_params, "seed": seed, "reuse": reuse}
    if train_params.method in ONLINE_METHODS:
        from .train_online import online_dpo
        from .train_rewards import training_contexts

        if reward is None:
            raise ValueError(
                f"train.method {train_params.method} samples responses and scores them by MR: "
                "pass reward=train_rewards.reward_for(params)"
            )
        contexts = training_contexts(pairs or [], reward.tasks)
        method = online_dpo if train_params.method == "online_dpo" else train_grpo
        return method(contexts, reward, output_dir=output_dir, **common)
    if train_params.method == "sft":
        return train_sft(conversations, output_dir=output_dir, **common)
    init_adapter = None
    if train_params.init == "sft":
        preference_records(pairs, "pairs")  # fail on bad pairs before the SFT run
        init_adapter = train_sft(conversations, output_dir=output_dir / "sft", **common)
        init_adapter = init_adapter.adapter_dir
    return train_dpo(
        pairs, output_dir=output_dir, eval_pairs=eval_pairs, init_adapter=init_adapter, **common
    )


def _check(train_params: TrainParams) -> None:
    """Parameters built in code skip the params-file validation; the same checks here."""
    try:
        train_params.check("train")
    except KeyProblem as problem:
        raise ParamsError(f"key '{problem.key}': {problem.message}") from None


def earlier_result(output_dir: Path, inputs: tuple, reuse: bool) -> TrainResult | None:
    """With `reuse`, the result trained in `output_dir` earlier from these very inputs."""
    if reuse and up_to_date(output_dir / MARKER, *inputs) and (output_dir / "adapter").is_dir():
        return stored_result(output_dir)
    return None


def _prepare(model: str, train_params: TrainParams):
    """The model's folder, where it trains and its chat tokenizer; a model that cannot fit the
    memory at hand fails here, before any weights load."""
    path = models.resolve(model)
    plan = plan_for(train_params)
    check_memory(path, plan.memory_kind)
    return path, plan, load_chat_tokenizer(path, model)


def train_dpo(
    pairs: list[dict],
    *,
    model: str,
    train_params: TrainParams,
    output_dir: str | Path,
    seed: int = 0,
    eval_pairs: list[dict] | None = None,
    reuse: bool = False,
    init_adapter: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter with DPO; saves output_dir/adapter and output_dir/train_log.jsonl.

    `init_adapter`: continue training that adapter (e.g. the SFT one); the reference is then
    a frozen copy of it (TRL's "ref" adapter), not the base. With `reuse=True` an adapter
    already trained in `output_dir` on these very pairs, model, parameters, seed and initial
    adapter is returned as it is (`timing["reused"]` is True); nothing loads.
    """
    output_dir = Path(output_dir)
    dpo_params = {k: v for k, v in asdict(train_params).items() if k not in _NOT_DPO}
    inputs = (pairs, eval_pairs, model, dpo_params, seed)
    if init_adapter is not None:
        init_adapter = Path(init_adapter)
        inputs += (init_adapter / "adapter_model.safetensors",)  # its weights, by their bytes
    if (earlier := earlier_result(output_dir, inputs, reuse)) is not None:
        return earlier
    records = preference_records(pairs, "pairs")
    eval_records = preference_records(eval_pairs, "eval_pairs") if eval_pairs else None
    path, plan, tokenizer = _prepare(model, train_params)
    records = fitting_pairs(records, tokenizer, train_params.max_length, "pairs")
    if eval_records:
        eval_records = fitting_pairs(eval_records, tokenizer, train_params.max_length, "eval_pairs")

    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(seed)
    policy = load_policy(path, plan, train_params, init_adapter)
    args = DPOConfig(
        **_common_args(train_params, plan, output_dir, seed, train_params.learning_rate),
        per_device_eval_batch_size=train_params.batch_size,
        beta=train_params.beta,
        # TRL's DPO switches every dropout off by default, LoRA's too; keep the configured one.
        disable_dropout=False,
        # sft_weight > 0: RPO-style DPO + NLL on the MR-chosen reply, TRL's own loss mix
        loss_type=["sigmoid", "sft"] if train_params.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, train_params.sft_weight] if train_params.sft_weight > 0 else None,
        gradient_checkpointing=train_params.gradient_checkpointing,
        eval_strategy="epoch" if eval_records else "no",
    )
    trainer = DPOTrainer(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(records),
        eval_dataset=Dataset.from_list(eval_records) if eval_records else None,
        processing_class=tokenizer,
        # a fresh adapter; a PeftModel (init_adapter) brings its own, TRL copies it as "ref"
        peft_config=lora_config(train_params) if init_adapter is None else None,
    )
    extra = {"pairs": len(records), "init_adapter": str(init_adapter) if init_adapter else None}
    return _run(trainer, tokenizer, plan, output_dir, inputs, extra, model, train_params, seed)


def train_sft(
    conversations: list[dict] | str | Path,
    *,
    model: str,
    train_params: TrainParams,
    output_dir: str | Path,
    seed: int = 0,
    reuse: bool = False,
) -> TrainResult:
    """Supervised fine-tuning of a LoRA adapter on conversations, loss on assistant turns only.

        -log π(a_1..a_T | s) = -Σ_turns Σ_tokens log π(a_t,i | s, u_1, a_1, ..., u_t, a_t,<i)

    `conversations`: sft.jsonl (stage 03's MR-chosen paths) or its records, {"messages": [...]}.

    The mask: SmolLM2's chat template has no `{% generation %}` markers, so TRL's
    `assistant_only_loss` cannot find the assistant tokens, and expanding each conversation into
    one prompt/completion record per assistant turn (`completion_only_loss`) would repeat every
    earlier turn once per later one. Instead each conversation is tokenised once by
    `train_data.sft_features` into `input_ids` + `assistant_masks` (every assistant turn marked,
    located by rendering the conversation turn by turn) and handed to `SFTTrainer` as a
    pre-tokenised dataset: TRL builds the labels from that mask (-100 on system and user tokens
    and on the role headers), exactly as it does for its own `assistant_only_loss`.

    Saves output_dir/adapter, train_log.jsonl and train_summary.json; `reuse=True` returns an
    adapter already trained in `output_dir` on the same conversations, model, parameters and seed.
    """
    output_dir = Path(output_dir)
    records = sft_records(
        conversations, str(conversations) if isinstance(conversations, (str, Path)) else "sft"
    )
    sft_params = {
        k: v for k, v in asdict(train_params).items() if k not in ("method", "init", *_ONLINE_KEYS)
    }
    inputs = ("sft", records, model, sft_params, seed)
    if (earlier := earlier_result(output_dir, inputs, reuse)) is not None:
        return earlier
    path, plan, tokenizer = _prepare(model, train_params)
    rows = sft_dataset_rows(records, tokenizer, train_params.max_length, "sft")

    from transformers import set_seed

    set_seed(seed)
    trainer = sft_trainer(
        rows,
        tokenizer,
        load_policy(path, plan, train_params),
        train_params,
        plan,
        output_dir,
        seed,
    )
    extra = {"conversations": len(rows), "init_adapter": None}
    return _run(trainer, tokenizer, plan, output_dir, inputs, extra, model, train_params, seed)


def train_grpo(
    contexts,
    reward,
    *,
    model: str,
    train_params: TrainParams,
    output_dir: str | Path,
    seed: int = 0,
    reuse: bool = False,
) -> TrainResult:
    """GRPO with MR as the reward: TRL's `GRPOTrainer` samples G = `group_size` responses per
    context from the policy (the adapter in training), `reward` (a `train_rewards.MRReward`)
    scores the whole generation batch at once through the rollout engine (S futures each), and
    each response's advantage is its MR against its group's mean (over the group's std).

    `contexts`: `simulate.Context`s (the prompts, with their task and turn). A step holds
    `batch_size` contexts × G responses per device; the policy samples with the assistant's
    sampling settings (`reward.sampling`: max_new_tokens, temperature, top_p). TRL's defaults
    otherwise: KL coefficient 0 (no reference pass), the DAPO token-level loss, one update per
    generation batch. Seeds: TRL's sampling follows `seed`, so on one machine a rerun samples
    the same responses and the reward makes no new generation (all cache hits).
    """
    output_dir = Path(output_dir)
    if reward.sampling.temperature <= 0:
        raise ValueError(
            "generation.temperature is 0: GRPO's G samples of one prompt would be identical "
            "and every advantage 0; sample with a temperature > 0"
        )
    grpo_params = {k: v for k, v in asdict(train_params).items() if k not in _NOT_GRPO}
    rows = [{"prompt": c.messages, "task_id": c.task.id, "turn": c.turn} for c in contexts]
    inputs = ("grpo", rows, model, grpo_params, seed, reward.settings())
    if (earlier := earlier_result(output_dir, inputs, reuse)) is not None:
        return earlier
    path, plan, tokenizer = _prepare(model, train_params)

    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    set_seed(seed)
    policy = load_policy(path, plan, train_params)
    common = _common_args(train_params, plan, output_dir, seed, train_params.learning_rate)
    del common["max_length"]  # GRPO bounds the completion instead
    group = train_params.group_size
    common["per_device_train_batch_size"] = train_params.batch_size * group  # completions
    args = GRPOConfig(
        **common,
        num_generations=group,
        max_completion_length=reward.sampling.max_new_tokens,
        temperature=reward.sampling.temperature,
        top_p=reward.sampling.top_p,
        gradient_checkpointing=train_params.gradient_checkpointing and plan.device == "cuda",
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(train_params),
    )
    before = dict(reward.stats)
    result = _run(
        trainer,
        tokenizer,
        plan,
        output_dir,
        inputs,
        {"contexts": len(rows), "init_adapter": None},
        model,
        train_params,
        seed,
    )
    spent = {k: v - before.get(k, 0) for k, v in reward.stats.items()}
    result.timing["reward"] = {k: round(v, 3) for k, v in spent.items()}
    summary = output_dir / "train_summary.json"
    write_json(summary, {**json.loads(summary.read_text()), "timing": result.timing})
    return result


def sft_trainer(rows, tokenizer, policy, train_params: TrainParams, plan: Plan, output_dir, seed=0):
    """TRL's SFTTrainer on tokenised rows (`train_data.sft_dataset_rows`) with a fresh adapter."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    lr = train_params.sft_learning_rate or train_params.learning_rate
    args = SFTConfig(
        **_common_args(train_params, plan, Path(output_dir), seed, lr),
        # CPU speed: SFTConfig turns gradient checkpointing on by default, which recomputes every
        # layer's forward in the backward pass: 2.6 -> 1.8 s/step without it (2 cores, 135M,
        # batch 2). The big CPU slowdowns are thread oversubscription (`cpu_threads`), and bf16
        # autocast is left off on CPU as in DPO (float32; autocast is slow where the CPU has no
        # native bf16, and within noise here). Memory is no issue for LoRA on CPU-sized models.
        gradient_checkpointing=train_params.gradient_checkpointing and plan.device == "cuda",
        packing=False,
        padding_free=False,  # needs FlashAttention; sequences are padded per batch instead
        eval_strategy="no",
    )
    return SFTTrainer(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(train_params),
    )


def _common_args(train_params: TrainParams, plan: Plan, output_dir: Path, seed: int, lr: float):
    """TrainingArguments shared by the DPO and SFT configs."""
    return {
        "output_dir": str(output_dir / "trainer"),
        "per_device_train_batch_size": train_params.batch_size,
        "gradient_accumulation_steps": train_params.gradient_accumulation_steps,
        "learning_rate": lr,
        "num_train_epochs": train_params.epochs,
        "max_length": train_params.max_length,
        # TRL defaults to bf16 autocast, also on CPU; float32 there, bf16 on CUDA.
        "bf16": plan.device == "cuda",
        "use_cpu": plan.device == "cpu",
        "logging_steps": train_params.logging_steps,
        "report_to": train_params.report_to,
        "save_strategy": "no",
        "seed": seed,
        "data_seed": seed,
    }


def _run(trainer, tokenizer, plan, output_dir, inputs, extra, model, train_params, seed):
    """Train, then write the adapter, the log and the summary; the result as `TrainResult`."""
    import torch

    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with cpu_threads(plan.device):
        trainer.train()
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    eval_seconds = sum(row.get("eval_runtime", 0.0) for row in history)
    steps = trainer.state.global_step
    timing = {
        "reused": False,
        "device": plan.device,
        "quantized_4bit": plan.quantize,
        **extra,
        "steps": steps,
        "train_seconds": round(seconds, 3),  # evaluations included
        "eval_seconds": round(eval_seconds, 3),
        "seconds_per_step": round((seconds - eval_seconds) / max(steps, 1), 3),
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated() / GIB, 3) if plan.device == "cuda" else None
        ),
    }
    adapter_dir, log_path = output_dir / "adapter", output_dir / "train_log.jsonl"
    if trainer.is_world_process_zero():  # under `accelerate launch`: one writer, the others wait
        save_adapter(trainer.model, tokenizer, adapter_dir)
        with contextlib.suppress(OSError):  # the trainer's folder stays empty: no checkpoints
            (output_dir / "trainer").rmdir()
        write_text(log_path, "".join(json.dumps(row) + "\n" for row in history))
        write_json(
            output_dir / "train_summary.json",
            {"model": model, "seed": seed, "train_params": asdict(train_params), "timing": timing},
        )
        mark_done(output_dir / MARKER, *inputs)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(adapter_dir, _log_rows(history), timing, log_path)


def _log_rows(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for row in history if "loss" in row or "eval_loss" in row])


def stored_result(output_dir: Path) -> TrainResult:
    """The result of an earlier training run in `output_dir`, read back from its files."""
    log_path = output_dir / "train_log.jsonl"
    history = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    timing = json.loads((output_dir / "train_summary.json").read_text())["timing"]
    return TrainResult(
        output_dir / "adapter", _log_rows(history), {**timing, "reused": True}, log_path
    )
