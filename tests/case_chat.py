"""The case-study chat shared by the user-simulator and engine tests."""

from collab_utils import tasks
from collab_utils.llm import Generation

CASE = tasks.load("builtin:case_study")[0]
NAIVE = f"Here you go:\n```python\n{CASE.metadata['naive_solution']}```"
REFERENCE = f"Here you go:\n```python\n{CASE.reference}```"
ASK_FIRST = (
    "Before I write it: what should happen if the file does not exist? "
    "And should punctuation be kept as separate tokens?"
)


def history(*replies: str) -> list[dict]:
    """The case-study opening followed by alternating assistant/user messages."""
    messages = [{"role": "user", "content": CASE.opening}]
    for i, text in enumerate(replies):
        messages.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return messages


class ScriptedBackend:
    """TEST DOUBLE of a backend: answers every request with the next scripted text."""

    def __init__(self, texts: list[str]):
        self.texts, self.model_calls, self.generated = list(texts), 0, 0

    def chat(self, conversations, *, max_new_tokens, temperature, top_p=1.0, seed, desc=None):
        self.model_calls += 1
        self.generated += len(conversations)
        return [Generation(self.texts.pop(0), 10, 5) for _ in conversations]

    def count_tokens(self, texts):
        return [len(text.split()) for text in texts]
