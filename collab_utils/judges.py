"""LLM judges: interactivity (ITR) of a conversation and single-turn helpfulness of a response.

As the paper's judges: the history is context and the follow-up (the candidate and its future)
is what gets rated, in separate blocks; the hidden goal is shown only when asked (`goals`; the
paper's code and document judges do not see it). A judge that can rate by digit probabilities
(`backend.rate`: the hf and openai backends) gives a deterministic expected rating; with
`reasons=True`, or a backend that cannot rate, the judge writes text ending in "Score: N" that
`parse_score` reads. A reply without a usable score is `JudgeScore(None, parsed=False, ...)`,
never 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["JudgeScore", "judge_helpfulness", "judge_interactivity", "parse_score"]


@dataclass(frozen=True)
class JudgeScore:
    """A judge's score in [0, 1]; `score` is None (never 0) when the reply had no usable score."""

    score: float | None
    parsed: bool
    raw: str


JUDGE_SCALE = 10  # free-text judges: "Score: N" with N in 0..10
RATING_SCALE = 9  # judges that rate by digit probabilities (`backend.rate`): one token, 0..9
_TEXT_INSTRUCTION = 'Give one sentence of reasoning, then end with a line of the form "Score: N".'
_REASONING_INSTRUCTION = (
    "First think it through in a few sentences: what did the user need, what did the assistant "
    'ask or assume, did it help. Then end with a last line of the form "Score: N".'
)
_RATING_INSTRUCTION = "Reply with the score only: a single digit."

_GOAL_BLOCK = """The user's hidden goal (the assistant did not see it):
{goal}

"""

_INTERACTIVITY_PROMPT = """You evaluate how interactive an AI assistant is. You get the historical \
conversation as context and the follow-up conversation to evaluate.
{goal_block}<|The Start of The Historical Conversation|>
{history}
<|The End of The Historical Conversation|>

<|The Start of The Follow-up Conversation to be Evaluated|>
{followup}
<|The End of The Follow-up Conversation to be Evaluated|>

The history is only context (it may be empty: the chat starts with the follow-up). Judge the
assistant in the follow-up: an interactive assistant asks about details it needs, checks its
understanding, and engages with what the user actually wants instead of guessing. Rate its
interactivity from 0 (passive, ignores ambiguity) to {scale} (engages exactly when useful).
{instruction}"""

_HELPFULNESS_PROMPT = """You evaluate one AI assistant response on its own.
{goal_block}<|The Start of The Conversation So Far|>
{history}
<|The End of The Conversation So Far|>

<|The Start of The Response to be Evaluated|>
{response}
<|The End of The Response to be Evaluated|>

Rate how helpful this single response is for what the user asked, from 0 (useless) to {scale}
(fully helpful). {instruction}"""


def _render(conversation: list[dict]) -> str:
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in conversation) or "(empty)"


_SCORE_PATTERNS = [
    re.compile(r"\"score\"\s*:\s*\"?(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE),
    re.compile(
        r"\b(?:score|rating)\b[^\d\n-]{0,20}(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?",
        re.IGNORECASE,
    ),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
]


def parse_score(text: str, scale: float = JUDGE_SCALE) -> float | None:
    """A score in [0, 1] from a judge reply, or None.

    Understands "Score: 8" (on `scale`), "8/10", "4 out of 5", '{"score": 3}' and "Score: 0.8"
    (a decimal at most 1 is read as already in [0, 1]). The last match of the first pattern that
    matches wins; out-of-range values give None.
    """
    for pattern in _SCORE_PATTERNS:
        matches = pattern.findall(text)
        if not matches:
            continue
        value_text, denominator_text = matches[-1]
        value = float(value_text)
        if denominator_text:
            denominator = float(denominator_text)
            score = value / denominator if denominator > 0 else None
        elif "." in value_text and value <= 1:
            score = value
        else:
            score = value / scale
        return score if score is not None and 0.0 <= score <= 1.0 else None
    return None


def _rates(backend) -> bool:
    """Whether `backend` can rate by digit probabilities (the hf and openai backends can)."""
    return callable(getattr(backend, "rate", None))


def _judge(backend, prompts: list[str], seeds, max_new_tokens: int, reasons: bool):
    """Score each prompt: by digit probabilities where the backend can (and no reasoning is
    asked for), else by parsing text."""
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per item: {len(seeds)} seeds for {len(prompts)} items")
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    if _rates(backend) and not reasons:
        ratings = backend.rate(conversations, scale=RATING_SCALE)
        return [
            JudgeScore(r, r is not None, "" if r is None else f"expected rating {r:.3f}")
            for r in ratings
        ]
    replies = backend.chat(
        conversations,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=[int(seed) for seed in seeds],
    )
    scores = []
    for reply in replies:
        score = parse_score(reply.text)
        scores.append(JudgeScore(score=score, parsed=score is not None, raw=reply.text))
    return scores


def _instruction(backend, reasons: bool) -> dict:
    if reasons:
        return {"scale": JUDGE_SCALE, "instruction": _REASONING_INSTRUCTION}
    if _rates(backend):
        return {"scale": RATING_SCALE, "instruction": _RATING_INSTRUCTION}
    return {"scale": JUDGE_SCALE, "instruction": _TEXT_INSTRUCTION}


def _goal_blocks(goals, n: int) -> list[str]:
    if goals is None:
        return [""] * n
    if len(goals) != n:
        raise ValueError(f"need one goal per item: {len(goals)} goals for {n} items")
    return [_GOAL_BLOCK.format(goal=goal) for goal in goals]


def judge_interactivity(
    backend,
    histories: list[list[dict]],
    followups: list[list[dict]],
    goals: list[str] | None = None,
    *,
    seeds,
    max_new_tokens: int = 256,
    reasons: bool = False,
) -> list[JudgeScore]:
    """Interactivity (ITR) of the assistant in each follow-up, its history as context, in one
    batched judge call; `goals` (the hidden goals) are shown only when given."""
    if len(histories) != len(followups):
        raise ValueError("need one history per follow-up")
    prompts = [
        _INTERACTIVITY_PROMPT.format(
            goal_block=block,
            history=_render(history),
            followup=_render(followup),
            **_instruction(backend, reasons),
        )
        for history, followup, block in zip(
            histories, followups, _goal_blocks(goals, len(followups)), strict=True
        )
    ]
    return _judge(backend, prompts, seeds, max_new_tokens, reasons)


def judge_helpfulness(
    backend,
    contexts: list[list[dict]],
    responses: list[str],
    goals: list[str] | None = None,
    *,
    seeds,
    max_new_tokens: int = 256,
    reasons: bool = False,
) -> list[JudgeScore]:
    """Single-turn helpfulness of each response given its context, in one batched judge call."""
    if len(contexts) != len(responses):
        raise ValueError("need one context per response")
    prompts = [
        _HELPFULNESS_PROMPT.format(
            goal_block=block,
            history=_render(context),
            response=response,
            **_instruction(backend, reasons),
        )
        for context, response, block in zip(
            contexts, responses, _goal_blocks(goals, len(responses)), strict=True
        )
    ]
    return _judge(backend, prompts, seeds, max_new_tokens, reasons)
