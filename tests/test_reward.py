"""The multiturn-aware reward: the case study, w = 0, rescoring, missing judge scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collab_utils import llm, metrics, reward, simulate, tasks, users
from collab_utils.config import GenerationParams, Params, RewardParams, Sampling
from collab_utils.llm import Generation
from collab_utils.users import AgendaUser

CASE = tasks.load("builtin:case_study")[0]
ANSWER_NOW = f"Here is the function:\n```python\n{CASE.metadata['naive_solution']}```"
ASK_FIRST = (
    "Before I write it, two questions: what should happen if the file does not exist? "
    "And should punctuation be kept as separate tokens?"
)
CODE_FOR = {  # what a competent coder writes when told exactly these requirements
    frozenset(): CASE.metadata["naive_solution"],
    frozenset({"missing_file"}): "import os\n\n\ndef tokenize_file(path):\n"
    "    if not os.path.exists(path):\n        return []\n"
    "    with open(path) as handle:\n        return handle.read().split()\n",
    frozenset({"punctuation"}): "import re\n\n\ndef tokenize_file(path):\n"
    "    with open(path) as handle:\n        return re.findall(r'\\w+|[^\\w\\s]+', handle.read())\n",
    frozenset({"missing_file", "punctuation"}): CASE.reference,
}


class InformedCoder:
    """TEST DOUBLE for the assistant continuing the conversation (not a model).

    It writes the case-study function implementing exactly the requirements the user has stated
    so far: a competent coder that only knows what it was told. The 135M embedded model cannot
    write this tokenizer at all, so with it both candidates would score R_ext = 0 and MR would
    rank them by noise; the double isolates what the test is about, the reward computation.
    """

    def __init__(self):
        self.model_calls = self.generated = 0

    def chat(self, conversations, *, max_new_tokens, temperature, top_p=1.0, seed, desc=None):
        self.model_calls += 1
        self.generated += len(conversations)
        replies = []
        for messages in conversations:
            told = frozenset(users.revealed_requirements(CASE, messages))
            replies.append(Generation(f"Updated:\n```python\n{CODE_FOR[told]}```", 0, 0))
        return replies

    def count_tokens(self, texts):
        return [len(text.split()) for text in texts]


class RubricJudge:
    """TEST DOUBLE for the judge (not a model), with a fixed rubric.

    Helpfulness: 8/10 for a response that contains code, 3/10 for one that does not: the
    single-turn preference for an immediate answer that the paper reports for LLM judges, which
    the 135M embedded judge does not reproduce reliably. Interactivity: always 5/10, so ITR cannot
    decide the MR ranking: R_ext and the token cost do.
    """

    def __init__(self, reply_when_unsure: str | None = None):
        self.reply_when_unsure = reply_when_unsure
        self.model_calls = self.generated = 0

    def chat(self, conversations, *, max_new_tokens, temperature, top_p=1.0, seed, desc=None):
        self.model_calls += 1
        self.generated += len(conversations)
        replies = []
        for (prompt,) in conversations:
            text = prompt["content"]
            if "single response" in text:
                response = text.split("Start of The Response to be Evaluated|>")[1]
                reply = "Score: 8" if "```" in response else "Score: 3"
            else:
                reply = self.reply_when_unsure or "Score: 5"
            replies.append(Generation(reply, 0, 0))
        return replies


def params(window: int, n_samples: int = 2, lam: float = 5e-4, max_new_tokens: int = 64):
    return Params(
        seed=11,
        reward=RewardParams(n_samples=n_samples, window=window, lam=lam, mu=1.0),
        generation=GenerationParams(max_new_tokens=max_new_tokens, judge_max_new_tokens=8),
    )


def case_study():
    contexts = [simulate.Context.opening(CASE)]
    candidates = [simulate.handwritten([("answer-now", ANSWER_NOW), ("ask-first", ASK_FIRST)])]
    return contexts, candidates


@pytest.mark.parametrize("window", [1, 2])
def test_case_study_mr_prefers_asking_while_helpfulness_prefers_answering(window):
    """Paper Fig. 6 with the agenda simulator: MR ranks ask-first above answer-now, single-turn
    helpfulness the other way round. Assistant continuation and judge are test doubles (see
    their docstrings); the user simulator, the engine and the reward are the real code.
    With w = 1 answer-now never learns the punctuation rule (R_ext 0 vs 1); with w = 2 it
    catches up but pays for the extra turn in tokens."""
    contexts, candidates = case_study()
    futures, table = reward.score_candidates(
        contexts,
        candidates,
        assistant=InformedCoder(),
        user=AgendaUser(),
        judge=RubricJudge(),
        params=params(window),
    )
    by_kind = table.set_index("candidate_kind")
    assert by_kind.loc["ask-first", "mr"] > by_kind.loc["answer-now", "mr"]
    assert by_kind.loc["ask-first", "helpfulness"] < by_kind.loc["answer-now", "helpfulness"]
    assert by_kind.loc["ask-first", "r_ext"] == 1.0
    assert by_kind.loc["answer-now", "r_ext"] == (0.0 if window == 1 else 1.0)
    assert (
        futures[futures.candidate_kind == "ask-first"].stop_reason
        == ("window" if window == 1 else "terminated")
    ).all()
    assert list(by_kind["n"]) == [2, 2]


def test_judge_none_leaves_interactivity_out_and_marks_it_missing():
    contexts, candidates = case_study()
    futures, table = reward.score_candidates(
        contexts,
        candidates,
        assistant=InformedCoder(),
        user=AgendaUser(),
        judge=None,
        params=params(1),
    )
    assert futures.itr.isna().all() and not futures.judged.any() and table.helpfulness.isna().all()
    expected = futures.r_ext - np.minimum(5e-4 * futures.tokens, 1.0)
    np.testing.assert_array_equal(futures.r_star, expected)


def test_judge_parse_failure_is_nan_not_zero():
    contexts, candidates = case_study()
    futures, table = reward.score_candidates(
        contexts,
        candidates,
        assistant=InformedCoder(),
        user=AgendaUser(),
        judge=RubricJudge(reply_when_unsure="I cannot decide."),
        params=params(1),
    )
    assert futures.itr.isna().all() and not futures.itr_parsed.any() and futures.judged.all()
    assert futures.r_star.isna().all() and (table.n == 0).all()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "generations.sqlite"
    return llm.load_backend("embedded", cache), llm.load_backend("embedded", cache)


def test_window_zero_is_the_single_turn_reward(embedded):
    assistant, judge = embedded
    contexts, candidates = case_study()
    generated = assistant.generated
    futures, table = reward.score_candidates(
        contexts,
        candidates,
        assistant=assistant,
        user=AgendaUser(),
        judge=judge,
        params=params(0, n_samples=3),
    )
    assert assistant.generated == generated  # no assistant turns were generated
    assert len(futures) == 2 and (futures.rounds == 0).all()
    for row in futures.itertuples():
        assert row.r_ext == metrics.pass_rate(row.response, CASE)
        assert row.tokens == assistant.count_tokens([row.response])[0]
        itr_term = row.itr if row.itr_parsed else math.nan
        assert row.r_star == pytest.approx(row.r_ext - 5e-4 * row.tokens + itr_term, nan_ok=True)


def test_rescore_equals_a_fresh_run_with_the_new_lambda(embedded):
    assistant, judge = embedded
    contexts = [simulate.Context.opening(CASE)]
    candidates = simulate.generate_candidates(
        contexts,
        assistant,
        n=2,
        proactive_fraction=0.5,
        seed=11,
        sampling=Sampling(16),
    )
    assert [c.kind for c in candidates[0]] == ["plain", "proactive"]
    run = dict(assistant=assistant, user=AgendaUser(), judge=judge)
    first, _ = reward.score_candidates(
        contexts, candidates, params=params(1, lam=5e-4, max_new_tokens=16), **run
    )
    rescored = reward.rescore(first, lam=2e-3)
    made = assistant.generated + judge.generated
    fresh, fresh_summary = reward.score_candidates(
        contexts, candidates, params=params(1, lam=2e-3, max_new_tokens=16), **run
    )
    assert assistant.generated + judge.generated == made  # everything came from the cache
    np.testing.assert_array_equal(rescored.r_star.to_numpy(), fresh.r_star.to_numpy())
    np.testing.assert_array_equal(
        reward.summarize(rescored).mr.to_numpy(), fresh_summary.mr.to_numpy()
    )
    scored = first.r_star.notna()
    assert (rescored.r_star[scored] < first.r_star[scored]).all()  # a higher token price


def test_intrinsic_reward_caps_the_token_cost():
    r_int = reward.intrinsic_reward([100, 10_000], [0.5, 0.5], [True, True], lam=5e-4, mu=1.0)
    np.testing.assert_allclose(r_int, [-0.05 + 0.5, -1.0 + 0.5])


def test_an_errored_future_is_left_out_of_mr():
    contexts, candidates = case_study()
    futures = simulate.new_futures(contexts, candidates, 3, 1, 0, InformedCoder())
    failed = futures[1]  # the second future of answer-now
    failed.stop_reason, failed.error = "error", "BackendError: server gone"
    table = reward.score_futures(
        futures, contexts, candidates, judge=None, seed=0, lam=5e-4, mu=1.0
    )
    assert table.r_ext.isna().sum() == 1 and np.isnan(table.r_star[1])
    summary = reward.summarize(table).set_index("candidate_kind")
    others = table[(table.candidate_kind == "answer-now") & (table.index != 1)].r_star
    assert summary.loc["answer-now", "mr"] == pytest.approx(others.mean())
    assert summary.loc["answer-now", ["n", "n_failed"]].tolist() == [2, 1]
    assert summary.loc["ask-first", ["n", "n_failed"]].tolist() == [3, 0]


def test_window_tokens_count_both_roles_and_assistant_tokens_only_its_turns():
    contexts, candidates = case_study()
    run = dict(assistant=InformedCoder(), user=AgendaUser(), judge=None)
    window, _ = reward.score_candidates(contexts, candidates, params=params(2), **run)
    mine = params(2)
    mine.reward.token_turns = "assistant"
    assistant, _ = reward.score_candidates(contexts, candidates, params=mine, **run)
    user_words = [
        sum(len(m["content"].split()) for m in messages if m["role"] == "user")
        for messages in window.messages
    ]
    assert (window.user_tokens == user_words).all() and (window.user_tokens > 0).all()
    assert (window.tokens == assistant.tokens + window.user_tokens).all()
    assert (assistant.tokens == assistant.assistant_tokens).all()


def test_lam_null_takes_the_paper_preset_of_each_task_kind():
    doc = tasks.load("builtin:doc")[0]
    contexts = [simulate.Context.opening(CASE), simulate.Context.opening(doc)]
    candidates = [simulate.handwritten([("a", "Which format?")]) for _ in contexts]
    futures = simulate.new_futures(contexts, candidates, 1, 0, 0, InformedCoder())
    table = reward.score_futures(futures, contexts, candidates, judge=None, seed=0, lam=None, mu=1)
    assert table.lam.tolist() == [5e-4, 1e-4]
    assert reward.rescore(table, lam=2e-3).lam.tolist() == [2e-3, 2e-3]
