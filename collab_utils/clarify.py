"""What a reply does: ask the user a clarifying question, or answer."""

from __future__ import annotations

import re

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
