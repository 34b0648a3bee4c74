"""Rollouts through the `openai` backend across llama.cpp servers on loopback, measured side
by side: one server vs two (futures per second, requests in flight per server) and concurrency 1
vs the configured concurrency. Called by `python -m collab_utils bench`; tests never time.

    from collab_utils import bench_servers
    bench_servers.run()   # starts two servers, returns {"servers": ..., "concurrency": ...}

On a 2-core machine two CPU servers share the same cores, so expect little gain from the second;
the requests-in-flight figures show whether the backend kept both busy. On GPUs (one vLLM server
per GPU) the same code spreads the futures over the replicas.
"""

from __future__ import annotations

import time

from . import llm, serve, simulate, tasks, users
from .config import ModelSpec, Sampling

SAMPLING = Sampling(max_new_tokens=16, temperature=0.8, top_p=1.0)


def rollout_setup(urls: list[str], n_contexts: int = 4, n_candidates: int = 2, seed: int = 0):
    """Contexts (built-in code tasks) and their candidates, generated once (not timed)."""
    contexts = [simulate.Context.opening(t) for t in tasks.load("builtin:code")[:n_contexts]]
    backend = _backend(urls[:1], concurrency=ModelSpec().concurrency)
    candidates = simulate.generate_candidates(
        contexts, backend, n=n_candidates, proactive_fraction=0.5, seed=seed, sampling=SAMPLING
    )
    return contexts, candidates


def timed_rollout(
    urls: list[str],
    contexts,
    candidates,
    *,
    concurrency: int,
    n_samples: int = 3,
    window: int = 1,
    seed: int = 0,
    sampling: Sampling = SAMPLING,
) -> dict:
    """One rollout (no cache) through an openai backend over `urls`: futures per second and,
    per server, requests sent and their mean and peak number in flight."""
    backend = _backend(urls, concurrency=concurrency)
    backend.reset_server_stats()
    started = time.perf_counter()
    futures = simulate.rollout(
        contexts, candidates, assistant=backend, user=users.AgendaUser(), n_samples=n_samples,
        window=window, seed=seed, sampling=sampling, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    failed = sum(f.stop_reason == "error" for f in futures)
    if failed:
        raise RuntimeError(f"{failed} futures failed: {futures[0].error}")
    stats = backend.server_stats()
    return {
        "servers": len(urls),
        "concurrency": concurrency,
        "futures": len(futures),
        "seconds": round(seconds, 3),
        "futures_per_s": round(len(futures) / seconds, 4),
        "per_server": {
            url: {k: s[k] for k in ("ok", "mean_in_flight", "peak_in_flight")}
            for url, s in stats.items()
        },
    }


def _interleaved(variants: dict[str, dict], contexts, candidates, repeats: int) -> dict:
    """Each variant `repeats` times, interleaved (A B A B) so that a busy machine's drift hits
    all alike; per variant the fastest run, with every run's seconds beside it."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, options in variants.items():
            runs[name].append(timed_rollout(contexts=contexts, candidates=candidates, **options))
    best = {}
    for name, results in runs.items():
        fastest = min(results, key=lambda r: r["seconds"])
        best[name] = {**fastest, "seconds_each_run": [r["seconds"] for r in results]}
    return best


def servers_scaling(urls, contexts, candidates, *, concurrency=None, repeats: int = 2) -> dict:
    """The same rollout with one server and with two: futures/s and their ratio."""
    concurrency = concurrency or ModelSpec().concurrency
    variants = {
        "one_server": {"urls": urls[:1], "concurrency": concurrency},
        "two_servers": {"urls": urls[:2], "concurrency": concurrency},
    }
    out = _interleaved(variants, contexts, candidates, repeats)
    ratio = out["two_servers"]["futures_per_s"] / out["one_server"]["futures_per_s"]
    return {**out, "two_vs_one_futures_per_s": round(ratio, 3)}


def concurrency_gain(urls, contexts, candidates, *, concurrency=None, repeats: int = 2) -> dict:
    """The same rollout over `urls` with concurrency 1 and with the configured concurrency."""
    concurrency = concurrency or ModelSpec().concurrency
    variants = {
        "concurrency_1": {"urls": urls, "concurrency": 1},
        f"concurrency_{concurrency}": {"urls": urls, "concurrency": concurrency},
    }
    out = _interleaved(variants, contexts, candidates, repeats)
    ratio = (
        out[f"concurrency_{concurrency}"]["futures_per_s"] / out["concurrency_1"]["futures_per_s"]
    )
    return {**out, "configured_vs_1_futures_per_s": round(ratio, 3)}


def run(
    n_servers: int = 2,
    concurrency: int | None = None,
    n_threads: int | None = None,
    repeats: int = 2,
) -> dict:
    """Start `n_servers` llama.cpp servers (the CPU cores shared between them), then measure
    `servers_scaling` and `concurrency_gain` on the same contexts and candidates."""
    with serve.llama_servers(n_servers, n_threads=n_threads) as servers:
        urls = [s.url for s in servers]
        for url in urls:  # the first requests of a fresh server are slow: not measured
            _backend([url], concurrency=1).chat(
                [[{"role": "user", "content": "Hi"}]] * 2, max_new_tokens=4, temperature=0.0,
                seed=[0, 1],
            )  # fmt: skip
        contexts, candidates = rollout_setup(urls)
        return {
            "n_threads_per_server": servers[0].n_threads,
            "max_new_tokens": SAMPLING.max_new_tokens,
            "repeats": repeats,
            "servers": servers_scaling(
                urls, contexts, candidates, concurrency=concurrency, repeats=repeats
            ),
            "concurrency": concurrency_gain(
                urls, contexts, candidates, concurrency=concurrency, repeats=repeats
            ),
        }


def _backend(urls: list[str], *, concurrency: int):
    spec = ModelSpec(
        backend="openai", model=serve.SERVED_NAME, base_url=list(urls), concurrency=concurrency
    )
    return llm.load_backend(spec, False)
