"""Will LoRA training of a model fit this machine? An estimate from the model's config alone.

Checked before any weights load, so a too-large model fails at once with the numbers and a way
out (a smaller model, or QLoRA on a GPU).
"""

from __future__ import annotations

from pathlib import Path

# Bytes a base-model parameter takes while training: float32 on CPU, bf16 on CUDA, NF4 in QLoRA.
BYTES_PER_PARAM = {"cpu": 4.0, "cuda": 2.0, "cuda-4bit": 0.5}
# On top of the frozen weights: LoRA weights with their gradients and Adam states, activations
# of a small batch, the framework itself. A rough guide, not a promise.
WEIGHT_OVERHEAD = 0.5
FIXED_OVERHEAD_BYTES = 1 << 30
GIB = 1 << 30


class ModelTooLargeError(MemoryError):
    """The model's estimated training footprint exceeds the memory available."""


def count_parameters(path: str | Path) -> int | None:
    """Parameters of the model in `path`, from its config alone (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError):  # an architecture transformers cannot build
        return None
    return sum(p.numel() for p in skeleton.parameters())


def check_memory(path: str | Path, memory_kind: str) -> None:
    """Raise ModelTooLargeError when training `path` would not fit; `memory_kind` as in
    BYTES_PER_PARAM ("cpu", "cuda", "cuda-4bit")."""
    n_params = count_parameters(path)
    if n_params is None:
        return
    weights = n_params * BYTES_PER_PARAM[memory_kind]
    needed = weights * (1 + WEIGHT_OVERHEAD) + FIXED_OVERHEAD_BYTES
    available, where = _available_memory(memory_kind)
    if needed <= available:
        return
    precision = {"cpu": "float32", "cuda": "bf16", "cuda-4bit": "4-bit NF4"}[memory_kind]
    hint = (
        "Use a smaller model, or train on a CUDA GPU with QLoRA (train.quantize_4bit: auto)."
        if memory_kind != "cuda-4bit"
        else "Use a smaller model or a GPU with more memory."
    )
    raise ModelTooLargeError(
        f"{path}: {n_params / 1e9:.2f}B parameters need about {needed / GIB:.1f} GiB to train "
        f"with LoRA in {precision} ({weights / GIB:.1f} GiB of weights + optimizer, LoRA and "
        f"activation overhead), but only {available / GIB:.1f} GiB of {where} is available. {hint}"
    )


def _available_memory(memory_kind: str) -> tuple[float, str]:
    if memory_kind == "cpu":
        import psutil

        return float(psutil.virtual_memory().available), "RAM"
    import torch

    return float(torch.cuda.mem_get_info()[0]), "GPU memory"
