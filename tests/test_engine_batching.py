"""The hf engine's batch plan and its shared-prefix reuse (issue 19)."""

import random

from collab_utils import simulate, tasks
from collab_utils.llm import batching


def _futures_shaped(n_contexts=3, n_candidates=2, n_samples=3, context=60, candidate=30):
    """Token lists shaped like round-1 futures: context + candidate + a short user reply."""
    rng = random.Random(0)
    prompts, truth = [], []
    for c in range(n_contexts):
        head = [rng.randrange(1000) for _ in range(context)]
        for k in range(n_candidates):
            middle = [1000 + c * 10 + k] + [rng.randrange(1000) for _ in range(candidate)]
            for _ in range(n_samples):
                prompts.append(
                    head + middle + [rng.randrange(1000) for _ in range(rng.randint(1, 9))]
                )
                truth.append((c, k))
    return prompts, truth


def test_groups_are_the_futures_of_one_candidate():
    prompts, truth = _futures_shaped()
    groups = batching.shared_prefixes(prompts)
    assert sorted(len(g) for g in groups) == [3] * 6
    for group in groups:
        assert len({truth[i] for i in group}) == 1
        assert batching.group_prefix(prompts, group) == 60 + 31


def test_identical_prompts_keep_one_token_to_feed():
    prompt = list(range(50))
    assert batching.shared_prefixes([prompt] * 4) == [[0, 1, 2, 3]]
    assert batching.group_prefix([prompt] * 4, [0, 1, 2, 3]) == 49


def test_short_common_prefixes_are_not_grouped():
    prompts = [[7] * 10 + [i] * 40 for i in range(5)]  # 10 shared tokens < min_shared
    assert sorted(map(len, batching.shared_prefixes(prompts, min_shared=32))) == [1] * 5


def test_plan_covers_each_row_once_within_limits():
    prompts, _ = _futures_shaped(n_contexts=5)
    prompts += [[5000 + i] * (20 + i) for i in range(7)]  # rows that share nothing
    batches = batching.plan(prompts, max_rows=8, max_tokens=2000, new_tokens=32)
    rows = [i for b in batches for i in b.rows]
    assert sorted(rows) == list(range(len(prompts)))
    for b in batches:
        width = max(len(prompts[i]) for i in b.rows)
        assert len(b.rows) <= 8 and len(b.rows) * (width + 32) <= 2000 or len(b.rows) == 1
        if b.prefix_lengths:
            assert all(0 < p < len(prompts[i]) for i, p in zip(b.rows, b.prefix_lengths))
            distinct = {tuple(prompts[i][:p]) for i, p in zip(b.rows, b.prefix_lengths)}
            assert len(distinct) < len(b.rows)  # some prefix is computed once for several rows
    assert any(b.prefix_lengths for b in batches) and any(not b.prefix_lengths for b in batches)


def test_prefix_reuse_gives_the_greedy_texts_of_recomputing(embedded):
    """Round-1 futures of two tasks × two candidates × three user replies, greedy: the shared
    context + candidate is computed once per group. Where a token differs, it must be a
    near-tie in the recomputed logits (float rounding), not a wrong cache."""
    import torch

    conversations = []
    for task in tasks.load("builtin:code")[:2]:
        context = simulate.Context.opening(task).messages
        for ask in ["Which inputs should it handle?", "Should it print or return?"]:
            candidate = [*context, {"role": "assistant", "content": ask}]
            for reply in ["Just integers.", "Return it, please.", "Whatever is simplest."]:
                conversations.append([*candidate, {"role": "user", "content": reply}])
    prompts = embedded.prompt_ids(conversations)
    (batch,) = batching.plan(prompts, max_rows=64, max_tokens=10**6, new_tokens=24)
    assert batch.prefix_lengths and len(set(batch.prefix_lengths)) >= 2
    rows = [prompts[i] for i in batch.rows]
    params = {"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0}
    recomputed = embedded.generate_ids(rows, params, [0] * len(rows))
    reused = embedded.generate_ids(rows, params, [0] * len(rows), batch.prefix_lengths)
    for row, a, b in zip(rows, recomputed, reused):
        if a == b:
            continue
        k = next(j for j in range(min(len(a), len(b))) if a[j] != b[j])
        with torch.inference_mode():
            logits = embedded.model(torch.tensor([row + a[:k]])).logits[0, -1].float()
        gap = (logits[a[k]] - logits[b[k]]).abs().item()
        assert gap < 1e-3 * logits.abs().max().item(), f"row differs at token {k}, gap {gap}"
    assert sum(a == b for a, b in zip(recomputed, reused)) >= len(rows) - 1


def _judge_like(n_contexts=2, n_followups=3):
    """Judge prompts: one long shared instruction + context, then a follow-up that differs."""
    head = "You rate how interactive an assistant is. " * 12
    return [
        [{"role": "user", "content": f"{head}\nContext {c}: write a sort function.\nFollow-up {f}"}]
        for c in range(n_contexts)
        for f in ("It asked about the input type.", "It answered at once.", "It asked twice.")[
            :n_followups
        ]
    ]


def test_ratings_with_shared_prefixes_equal_recomputed_ones(embedded, monkeypatch):
    from dataclasses import replace

    conversations = _judge_like()
    monkeypatch.setattr(embedded, "spec", replace(embedded.spec, reuse_prefixes=False))
    recomputed = embedded._digit_probabilities(conversations)
    monkeypatch.setattr(embedded, "spec", replace(embedded.spec, reuse_prefixes=True))
    prompts = embedded.prompt_ids(conversations)
    assert any(
        b.prefix_lengths
        for b in batching.plan(prompts, max_rows=64, max_tokens=10**6, new_tokens=0)
    )
    reused = embedded._digit_probabilities(conversations)
    for a, b in zip(recomputed, reused):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_a_rating_does_not_depend_on_its_batch_mates(embedded):
    """Padding must not leak into a row: a short conversation rated alone and beside a much
    longer one (so padded by hundreds of tokens) gets the same digit probabilities."""
    short = [{"role": "user", "content": "Rate this reply: 'Sure, which language?'"}]
    long = [{"role": "user", "content": "Some long unrelated text about sorting. " * 40}]
    (alone,) = embedded._digit_probabilities([short])
    together = embedded._digit_probabilities([short, long])[0]
    assert max(abs(x - y) for x, y in zip(alone, together)) < 1e-4


def test_forward_clock_splits_prefill_decode_and_counts_padding(embedded):
    from collab_utils.bench_engine import ForwardClock

    rows = [list(range(100, 105)), list(range(200, 209))]  # 5 and 9 tokens: 4 pads of 18
    clock = ForwardClock(embedded.model)
    try:
        out = embedded.generate_ids(rows, {"max_new_tokens": 6, "temperature": 0.0}, [0, 0])
    finally:
        clock.close()
    assert clock.positions == {"prefill": 18, "padding": 4}
    assert clock.seconds["prefill"] > 0 and clock.seconds["decode"] > 0
    assert max(len(ids) for ids in out) > 1  # decode steps did run
    embedded.generate_ids(rows[:1], {"max_new_tokens": 2, "temperature": 0.0}, [0])
    assert clock.positions["prefill"] == 18  # hooks removed
