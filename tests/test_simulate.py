"""Candidates and the lock-step rollout engine (and the benchmark's replay of it)."""

from __future__ import annotations

from case_chat import NAIVE, ScriptedBackend, history

from collab_utils import bench, chatview, llm, simulate, tasks
from collab_utils.config import Sampling
from collab_utils.seeds import derive_seed
from collab_utils.users import AgendaUser

# ------------------------------------------------------------------------ candidates


def test_candidates_mix_kinds_in_one_call_with_derived_seeds(embedded):
    contexts = [simulate.Context.opening(t) for t in tasks.load("builtin:code")[:2]]
    calls = embedded.model_calls
    candidates = simulate.generate_candidates(
        contexts, embedded, n=3, proactive_fraction=0.34, seed=7, sampling=Sampling(8)
    )
    assert embedded.model_calls == calls + 1
    assert [c.kind for c in candidates[0]] == ["plain", "plain", "proactive"]
    task = contexts[1].task
    assert candidates[1][2].seed == derive_seed(7, task.id, 0, 2, "candidate")


# --------------------------------------------------------------------- rollout engine


def _setup():
    code_tasks = tasks.load("builtin:code")[:2]
    contexts = [simulate.Context.opening(t) for t in code_tasks]
    candidates = [
        simulate.handwritten(
            [
                ("answer-now", f"```python\n{t.metadata['naive_solution']}```"),
                ("ask-first", "Should spaces or quotes get special handling?"),
            ]
        )
        for t in code_tasks
    ]
    return contexts, candidates


def test_window_zero_scores_the_candidate_alone():
    contexts, candidates = _setup()
    backend = ScriptedBackend([])
    futures = simulate.rollout(
        contexts,
        candidates,
        assistant=backend,
        user=AgendaUser(),
        n_samples=3,
        window=0,
        seed=0,
        sampling=Sampling(8),
    )
    assert backend.model_calls == 0 and len(futures) == 4  # one future per candidate
    assert all(len(f.window) == 1 and f.stop_reason == "window" for f in futures)


def test_token_budget_stops_a_future_once_its_assistant_tokens_reach_it():
    contexts, candidates = _setup()
    long_reply = "word " * 30  # 30 tokens for ScriptedBackend.count_tokens; one per request
    settings = dict(user=AgendaUser(), n_samples=1, window=2, seed=0, progress=False)
    settings["sampling"] = Sampling(8)

    unlimited = ScriptedBackend([long_reply] * 8)
    futures = simulate.rollout(contexts, candidates, assistant=unlimited, **settings)
    assert unlimited.model_calls == 2 and all(f.stop_reason == "window" for f in futures)

    limited = ScriptedBackend([long_reply] * 8)
    futures = simulate.rollout(contexts, candidates, assistant=limited, token_budget=20, **settings)
    assert limited.model_calls == 1  # every future was over budget after round 1
    assert all(f.stop_reason == "max_tokens" and f.rounds == 1 for f in futures)


def test_lockstep_and_one_at_a_time_give_identical_futures():
    """float32: CPU matmuls in bf16 depend on the batch shape, float32 ones do not here."""
    backend = llm.load_backend({"model": "embedded", "dtype": "float32"}, None)
    contexts, candidates = _setup()
    settings = dict(
        assistant=backend,
        user=AgendaUser(),
        n_samples=2,
        window=2,
        seed=3,
        sampling=Sampling(24),
    )
    calls = backend.model_calls
    lockstep = simulate.rollout(contexts, candidates, progress=False, **settings)
    lockstep_calls = backend.model_calls - calls
    single = bench.rollout_one_at_a_time(contexts, candidates, **settings)
    single_calls = backend.model_calls - calls - lockstep_calls
    assert [f.messages for f in lockstep] == [f.messages for f in single]
    assert [(f.stop_reason, f.seed, f.assistant_tokens) for f in lockstep] == [
        (f.stop_reason, f.seed, f.assistant_tokens) for f in single
    ]
    assert lockstep_calls <= 2  # one assistant call per round
    assert single_calls >= 4 * lockstep_calls


def test_bench_replays_the_engine_requests_exactly():
    """The raw-generate baseline re-sends the engine's requests as they were when sent."""
    result = bench.bench_rollouts(
        n_contexts=1, n_candidates=2, n_samples=2, window=2, max_new_tokens=16
    )
    assert result["raw_replies_differing"] == 0
    assert result["raw_tokens"] == result["engine_tokens"]
    assert result["lockstep_model_calls"] == 2
    assert result["one_at_a_time_model_calls"] >= 2 * result["lockstep_model_calls"]


def test_chatview_renders_roles_goal_and_escapes():
    page = chatview.show(history(NAIVE), goal="<b>goal</b>", title="t")._repr_html_()
    assert "hidden goal" in page and "&lt;b&gt;goal" in page and "<pre" in page
    assert page.count("<b>user</b>") == 1 and page.count("<b>assistant</b>") == 1
