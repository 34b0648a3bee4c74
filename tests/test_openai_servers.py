"""Rollouts across two real llama.cpp servers on loopback: requests spread over both, a server
killed in the middle costs nothing (same texts, no request lost), both down is a clear error
naming both, and a rerun after they come back generates only what the cache lacks."""

import threading
import time

import pytest

from collab_utils import llm, serve, simulate, tasks, users
from collab_utils.cache import GenerationCache
from collab_utils.config import ModelSpec, Sampling
from collab_utils.llm.openai import ServersUnavailable

pytestmark = pytest.mark.server

SAMPLING = Sampling(max_new_tokens=8, temperature=0.8, top_p=1.0)


@pytest.fixture(scope="module")
def servers():
    with serve.llama_servers(2, n_threads=1) as started:
        yield started


@pytest.fixture
def both(servers):
    for server in servers:
        server.start()  # a test may have killed one
    return servers


def backend_for(urls, cache, **extra):
    spec = ModelSpec(
        backend="openai", model=serve.SERVED_NAME, base_url=urls, concurrency=2, **extra
    )
    backend = llm.load_backend(spec, cache)
    backend.reset_server_stats()
    return backend


def kill_when(backend, servers, done: int):
    """Kill `servers` from a thread once `done` replies were used; returns the thread."""

    def watch():
        while sum(s["ok"] for s in backend.server_stats().values()) < done:
            time.sleep(0.01)
        for server in servers:
            server.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


CANDIDATES = simulate.handwritten(
    [("answer-now", "Here is the function:\n```python\ndef f(x):\n    return x\n```"),
     ("ask-first", "Before I write it: which input format should it accept?")]
)  # fmt: skip


def contexts():
    return [simulate.Context.opening(t) for t in tasks.load("builtin:code")[:4]]


def rollout(backend, ctxs, candidates):
    futures = simulate.rollout(
        ctxs, candidates, assistant=backend, user=users.AgendaUser(), n_samples=3, window=1,
        seed=7, sampling=SAMPLING, progress=False,
    )  # fmt: skip
    return futures


def test_rollout_spreads_over_two_servers_and_survives_one_killed(both, tmp_path):
    urls = [s.url for s in both]
    ctxs = contexts()
    calm = backend_for(urls, GenerationCache(tmp_path / "calm.sqlite"))
    candidates = [CANDIDATES] * len(ctxs)
    undisturbed = rollout(calm, ctxs, candidates)
    assert len(undisturbed) == 24
    spread = {url: stats["ok"] for url, stats in calm.server_stats().items()}
    assert sum(spread.values()) == 24 and min(spread.values()) >= 6, spread

    cache = GenerationCache(tmp_path / "stormy.sqlite")
    stormy = backend_for(urls, cache)
    watcher = kill_when(stormy, both[:1], done=6)
    disturbed = rollout(stormy, ctxs, candidates)
    watcher.join(timeout=60)
    stats = stormy.server_stats()
    assert not both[0].alive and stats[urls[0]]["failed"] >= 1 and stats[urls[0]]["ok"] >= 1
    assert [f.stop_reason for f in disturbed] == [f.stop_reason for f in undisturbed]
    assert all(f.stop_reason != "error" for f in disturbed)
    assert [f.messages for f in disturbed] == [f.messages for f in undisturbed]  # same texts
    assert len(cache) == 24 and stormy.generated == 24  # no request lost, none twice
    assert stats[urls[1]]["ok"] == 24 - stats[urls[0]]["ok"]


def test_both_down_names_both_urls_then_rerun_generates_only_what_is_missing(both, tmp_path):
    urls = [s.url for s in both]
    cache = GenerationCache(tmp_path / "c.sqlite")
    backend = backend_for(urls, cache, max_retries=1)
    convs = [[{"role": "user", "content": f"Name a fruit that starts with {c}."}] for c in "ABCDEFGHIJKL"]  # fmt: skip
    seeds = list(range(len(convs)))
    backend.chat(convs[:1], seed=seeds[:1], **SAMPLING.kwargs)  # identifies both servers
    watcher = kill_when(backend, both, done=4)
    with pytest.raises(ServersUnavailable) as caught:
        backend.chat(convs, seed=seeds, **SAMPLING.kwargs)
    watcher.join(timeout=60)
    assert all(url in str(caught.value) for url in urls)
    kept = len(cache)
    assert 4 <= kept < len(convs)  # what finished before the crash stays
    for server in both:
        server.start()
    again = backend_for(urls, cache)
    gens = again.chat(convs, seed=seeds, **SAMPLING.kwargs)
    assert again.generated == len(convs) - kept and sum(g.cached for g in gens) == kept
    assert len(cache) == len(convs) and all(g.text for g in gens)
