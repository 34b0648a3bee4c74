"""`python -m collab_utils bench`: speed measured side by side in one run, printed and stored.

Every number here comes from this machine in this process; ratios compare two paths measured
back to back, so they mean something even on a busy laptop. Tests never assert timings.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import (
    bench_engine,
    bench_servers,
    bench_training,
    config,
    datagen,
    llm,
    sandbox,
    serve,
    session,
    simulate,
    tasks,
    users,
)
from .cache import GenerationCache
from .config import ModelSpec, Sampling
from .io import write_json
from .llm import batching
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


# ------------------------------------------------------------------ rollouts


def rollout_one_at_a_time(
    contexts: list[simulate.Context],
    candidates: list[list[simulate.Candidate]],
    *,
    assistant,
    user,
    n_samples: int,
    window: int,
    seed: int,
    sampling: Sampling,
    token_budget: int | None = None,
    progress: bool = False,
) -> list[simulate.Future]:
    """The same futures as `rollout` (same seeds), generated one future at a time.

    The baseline of `bench_rollouts`, and the test that both paths agree.
    """
    futures = simulate.new_futures(contexts, candidates, n_samples, window, seed, assistant)
    with tqdm(total=len(futures) * window, desc="one at a time", disable=not progress) as bar:
        for future in futures:
            simulate.advance(
                [future],
                contexts,
                assistant=assistant,
                user=user,
                window=window,
                seed=seed,
                sampling=sampling,
                token_budget=token_budget,
                bar=bar,
            )
    return futures


class _RecordingBackend:
    """Passes `chat` through to a backend and keeps every request with its generations."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def chat(self, conversations, **kwargs):
        generations = self.backend.chat(conversations, **kwargs)
        # copies: the engine appends the next turns to these very lists
        self.calls.append(([list(c) for c in conversations], kwargs, generations))
        return generations

    def count_tokens(self, texts):
        return self.backend.count_tokens(texts)


def _raw_generate_seconds(backend, calls) -> tuple[float, int, int]:
    """Time `backend.generate_ids` alone on the batches the engine sent to the model.

    Returns the seconds, the tokens and how many replies differ from the engine's (0 when the
    replay re-sends exactly the engine's requests).
    """
    seconds, tokens, differ = 0.0, 0, 0
    for conversations, kwargs, generations in calls:
        requests = zip(conversations, kwargs["seed"], generations)
        fresh = [(c, s, g) for c, s, g in requests if not g.cached]
        if not fresh:
            continue
        params = {k: kwargs.get(k, 1.0) for k in ("max_new_tokens", "temperature", "top_p")}
        prompts = backend.prompt_ids([c for c, _, _ in fresh])
        spec = backend.spec
        for planned in batching.plan(
            prompts,
            max_rows=spec.batch_size,
            max_tokens=spec.batch_tokens,
            new_tokens=params["max_new_tokens"],
            reuse_prefixes=spec.reuse_prefixes,
        ):
            batch = planned.rows
            started = time.perf_counter()
            ids = backend.generate_ids(
                [prompts[i] for i in batch],
                params,
                [fresh[i][1] for i in batch],
                planned.prefix_lengths,
            )
            seconds += time.perf_counter() - started
            tokens += sum(len(row) for row in ids)
            texts = backend.tokenizer.batch_decode(ids, skip_special_tokens=True)
            differ += sum(t.strip() != fresh[i][2].text for t, i in zip(texts, batch))
    return seconds, tokens, differ


def bench_rollouts(
    params=None,
    *,
    n_contexts: int = 4,
    n_candidates: int = 4,
    n_samples: int = 3,
    window: int = 2,
    max_new_tokens: int = 64,
    user: str = "agenda",
) -> dict:
    """Lock-step vs one-at-a-time futures, and the engine vs raw batched `generate`.

    Runs on `params.models.assistant` (default: the embedded hf model), each path with a cold
    cache in a temp folder, on the openings of `builtin:code`. `user` is 'agenda' (only the
    assistant is a model) or 'llm' (the same model plays both roles). Returns the two ratios
    and the seconds, token and call counts they come from.
    """
    spec = params.models.assistant if params is not None else ModelSpec()
    seed = params.seed if params is not None else 0
    sampling = Sampling(max_new_tokens, temperature=0.8)
    contexts = [simulate.Context.opening(t) for t in tasks.load("builtin:code")[:n_contexts]]
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as folder:

        def engine(cache_name):
            backend = _RecordingBackend(llm.load_backend(spec, Path(folder) / cache_name))
            simulator = users.AgendaUser() if user == "agenda" else users.LLMUser(backend, sampling)
            settings = dict(user=simulator, n_samples=n_samples, window=window, seed=seed)
            return backend, {**settings, "sampling": sampling, "assistant": backend}

        lockstep, lockstep_settings = engine("lockstep.sqlite")
        candidates = simulate.generate_candidates(
            contexts, lockstep, n=n_candidates, proactive_fraction=0.5, seed=seed, sampling=sampling
        )
        lockstep.calls.clear()
        calls_before = lockstep.backend.model_calls
        started = time.perf_counter()
        simulate.rollout(contexts, candidates, progress=False, **lockstep_settings)
        lockstep_s = time.perf_counter() - started
        lockstep_calls = lockstep.backend.model_calls - calls_before

        single, single_settings = engine("one_at_a_time.sqlite")
        started = time.perf_counter()
        rollout_one_at_a_time(contexts, candidates, **single_settings)
        single_s = time.perf_counter() - started

        raw_s, raw_tokens, raw_differ = _raw_generate_seconds(lockstep.backend, lockstep.calls)
    engine_tokens = sum(
        g.completion_tokens for _, _, gens in lockstep.calls for g in gens if not g.cached
    )
    return {
        "lockstep_speedup": single_s / lockstep_s,
        "engine_vs_raw_generate": (engine_tokens / lockstep_s) / (raw_tokens / raw_s),
        "lockstep_s": lockstep_s,
        "one_at_a_time_s": single_s,
        "raw_generate_s": raw_s,
        "engine_tokens": engine_tokens,
        "raw_tokens": raw_tokens,
        "raw_replies_differing": raw_differ,  # 0: the replay re-sent the engine's requests
        "lockstep_model_calls": lockstep_calls,
        "one_at_a_time_model_calls": single.backend.model_calls,
        "futures": n_contexts * n_candidates * n_samples,
        "window": window,
        "max_new_tokens": max_new_tokens,
        "user": user,
        "model": spec.model,
    }


def run_bench(
    out: str | Path | None = None, *, with_server: bool = True, only: str | None = None
) -> dict:
    """Measure everything (or `only` "engine": the engine against llama-server, or
    "training": the online methods' step costs), print a summary and write JSON to `out`."""
    results: dict = {"environment": environment(), "sampling": SAMPLING}
    if only == "training":
        results["online_training"] = bench_training.run()
        return _report(results, out)
    results.update(engine_vs_llama_server())
    if only == "engine":
        return _report(results, out)
    hf = llm.load_backend("embedded", None)
    results["hf_load_seconds"] = round(hf.load_seconds, 2)
    results["hf_batch1"] = hf_tokens_per_second(hf, 1)
    results["hf_batch8"] = hf_tokens_per_second(hf, 8)
    results["hf_batch8_vs_batch1"] = (
        results["hf_batch8"]["tokens_per_s"] / results["hf_batch1"]["tokens_per_s"]
    )
    if with_server:
        results["openai_llama_cpp"] = openai_tokens_per_second()
        results["servers"] = bench_servers.run(repeats=1)
    results["cache_hit"] = cache_hit_latency(hf)
    results["sandbox"] = sandbox.measure_overhead()
    results["rollouts"] = bench_rollouts()
    results["lockstep_speedup"] = results["rollouts"]["lockstep_speedup"]
    results["engine_vs_raw_generate"] = results["rollouts"]["engine_vs_raw_generate"]
    results["sweep"] = sweep_rollout_reuse()
    results["sweep_extra_rollout_generations"] = results["sweep"]["sweep_extra_rollout_generations"]
    results["online_training"] = bench_training.run()  # per optimizer step: online DPO, GRPO
    return _report(results, out)


def engine_vs_llama_server() -> dict:
    """`bench_engine.run` on the 48 requests, with its ratios as top-level keys."""
    peer = bench_engine.run(SAMPLING, conversations(bench_engine.N_REQUESTS))
    keys = (
        "engine_vs_llama_server_requests",
        "engine_vs_llama_server_rollout",
        "engine_after_vs_before_requests",
        "engine_after_vs_before_rollout",
    )
    skipped = "skipped: no llama-server (make llama-server)"
    return {"engine_vs_llama_server": peer, **{k: peer.get(k, skipped) for k in keys}}


def _report(results: dict, out) -> dict:
    summary = {k: v for k, v in results.items() if k != "environment"}
    print(json.dumps(summary, indent=2, default=float))
    if out:
        write_json(out, results)
    return results
