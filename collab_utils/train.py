"""DPO on preference pairs with LoRA: the only module that imports TRL.

    result = train.train_dpo(pairs, model="embedded", train_params=params.train,
                             output_dir=params.run.train, seed=params.seed, reuse=True)
    backend = llm.load_backend({"backend": "hf", "model": "embedded",
                                "adapter": str(result.adapter_dir)})

`trl.DPOTrainer` with a peft `LoraConfig` (paper defaults in `TrainParams`: r 32, alpha 16,
dropout 0.1, all linear projections, beta 0.1, lr 5e-6). With CUDA and `quantize_4bit`
auto/yes the base model loads in 4-bit NF4 (QLoRA); on CPU it is plain LoRA in float32.
The reference model is the base itself (the adapter switched off), so no second copy is held.

Bad input fails before any weights load: an empty pair set, a tokenizer without a chat
template, a model that cannot fit the memory at hand (estimated from its config.json).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import models
from .config import TrainParams
from .io import mark_done, save_pretrained, up_to_date, write_json, write_text
from .train_memory import GIB, check_memory

CPU_NOTE = "no CUDA: plain LoRA on CPU in float32, QLoRA needs a GPU"
_cpu_note_shown = False


@dataclass
class TrainResult:
    adapter_dir: Path
    log: pd.DataFrame  # one row per logged step (loss, rewards/*) and per evaluation
    timing: dict  # steps, train/eval seconds, seconds_per_step, peak_gpu_memory_gb, device
    log_path: Path


@dataclass(frozen=True)
class _Plan:
    device: str  # "cpu" or "cuda"
    quantize: bool

    @property
    def memory_kind(self) -> str:
        return "cuda-4bit" if self.quantize else self.device


def train_dpo(
    pairs: list[dict],
    *,
    model: str,
    train_params: TrainParams,
    output_dir: str | Path,
    seed: int = 0,
    eval_pairs: list[dict] | None = None,
    reuse: bool = False,
) -> TrainResult:
    """Train a LoRA adapter with DPO; saves output_dir/adapter and output_dir/train_log.jsonl.

    With `reuse=True` an adapter already trained in `output_dir` on these very pairs, model,
    parameters and seed is returned as it is (`timing["reused"]` is True); nothing loads.
    """
    output_dir = Path(output_dir)
    inputs = (pairs, eval_pairs, model, asdict(train_params), seed)
    marker = output_dir / "inputs.sha256"
    if reuse and up_to_date(marker, *inputs) and (output_dir / "adapter").is_dir():
        return _stored_result(output_dir)
    records = preference_records(pairs, "pairs")
    eval_records = preference_records(eval_pairs, "eval_pairs") if eval_pairs else None
    path = models.resolve(model)
    plan = _plan(train_params)
    check_memory(path, plan.memory_kind)
    tokenizer = load_chat_tokenizer(path, model)
    records = _fitting(records, tokenizer, train_params.max_length, "pairs")
    if eval_records:
        eval_records = _fitting(eval_records, tokenizer, train_params.max_length, "eval_pairs")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(seed)
    policy = _load_policy(path, plan, train_params)
    lora = LoraConfig(
        r=train_params.lora_r,
        lora_alpha=train_params.lora_alpha,
        lora_dropout=train_params.lora_dropout,
        target_modules=train_params.target_modules,
        task_type="CAUSAL_LM",
    )
    args = DPOConfig(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=train_params.batch_size,
        per_device_eval_batch_size=train_params.batch_size,
        gradient_accumulation_steps=train_params.gradient_accumulation_steps,
        learning_rate=train_params.learning_rate,
        num_train_epochs=train_params.epochs,
        beta=train_params.beta,
        # sft_weight > 0: RPO-style DPO + NLL on the MR-chosen reply, TRL's own loss mix
        loss_type=["sigmoid", "sft"] if train_params.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, train_params.sft_weight] if train_params.sft_weight > 0 else None,
        max_length=train_params.max_length,
        gradient_checkpointing=train_params.gradient_checkpointing,
        # TRL defaults to bf16 autocast, also on CPU; float32 there, bf16 on CUDA.
        bf16=plan.device == "cuda",
        use_cpu=plan.device == "cpu",
        # TRL switches every dropout off by default, LoRA's too; keep the configured one.
        disable_dropout=False,
        logging_steps=train_params.logging_steps,
        report_to=train_params.report_to,
        eval_strategy="epoch" if eval_records else "no",
        save_strategy="no",
        seed=seed,
        data_seed=seed,
    )
    trainer = DPOTrainer(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(records),
        eval_dataset=Dataset.from_list(eval_records) if eval_records else None,
        processing_class=tokenizer,
        peft_config=lora,
    )
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    eval_seconds = sum(row.get("eval_runtime", 0.0) for row in history)
    steps = trainer.state.global_step
    timing = {
        "reused": False,
        "device": plan.device,
        "quantized_4bit": plan.quantize,
        "pairs": len(records),
        "steps": steps,
        "train_seconds": round(seconds, 3),  # evaluations included
        "eval_seconds": round(eval_seconds, 3),
        "seconds_per_step": round((seconds - eval_seconds) / max(steps, 1), 3),
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated() / GIB, 3) if plan.device == "cuda" else None
        ),
    }
    adapter_dir = _save_adapter(trainer.model, tokenizer, output_dir / "adapter")
    with contextlib.suppress(OSError):  # the trainer's folder stays empty: no checkpoints
        (output_dir / "trainer").rmdir()
    log_path = write_text(
        output_dir / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in history)
    )
    write_json(
        output_dir / "train_summary.json",
        {"model": model, "seed": seed, "train_params": asdict(train_params), "timing": timing},
    )
    mark_done(marker, *inputs)
    return TrainResult(adapter_dir, _log_rows(history), timing, log_path)


def _log_rows(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for row in history if "loss" in row or "eval_loss" in row])


def _stored_result(output_dir: Path) -> TrainResult:
    """The result of an earlier training run in `output_dir`, read back from its files."""
    log_path = output_dir / "train_log.jsonl"
    history = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    timing = json.loads((output_dir / "train_summary.json").read_text())["timing"]
    return TrainResult(
        output_dir / "adapter", _log_rows(history), {**timing, "reused": True}, log_path
    )


def preference_records(pairs: list[dict] | None, name: str) -> list[dict]:
    """The prompt/chosen/rejected part of each pair, checked; metadata stays out of training."""
    if not pairs:
        raise ValueError(
            f"{name} is empty: there are no preference pairs to train on. The pair builder drops "
            "turns whose best and worst MR differ by less than `pairs.min_gap`; lower min_gap, "
            "score more candidates per turn, or generate more turns."
        )
    records = []
    for index, pair in enumerate(pairs):
        record = {key: pair.get(key) for key in ("prompt", "chosen", "rejected")}
        if not all(_is_messages(record[key]) for key in record):
            raise ValueError(
                f"{name}[{index}]: expected TRL's conversational preference format: 'prompt', "
                "'chosen' and 'rejected' as non-empty lists of {'role', 'content'} messages"
            )
        if record["prompt"][-1]["role"] != "user":
            raise ValueError(f"{name}[{index}]: the prompt must end with a user message")
        if any(m["role"] != "assistant" for m in record["chosen"] + record["rejected"]):
            raise ValueError(f"{name}[{index}]: chosen and rejected must be assistant messages")
        records.append(record)
    return records


def _is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    )


def _plan(train_params: TrainParams) -> _Plan:
    """Where and how to train: QLoRA on CUDA (unless quantize_4bit is no), LoRA on CPU."""
    import torch

    global _cpu_note_shown
    if torch.cuda.is_available():
        quantize = train_params.quantize_4bit in ("auto", "yes")
        if quantize:
            _require_bitsandbytes()
        return _Plan("cuda", quantize)
    if train_params.quantize_4bit == "yes":
        raise ValueError(
            "train.quantize_4bit is yes but no CUDA GPU is present: 4-bit NF4 QLoRA needs a GPU. "
            "Use quantize_4bit: auto (QLoRA on a GPU, plain LoRA on CPU) or no."
        )
    if not _cpu_note_shown:
        print(CPU_NOTE)
        _cpu_note_shown = True
    return _Plan("cpu", False)


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError(
            "4-bit QLoRA needs bitsandbytes: pip install 'collab_utils[gpu]' "
            "(or set train.quantize_4bit: no for bf16 LoRA)"
        ) from None


def load_chat_tokenizer(path: str | Path, name: str):
    """The model's tokenizer, with a pad token; fails when it has no chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise ValueError(
            f"{name}: the tokenizer has no chat template, so conversations cannot be rendered for "
            "DPO. Use an instruct/chat model, or add a chat_template.jinja to the model folder."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fitting(records: list[dict], tokenizer, max_length: int, name: str) -> list[dict]:
    """The records whose prompt leaves room for a reply within max_length (TRL drops the rest)."""
    kept = [r for r in records if len(_prompt_ids(tokenizer, r["prompt"])) < max_length]
    if not kept:
        raise ValueError(
            f"{name}: every prompt fills train.max_length = {max_length} tokens, so no reply "
            "token is left to train on; raise max_length."
        )
    if len(kept) < len(records):
        print(
            f"{name}: {len(records) - len(kept)} of {len(records)} left out (prompt >= max_length)"
        )
    return kept


def _prompt_ids(tokenizer, prompt: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(
        prompt, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]


def _load_policy(path, plan: _Plan, train_params: TrainParams):
    import torch
    from transformers import AutoModelForCausalLM

    if not plan.quantize:
        dtype = torch.bfloat16 if plan.device == "cuda" else torch.float32
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, quantization_config=quantization, device_map={"": 0}
    )
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=train_params.gradient_checkpointing
    )


def _save_adapter(model, tokenizer, target: Path) -> Path:
    """Save adapter and tokenizer beside `target`, then swap it in (never half-written)."""
    return save_pretrained(target, model, tokenizer, replace=True)


def completion_logps(
    pairs: list[dict],
    model: str = "embedded",
    adapter_dir: str | Path | None = None,
    *,
    max_length: int | None = None,
    batch_size: int = 4,
) -> pd.DataFrame:
    """Summed log-probabilities of each pair's chosen and rejected completion, under the policy
    (base + adapter) and the reference (base), one row per pair.

    Tokenised as TRL does (chat template, completion after the common prefix, keep-start
    truncation at max_length). Without an adapter, policy and reference are the same model.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from trl.data_utils import common_prefix_length

    records = preference_records(pairs, "pairs")
    path = models.resolve(model)
    tokenizer = load_chat_tokenizer(path, model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    reference = contextlib.nullcontext
    if adapter_dir is not None:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(policy, str(adapter_dir))
        reference = policy.disable_adapter
    policy.eval()

    def tokenized(record: dict) -> list[tuple[list[int], int]]:
        """(ids, completion start) of prompt + chosen, then of prompt + rejected."""
        prompt_ids = _prompt_ids(tokenizer, record["prompt"])
        full = [
            tokenizer.apply_chat_template(
                record["prompt"] + record[key], tokenize=True, return_dict=True
            )["input_ids"]
            for key in ("chosen", "rejected")
        ]
        start = min(common_prefix_length(prompt_ids, ids) for ids in full)
        return [(ids[:max_length] if max_length else ids, start) for ids in full]

    def summed(sequences: list[tuple[list[int], int]]):
        """Summed log-probabilities of each sequence's completion tokens, in one padded batch."""
        width = max(len(ids) for ids, _ in sequences)
        rows = [(ids, start, width - len(ids)) for ids, start in sequences]
        input_ids = torch.tensor([ids + [0] * pad for ids, _, pad in rows], device=device)
        attention = torch.tensor([[1] * len(ids) + [0] * pad for ids, _, pad in rows])
        completion = torch.tensor(
            [[0] * start + [1] * (len(ids) - start) + [0] * pad for ids, start, pad in rows]
        )
        logits = policy(input_ids=input_ids, attention_mask=attention.to(device)).logits
        logits = logits[:, :-1].float()
        targets = input_ids[:, 1:, None]
        logps = logits.gather(-1, targets)[..., 0] - logits.logsumexp(-1)
        return (logps * completion[:, 1:].to(device)).sum(-1).view(-1, 2).tolist()

    rows = []
    with torch.inference_mode():
        for first in range(0, len(records), batch_size):
            sequences = [s for r in records[first : first + batch_size] for s in tokenized(r)]
            policy_logps = summed(sequences)
            with reference():
                reference_logps = summed(sequences)
            for (pc, pr), (rc, rr) in zip(policy_logps, reference_logps):
                rows.append(
                    {
                        "policy_chosen": pc,
                        "policy_rejected": pr,
                        "reference_chosen": rc,
                        "reference_rejected": rr,
                    }
                )
    return pd.DataFrame(rows)


def dpo_loss_on(
    pairs: list[dict],
    model: str = "embedded",
    adapter_dir: str | Path | None = None,
    *,
    beta: float = 0.1,
    max_length: int | None = None,
    batch_size: int = 4,
) -> float:
    """Mean DPO (sigmoid) loss of policy = base + adapter against reference = base on `pairs`:
    -log σ(β[(π_c - ref_c) - (π_r - ref_r)]) over `completion_logps`. Without an adapter: ln 2."""
    import numpy as np

    logps = completion_logps(
        pairs, model, adapter_dir, max_length=max_length, batch_size=batch_size
    )
    margins = beta * (
        (logps.policy_chosen - logps.reference_chosen)
        - (logps.policy_rejected - logps.reference_rejected)
    )
    return float(np.logaddexp(0.0, -margins).mean())
