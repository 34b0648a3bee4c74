"""LLM judges: score parsing, one batched call, unparsed replies stay unscored."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from collab_utils import judges


@dataclass
class FakeGeneration:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


class FakeJudgeBackend:
    """Replies with canned texts in order and records every call."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = []

    def chat(self, conversations, *, max_new_tokens, temperature, top_p=1.0, seed):
        self.calls.append(
            dict(
                conversations=conversations,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
        )
        return [FakeGeneration(text) for text in self.replies[: len(conversations)]]


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Asked the right question.\nScore: 8", 0.8),
        ("Score: 0.8", 0.8),
        ("I give it 8/10.", 0.8),
        ("4 out of 5", 0.8),
        ('{"score": 3}', 0.3),
        ('{"score": 3, "out_of": 10}', 0.3),
        ("Rating: 10", 1.0),
        ("Score: 0", 0.0),
        ("The assistant was fine.", None),
        ("Score: 15", None),
    ],
)
def test_parse_score(reply, score):
    parsed = judges.parse_score(reply)
    assert parsed == (None if score is None else pytest.approx(score))


def test_judge_interactivity_is_one_batched_deterministic_call():
    backend = FakeJudgeBackend(["Good clarifying question. Score: 9", "It guessed.\nScore: 2"])
    conversations = [
        [
            {"role": "user", "content": "Tokenize a file."},
            {"role": "assistant", "content": "Should punctuation be kept?"},
        ],
        [{"role": "user", "content": "Tokenize a file."}, {"role": "assistant", "content": "..."}],
    ]
    histories = [c[:1] for c in conversations]
    followups = [c[1:] for c in conversations]
    scores = judges.judge_interactivity(
        backend, histories, followups, ["goal A", "goal B"], seeds=[11, 12], max_new_tokens=64
    )
    assert [s.score for s in scores] == [pytest.approx(0.9), pytest.approx(0.2)]
    assert all(s.parsed for s in scores)
    (call,) = backend.calls
    assert call["seed"] == [11, 12] and call["temperature"] == 0.0 and call["top_p"] == 1.0
    assert call["max_new_tokens"] == 64
    assert "goal A" in call["conversations"][0][0]["content"]
    assert "Should punctuation be kept?" in call["conversations"][0][0]["content"]


def test_judge_reply_without_score_is_unparsed_not_zero():
    backend = FakeJudgeBackend(["I cannot decide."])
    (score,) = judges.judge_helpfulness(
        backend,
        [[{"role": "user", "content": "Write a poem."}]],
        ["Roses are red."],
        ["a poem about roses"],
        seeds=[3],
    )
    assert score == judges.JudgeScore(score=None, parsed=False, raw="I cannot decide.")
    assert "Roses are red." in backend.calls[0]["conversations"][0][0]["content"]


def test_judge_needs_one_seed_per_item():
    with pytest.raises(ValueError, match="seed"):
        judges.judge_interactivity(FakeJudgeBackend([]), [[]], [[]], seeds=[1, 2])


def test_judge_sees_history_and_follow_up_apart_and_the_goal_only_when_asked():
    backend = FakeJudgeBackend(["Score: 5", "Score: 5"])
    history = [{"role": "user", "content": "HISTORY-TURN"}]
    followup = [{"role": "assistant", "content": "FOLLOW-UP-TURN"}]
    judges.judge_interactivity(backend, [history], [followup], seeds=[1])
    judges.judge_interactivity(backend, [history], [followup], ["SECRET-GOAL"], seeds=[1])
    without, with_goal = (call["conversations"][0][0]["content"] for call in backend.calls)
    start, end = without.index("Start of The Historical"), without.index("End of The Historical")
    assert start < without.index("HISTORY-TURN") < end < without.index("FOLLOW-UP-TURN")
    assert "FOLLOW-UP-TURN" not in without[start:end]
    assert "SECRET-GOAL" not in without and "SECRET-GOAL" in with_goal


class RatingBackend(FakeJudgeBackend):
    """TEST DOUBLE of a backend that can also rate by digit probabilities."""

    def rate(self, conversations, *, scale):
        return [0.5] * len(conversations)


def test_reasoning_judge_writes_text_even_where_the_backend_can_rate():
    followup = [[{"role": "assistant", "content": "Which format?"}]]
    rated = judges.judge_interactivity(RatingBackend([]), [[]], followup, seeds=[1])
    assert rated[0].score == 0.5
    reasoning = RatingBackend(['Thinking... "Score: 3" would be harsh.\nScore: 7'])
    (score,) = judges.judge_interactivity(reasoning, [[]], followup, seeds=[1], reasons=True)
    assert score.score == pytest.approx(0.7) and score.parsed
    assert "think it through" in reasoning.calls[0]["conversations"][0][0]["content"]
