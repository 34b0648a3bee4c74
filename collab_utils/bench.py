"""`python -m collab_utils bench`: speed measured side by side in one run, printed and stored.

Every number here comes from this machine in this process; ratios compare two paths measured
back to back, so they mean something even on a busy laptop. Tests never assert timings.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from . import config, datagen, llm, serve, session, simulate
from .cache import GenerationCache
from .config import ModelSpec
from .io import write_json
from .runs import environment

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in two sentences what a hash table is.",
    "Give me three tips for writing a clear email.",
    "What is the derivative of x squared times sin x?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Write a haiku about autumn rain.",
    "How do I reverse a list in Python?",
    "List four prime numbers larger than 50.",
]
SAMPLING = {"max_new_tokens": 64, "temperature": 0.8, "top_p": 0.95}


def conversations(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]


def hf_tokens_per_second(backend: llm.HFBackend, batch_size: int, rounds: int = 2) -> dict:
    """Generated tokens/s of raw batched `generate` at one batch size (no cache)."""
    rows = backend.prompt_ids(conversations(batch_size))
    backend.generate_ids(rows[:1], {**SAMPLING, "max_new_tokens": 4}, [0])  # warm-up
    tokens, seconds = 0, 0.0
    for r in range(rounds):
        started = time.perf_counter()
        out = backend.generate_ids(rows, SAMPLING, [r * 100 + i for i in range(batch_size)])
        seconds += time.perf_counter() - started
        tokens += sum(len(ids) for ids in out)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": tokens / seconds}


def openai_tokens_per_second(n_requests: int = 8, concurrency: int = 8) -> dict:
    """Generated tokens/s of the openai backend against llama.cpp's server on loopback."""
    with serve.llama_server() as base_url:
        spec = ModelSpec(
            backend="openai", model=serve.SERVED_NAME, base_url=base_url, concurrency=concurrency
        )
        backend = llm.load_backend(spec, None)
        backend.chat(conversations(1), max_new_tokens=4, temperature=0.0, seed=0)  # warm-up
        started = time.perf_counter()
        gens = backend.chat(conversations(n_requests), **SAMPLING, seed=list(range(n_requests)))
        seconds = time.perf_counter() - started
    tokens = sum(g.completion_tokens for g in gens)
    return {
        "requests": n_requests,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": tokens / seconds,
    }


def cache_hit_latency(backend: llm.Backend, n: int = 64) -> dict:
    """Seconds per request answered from the cache (after one cold call fills it)."""
    with tempfile.TemporaryDirectory() as folder:
        cached = llm.load_backend(backend.spec, GenerationCache(Path(folder) / "bench.sqlite"))
        convs, seeds = conversations(n), list(range(n))
        cached.chat(convs, **{**SAMPLING, "max_new_tokens": 8}, seed=seeds)
        started = time.perf_counter()
        gens = cached.chat(convs, **{**SAMPLING, "max_new_tokens": 8}, seed=seeds)
        seconds = time.perf_counter() - started
        assert all(g.cached for g in gens)
    return {"requests": n, "seconds_per_hit": seconds / n}


def sweep_rollout_reuse(lams=(5e-4, 1e-3, 2e-3), base: str = "params/smoke.yaml") -> dict:
    """Multi-turn data generation for a λ sweep on one cold cache, the path pinned to the first
    λ: the generations each run sent to a model. Runs after the first should need none."""
    with tempfile.TemporaryDirectory(prefix="collab-sweep-") as folder:
        shared = [f"output_dir={folder}", f"cache_path={folder}/cache.sqlite"]
        shared.append(f"pairs.path_lam={lams[0]}")
        counts, started = [], time.perf_counter()
        for i, lam in enumerate(lams):
            params = config.load(base, [*shared, f"reward.lam={lam}", f"run_name=lam{i}"])
            roles = session.load_roles(params)
            train_tasks, _ = session.task_splits(params)
            datagen.generate(train_tasks, roles, params, params.run_dir / "datagen", progress=False)
            counts.append(sum(roles.generated().values()))
    return {
        "lams": list(lams),
        "generations_per_run": counts,
        "sweep_extra_rollout_generations": sum(counts[1:]),
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_bench(out: str | Path | None = None, *, with_server: bool = True) -> dict:
    """Measure everything, print a summary and write JSON to `out`."""
    results: dict = {"environment": environment(), "sampling": SAMPLING}
    hf = llm.load_backend("embedded", None)
    results["hf_load_seconds"] = round(hf.load_seconds, 2)
    results["hf_batch1"] = hf_tokens_per_second(hf, 1)
    results["hf_batch8"] = hf_tokens_per_second(hf, 8)
    results["hf_batch8_vs_batch1"] = (
        results["hf_batch8"]["tokens_per_s"] / results["hf_batch1"]["tokens_per_s"]
    )
    if with_server:
        results["openai_llama_cpp"] = openai_tokens_per_second()
    results["cache_hit"] = cache_hit_latency(hf)
    results["rollouts"] = simulate.bench_rollouts()
    results["lockstep_speedup"] = results["rollouts"]["lockstep_speedup"]
    results["engine_vs_raw_generate"] = results["rollouts"]["engine_vs_raw_generate"]
    results["sweep"] = sweep_rollout_reuse()
    results["sweep_extra_rollout_generations"] = results["sweep"]["sweep_extra_rollout_generations"]
    summary = {k: v for k, v in results.items() if k != "environment"}
    print(json.dumps(summary, indent=2, default=float))
    if out:
        write_json(out, results)
    return results
