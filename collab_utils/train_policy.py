"""The policy that trains: where (QLoRA on CUDA, LoRA in float32 on CPU), how its base model and
LoRA adapter load, and how the trained adapter is saved. No TRL here (that is `train`).

    plan = train_policy.plan_for(params.train)          # Plan("cpu", quantize=False) here
    policy = train_policy.load_policy(path, plan, params.train, init_adapter=None)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import TrainParams
from .io import save_pretrained

CPU_NOTE = "no CUDA: plain LoRA on CPU in float32, QLoRA needs a GPU"
_cpu_note_shown = False


@dataclass(frozen=True)
class Plan:
    device: str  # "cpu" or "cuda"
    quantize: bool

    @property
    def memory_kind(self) -> str:
        return "cuda-4bit" if self.quantize else self.device


def plan_for(train_params: TrainParams) -> Plan:
    """Where and how to train: QLoRA on CUDA (unless quantize_4bit is no), LoRA on CPU."""
    import torch

    global _cpu_note_shown
    if torch.cuda.is_available():
        quantize = train_params.quantize_4bit in ("auto", "yes")
        if quantize:
            _require_bitsandbytes()
        return Plan("cuda", quantize)
    if train_params.quantize_4bit == "yes":
        raise ValueError(
            "train.quantize_4bit is yes but no CUDA GPU is present: 4-bit NF4 QLoRA needs a GPU. "
            "Use quantize_4bit: auto (QLoRA on a GPU, plain LoRA on CPU) or no."
        )
    if not _cpu_note_shown:
        print(CPU_NOTE)
        _cpu_note_shown = True
    return Plan("cpu", False)


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError(
            "4-bit QLoRA needs bitsandbytes: pip install 'collab_utils[gpu]' "
            "(or set train.quantize_4bit: no for bf16 LoRA)"
        ) from None


def lora_config(train_params: TrainParams):
    """A fresh adapter's settings (paper defaults in `TrainParams`)."""
    from peft import LoraConfig

    return LoraConfig(
        r=train_params.lora_r,
        lora_alpha=train_params.lora_alpha,
        lora_dropout=train_params.lora_dropout,
        target_modules=train_params.target_modules,
        task_type="CAUSAL_LM",
    )


def load_policy(path, plan: Plan, train_params: TrainParams, init_adapter: Path | None = None):
    """The base model (4-bit on CUDA unless quantize_4bit is no), with `init_adapter` loaded
    trainable on top when given."""
    import torch
    from transformers import AutoModelForCausalLM

    if not plan.quantize:
        dtype = torch.bfloat16 if plan.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch.bfloat16,
            quantization_config=quantization,
            # each process of `accelerate launch` on its own GPU (LOCAL_RANK), else GPU 0
            device_map={"": int(os.environ.get("LOCAL_RANK", 0))},
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train_params.gradient_checkpointing
        )
    if init_adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)


def save_adapter(model, tokenizer, target: Path) -> Path:
    """Save adapter and tokenizer beside `target`, then swap it in (never half-written).
    Only the trained adapter: DPO from an adapter also holds TRL's frozen "ref" copy of it."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    return save_pretrained(target, model, tokenizer, replace=True)
