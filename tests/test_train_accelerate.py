"""DPO under `accelerate launch` with two processes (DDP over gloo on CPU) equals one process.

The same training, `python -m collab_utils train` on 8 pairs (embedded 135M model, LoRA dropout
0, 2 epochs, lr 1e-3, gradient checkpointing on as in the default recipe), runs twice:

- two processes, `accelerate launch --config_file params/accelerate/cpu_ddp_2.yaml`, batch 2 per
  process (global batch 4): 4 optimizer steps;
- one process, plain `python`, batch 4: 4 optimizer steps.

tests/accelerate_dpo_entry.py logs the pairs of every training batch per rank. What holds, and
what is asserted:

- Sharding: accelerate's dataloader draws one permutation per epoch (the same seed on every
  rank) and deals its batches of 2 round-robin: at step k rank 0 gets batch 2k and rank 1 batch
  2k+1. So the ranks never share a pair, each epoch covers every pair once, and rank 0's pairs
  followed by rank 1's are exactly the single process's batch of 4 at the same step.
- Weights: the DPO loss is a mean over pairs, and DDP averages the two ranks' gradients, so the
  global gradient is the single-process one and the saved adapters agree up to float32
  rounding, not bit for bit: each rank pads its pairs to its own longest sequence (different
  matrix shapes, different summation orders), the all-reduce adds in another order, and Adam
  divides by sqrt(v), which turns a rounding-level gradient difference on a near-zero gradient
  into a larger relative step difference. Measured on 2 cores: largest elementwise difference
  4.6e-5, largest per-tensor relative difference (Frobenius) 8.7e-5. For scale, the same single
  process trained on the same pairs dealt into different batches (the pairs file reversed)
  differs by 9.5e-4 elementwise and 1.7e-2 relative, and the lora_B weights (zero at init)
  reach 2.5e-3. The bounds below (atol 1e-4 + rtol 1e-2, relative 1e-3) sit between the two,
  so a rank that trained on the wrong or the same data, a gradient summed instead of averaged,
  or a different global batch fails them.

Parameters files: every params/accelerate/*.yaml passes accelerate's own config schema (it
rejects unknown keys), and the GPU recipes load with `config.load` (test_config checks all of
params/*.yaml).
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collab_utils import config

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "tests" / "accelerate_dpo_entry.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")
PAIRS = 8
BATCH = 2  # per process
EPOCHS = 2
STEPS = EPOCHS * PAIRS // (2 * BATCH)
TOPICS = [
    "sorts a list",
    "parses a date",
    "merges two dicts",
    "reverses a string",
    "counts words",
    "checks a palindrome",
    "flattens a list",
    "reads a CSV file",
]
PARAMS = f"""run_name: ddp
seed: 0
train:
  lora_dropout: 0.0
  learning_rate: 1.0e-3
  epochs: {EPOCHS}
  batch_size: {BATCH}
  gradient_accumulation_steps: 1
  max_length: 128
"""


def write_run(root: Path) -> Path:
    """A params file and its run folder holding pairs.jsonl; pair i's reply starts 'Pair i:'."""
    run = root / "out" / "ddp"
    run.mkdir(parents=True)
    with (run / "pairs.jsonl").open("w") as out:
        for i, topic in enumerate(TOPICS[:PAIRS]):
            pair = {
                "prompt": [{"role": "user", "content": f"Write a function that {topic}."}],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": f"Pair {i}: before I write the function that {topic}, "
                        "what inputs should it accept?",
                    }
                ],
                "rejected": [{"role": "assistant", "content": f"def f{i}(x): return x"}],
            }
            out.write(json.dumps(pair) + "\n")
    params = root / "params.yaml"
    params.write_text(PARAMS + f"output_dir: {root / 'out'}\n")
    return params


def batches(log_dir: Path) -> dict[tuple[int, int], list[int]]:
    """{(step, rank): the pair numbers of that rank's batch}, from the entry script's logs."""
    seen = {}
    for path in sorted(log_dir.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            ids = [int(re.search(r"Pair (\d+):", text).group(1)) for text in row["chosen"]]
            key = (row["step"], row["rank"])
            assert key not in seen, f"two training batches logged for step/rank {key}"
            seen[key] = ids
            seen.setdefault("world_sizes", set()).add(row["world_size"])
    return seen


def train(root: Path, command: list[str], extra_env: dict, overrides=()) -> dict:
    params = write_run(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
    started = time.perf_counter()
    done = subprocess.run(
        [*command, str(ENTRY), str(root / "log"), str(params), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    train_dir = root / "out" / "ddp" / "train"
    return {
        "seconds": seconds,
        "batches": batches(root / "log"),
        "train_dir": train_dir,
        "summary": json.loads((train_dir / "train_summary.json").read_text()),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-process run, then the one-process run (one at a time: 2 cores)."""
    two = train(
        tmp_path_factory.mktemp("two"),
        [
            str(ACCELERATE),
            "launch",
            "--config_file",
            str(ROOT / "params" / "accelerate" / "cpu_ddp_2.yaml"),
            "--num_cpu_threads_per_process",
            "1",
            "--main_process_port",
            str(29500 + os.getpid() % 1000),
        ],
        {"OMP_NUM_THREADS": "1"},
    )
    one = train(
        tmp_path_factory.mktemp("one"),
        [sys.executable],
        # one thread: beside other busy processes two threads oversubscribe the cores (5-10x
        # slower steps); the thread count changes float rounding only (the bounds below)
        {"OMP_NUM_THREADS": "1"},
        ["--set", f"train.batch_size={2 * BATCH}"],
    )
    print(f"\n2 processes: {two['seconds']:.1f} s; 1 process: {one['seconds']:.1f} s")
    return two, one


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test also pays for both runs (2-3 min on 2 calm cores)
def test_two_ranks_train_on_different_shards_of_each_global_batch(runs):
    two, one = runs
    seen, single = dict(two["batches"]), dict(one["batches"])
    assert seen.pop("world_sizes") == {2}
    assert single.pop("world_sizes") == {1}
    assert sorted(seen) == [(step, rank) for step in range(STEPS) for rank in (0, 1)]
    per_epoch = STEPS // EPOCHS
    for step in range(STEPS):
        rank0, rank1 = seen[step, 0], seen[step, 1]
        assert len(rank0) == len(rank1) == BATCH
        assert not set(rank0) & set(rank1), f"step {step}: both ranks trained on {rank0}"
        # the global batch of the two ranks is the single process's batch at that step
        assert rank0 + rank1 == single[step, 0], (step, rank0, rank1, single[step, 0])
    for epoch in range(EPOCHS):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        for rank in (0, 1):
            assert len({i for s in steps for i in seen[s, rank]}) == per_epoch * BATCH
        assert sorted(i for s in steps for r in (0, 1) for i in seen[s, r]) == list(range(PAIRS))
    # the epochs are shuffled anew (not the same order twice)
    assert [seen[s, 0] for s in range(per_epoch)] != [seen[s, 0] for s in range(per_epoch, STEPS)]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test also pays for both runs (2-3 min on 2 calm cores)
def test_two_process_adapter_equals_the_one_process_adapter(runs):
    import torch
    from safetensors.torch import load_file

    two, one = runs
    assert two["summary"]["timing"]["steps"] == one["summary"]["timing"]["steps"] == STEPS
    assert two["summary"]["train_params"]["batch_size"] == BATCH
    assert one["summary"]["train_params"]["batch_size"] == 2 * BATCH
    a = load_file(two["train_dir"] / "adapter" / "adapter_model.safetensors")
    b = load_file(one["train_dir"] / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 30 * 7 * 2
    lora_b = max(b[k].abs().max().item() for k in b if "lora_B" in k)
    assert (
        lora_b > 1e-3
    )  # trained well away from lora_B's zero init: the comparison means something
    worst_abs = max((a[k] - b[k]).abs().max().item() for k in a)
    worst_rel = max(((a[k] - b[k]).norm() / b[k].norm()).item() for k in a)
    print(
        f"\nmax |2 proc - 1 proc| {worst_abs:.2e}; max relative {worst_rel:.2e}; max |B| {lora_b:.2e}"
    )
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-2, atol=1e-4), name
    assert worst_rel < 1e-3


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test also pays for both runs (2-3 min on 2 calm cores)
def test_only_rank_zero_wrote_the_training_outputs(runs):
    two, _ = runs
    names = sorted(p.name for p in two["train_dir"].iterdir())
    # no staging folder of a second writer left behind (.adapter.*), one summary, one log
    assert names == ["adapter", "inputs.sha256", "train_log.jsonl", "train_summary.json"]
    logged = [json.loads(line) for line in (two["train_dir"] / "train_log.jsonl").open()]
    assert sum("loss" in row for row in logged) == STEPS


def test_accelerate_configs_pass_accelerates_schema():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((ROOT / "params" / "accelerate").glob("*.yaml"))
    assert {f.name for f in files} >= {
        "cpu_ddp_2.yaml",
        "ddp_gpus.yaml",
        "deepspeed_zero2.yaml",
        "fsdp.yaml",
    }
    kinds = {}
    for path in files:
        assert path.read_text().startswith("#"), f"{path.name}: no comment header"
        loaded = load_config_from_file(str(path))  # unknown keys raise ValueError
        kinds[path.name] = str(loaded.distributed_type).split(".")[-1]
    assert kinds["cpu_ddp_2.yaml"] == "MULTI_GPU"  # accelerate's torchrun path, see the file
    assert kinds["deepspeed_zero2.yaml"] == "DEEPSPEED"
    assert kinds["fsdp.yaml"] == "FSDP"


def test_gpu_recipes_load():
    recipes = {path.stem: config.load(path) for path in (ROOT / "params").glob("gpu_qlora*.yaml")}
    assert {"gpu_qlora", "gpu_qlora_sft_dpo", "gpu_qlora_online_dpo", "gpu_qlora_grpo"} <= set(
        recipes
    )
    for name, params in recipes.items():
        assert params.models.assistant.backend == "openai", name  # rollouts on vLLM servers
        assert params.train.quantize_4bit == "auto", name  # QLoRA on CUDA
    methods = {name: (p.train.method, p.train.init) for name, p in recipes.items()}
    assert methods["gpu_qlora"] == ("dpo", "base")
    assert methods["gpu_qlora_sft_dpo"] == ("dpo", "sft")
    assert methods["gpu_qlora_online_dpo"] == ("online_dpo", "base")
    assert methods["gpu_qlora_grpo"] == ("grpo", "base")
