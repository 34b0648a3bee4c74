"""Task metrics (code pass rate, math accuracy, BLEU, qa behaviour, tokens) and LLM judges."""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass

from collab_utils import sandbox
from collab_utils.tasks import Task, last_boxed

__all__ = [
    "JudgeScore",
    "accuracy",
    "bleu",
    "clarify_or_answer",
    "count_tokens",
    "extract_answer",
    "extract_code",
    "judge_helpfulness",
    "judge_interactivity",
    "parse_score",
    "pass_rate",
    "qa_correct",
]

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str, entry_point: str) -> str | None:
    """The last fenced code block that defines `entry_point`.

    A reply without any fence that is itself valid Python defining the entry point counts as one
    block. None when nothing defines it.
    """
    definition = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    blocks = [body for _, body in _FENCE.findall(text)]
    if not blocks and "```" not in text:
        try:
            ast.parse(text)
            blocks = [text]
        except SyntaxError:
            return None
    for block in reversed(blocks):
        if definition.search(block):
            return block
    return None


def pass_rate(response_text: str, task: Task, timeout_s: float = 10.0) -> float:
    """Fraction of the task's hidden tests passed by the code in the response (sandboxed).

    HumanEval-style `check()` gives 1.0 or 0.0; unittest `TestCase`s give the fraction of test
    methods passed. The import lines of a HumanEval prompt are prepended (chat models often drop
    `from typing import List`).
    """
    code = extract_code(response_text, task.entry_point)
    if code is None:
        return 0.0
    prompt_imports = [
        line
        for line in task.metadata.get("prompt", "").splitlines()
        if line.startswith(("import ", "from "))
    ]
    program = "\n".join([*prompt_imports, code])
    return sandbox.run_tests(program, task.tests, task.entry_point, timeout_s).fraction_passed


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(text: str) -> str | None:
    """The final answer: the last \\boxed{}, else 'answer is X', else the last number."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    stated = re.findall(r"answer is:?\s*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", text, re.IGNORECASE)
    if stated:
        return stated[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _as_integer(text: str) -> int | None:
    cleaned = text.replace(",", "").replace("$", "").strip()
    return int(cleaned) if re.fullmatch(r"-?\d+", cleaned) else None


def accuracy(response_text: str, task: Task) -> float:
    """1.0 when the response's final answer equals the task's reference, else 0.0.

    Integers compare exactly; everything else through math-verify (sympy), so \\boxed{1/2} and
    0.5, or (x+1)^2 and x^2+2x+1, are equal.
    """
    answer = extract_answer(response_text)
    if answer is None:
        return 0.0
    predicted, gold = _as_integer(answer), _as_integer(task.reference)
    if predicted is not None and gold is not None:
        return float(predicted == gold)
    return float(_equivalent(task.reference, answer))


def _equivalent(gold: str, predicted: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    parsed_gold = parse(f"${gold}$", parsing_timeout=timeout)
    parsed_predicted = parse(f"${predicted.replace(',', '')}$", parsing_timeout=timeout)
    if not parsed_gold or not parsed_predicted:
        return gold.strip() == predicted.strip()
    return verify(parsed_gold, parsed_predicted, timeout_seconds=timeout)


def bleu(hypothesis: str, reference: str, char_level: bool = False) -> float:
    """Smoothed sentence BLEU in [0, 1] (sacrebleu).

    Word level (13a tokenizer) by default. `char_level=True` scores characters instead, the
    variant the paper's released code uses for document tasks.
    """
    import sacrebleu

    tokenize = "char" if char_level else "13a"
    score = sacrebleu.sentence_bleu(hypothesis, [reference], tokenize=tokenize).score
    return min(1.0, score / 100.0)


def count_tokens(texts, tokenizer) -> int:
    """Total tokens in a text or texts; `tokenizer` has `.encode(text)` or is a callable."""
    encode = tokenizer.encode if hasattr(tokenizer, "encode") else tokenizer
    if isinstance(texts, str):
        texts = [texts]
    return sum(len(encode(text)) for text in texts)


_CLARIFY_CUES = (
    "do you mean",
    "did you mean",
    "which one",
    "which of",
    "could you clarify",
    "can you clarify",
    "could you specify",
    "can you specify",
    "are you asking",
    "are you referring",
    "do you want",
    "would you like",
    "could you tell me",
    "can you tell me",
    "which ",
    "whose ",
    "who do you",
)


def clarify_or_answer(response_text: str) -> str:
    """'clarify' when the response asks the user a clarifying question, else 'answer'."""
    sentences = re.split(r"(?<=[.!?])\s+", response_text.strip())
    questions = [s.lower() for s in sentences if s.rstrip().endswith("?")]
    if not questions:
        return "answer"
    if len(questions) == len(sentences) or any(
        cue in question for question in questions for cue in _CLARIFY_CUES
    ):
        return "clarify"
    return "answer"


def qa_correct(response_text: str, task: Task) -> float:
    """1.0 when the response clarifies an ambiguous question or answers a clear one."""
    return float(clarify_or_answer(response_text) == task.reference)


# --- LLM judges --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeScore:
    """A judge's score in [0, 1]; `score` is None (never 0) when the reply had no usable score."""

    score: float | None
    parsed: bool
    raw: str


JUDGE_SCALE = 10  # free-text judges: "Score: N" with N in 0..10
RATING_SCALE = 9  # judges that rate by digit probabilities (`backend.rate`): one token, 0..9
_TEXT_INSTRUCTION = 'Give one sentence of reasoning, then end with a line of the form "Score: N".'
_RATING_INSTRUCTION = "Reply with the score only: a single digit."

_INTERACTIVITY_PROMPT = """You evaluate how interactive an AI assistant is in a conversation.
The user's hidden goal (the assistant did not see it):
{goal}

The conversation:
{conversation}

An interactive assistant asks about details it needs, checks its understanding, and engages with
the user's actual goal instead of guessing. Rate the assistant's interactivity from 0 (passive,
ignores ambiguity) to {scale} (engages exactly when useful). {instruction}"""

_HELPFULNESS_PROMPT = """You evaluate one AI assistant response on its own.
The user's goal:
{goal}

The conversation so far:
{conversation}

The assistant's response:
{response}

Rate how helpful this single response is for the user's goal, from 0 (useless) to {scale}
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


def _judge(backend, prompts: list[str], seeds, max_new_tokens: int) -> list[JudgeScore]:
    """Score each prompt: by digit probabilities where the backend can, else by parsing text."""
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per item: {len(seeds)} seeds for {len(prompts)} items")
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    if _rates(backend):
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


def _instruction(backend) -> dict:
    if _rates(backend):
        return {"scale": RATING_SCALE, "instruction": _RATING_INSTRUCTION}
    return {"scale": JUDGE_SCALE, "instruction": _TEXT_INSTRUCTION}


def judge_interactivity(
    backend, conversations, goals, *, seeds, max_new_tokens: int = 256
) -> list[JudgeScore]:
    """Interactivity (ITR) of the assistant in each conversation, in one batched judge call."""
    if len(conversations) != len(goals):
        raise ValueError("need one goal per conversation")
    prompts = [
        _INTERACTIVITY_PROMPT.format(goal=goal, conversation=_render(conv), **_instruction(backend))
        for conv, goal in zip(conversations, goals, strict=True)
    ]
    return _judge(backend, prompts, seeds, max_new_tokens)


def judge_helpfulness(
    backend, contexts, responses, goals, *, seeds, max_new_tokens: int = 256
) -> list[JudgeScore]:
    """Single-turn helpfulness of each response given its context, in one batched judge call."""
    if not len(contexts) == len(responses) == len(goals):
        raise ValueError("need one context and one goal per response")
    prompts = [
        _HELPFULNESS_PROMPT.format(
            goal=goal, conversation=_render(context), response=response, **_instruction(backend)
        )
        for context, response, goal in zip(contexts, responses, goals, strict=True)
    ]
    return _judge(backend, prompts, seeds, max_new_tokens)
