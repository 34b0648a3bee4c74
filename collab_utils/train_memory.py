"""Will LoRA training of a model fit this machine? An estimate from the model's config alone.

Checked before any weights load, so a too-large model fails at once with the numbers and a way
out (a smaller model, or QLoRA on a GPU). And how many CPU threads to train with
(`cpu_threads`: the cores other processes leave free).
"""

from __future__ import annotations

import contextlib
import time
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


@contextlib.contextmanager
def cpu_threads(device: str):
    """On CPU, train with as many torch threads as cores other processes leave free.

    The cause of CPU training running 3-60x slower per step at times: torch starts one
    intra-op thread per core, and when another process keeps a core busy (a test suite, a
    notebook kernel) every op waits at its barrier for the descheduled sibling thread. Measured
    on 2 cores, SFT of SmolLM2-135M, batch 2: 1.9 s/step calm; 5.9 s/step with one busy-loop
    process beside it (2.7 with 1 thread); 90 s/step beside the pipeline tests' notebook kernel
    (2.3 with the free-core count this picks).
    None of SFTTrainer's own settings (bf16 autocast, gradient checkpointing, workers) comes near.
    OMP_NUM_THREADS, when set, is left as it is.
    """
    import os

    import torch

    before = torch.get_num_threads()
    free = _free_cores() if device == "cpu" and "OMP_NUM_THREADS" not in os.environ else None
    if free is not None and free < before:
        torch.set_num_threads(max(1, free))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _free_cores(seconds: float = 0.5) -> int | None:
    """Cores not kept busy by other processes over `seconds` (Linux /proc); None elsewhere."""
    import os

    def busy() -> tuple[float, float]:
        with open("/proc/stat") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
        with open("/proc/self/stat") as own:
            mine = own.read().rsplit(")", 1)[1].split()
        return sum(fields[:8]) - fields[3] - fields[4], float(mine[11]) + float(mine[12])

    try:
        cores = len(os.sched_getaffinity(0))
        (all_0, mine_0), started = busy(), time.monotonic()
        time.sleep(seconds)
        (all_1, mine_1), elapsed = busy(), time.monotonic() - started
        ticks = os.sysconf("SC_CLK_TCK") * elapsed
        return cores - round(((all_1 - all_0) - (mine_1 - mine_0)) / ticks)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
