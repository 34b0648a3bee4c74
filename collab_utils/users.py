"""User simulators, and a scripted assistant for exact lessons.

Two simulators share one batched interface, `user.respond(items) -> list[UserTurn]` with items
`(task, history, seed)`:

- `AgendaUser`: rule-based and deterministic. It reveals a hidden requirement when the assistant
  asks about it, checks proposed answers with the task's tests (`metrics.solves`), and
  complains about one unmet requirement at a time.
- `LLMUser`: a language model plays the user. It sees the hidden goal and the chat history (never
  the assistant's system prompt). Replies that slip into the assistant's role (`role_slip`) are
  retried once with a new seed, then repaired with the agenda simulator's reply; each case is
  counted.

`ScriptedCoder` is the agenda user's counterpart on the assistant side: rules, no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import metrics
from .config import Sampling
from .llm import Generation, count_tokens
from .seeds import derive_seed
from .tasks import Task

TERMINATE = "[[TERMINATE]]"


@dataclass(frozen=True)
class UserTurn:
    """A simulated user message and how the simulator got it."""

    text: str
    terminated: bool = False
    role_slip: bool = False  # the first model reply read like the assistant
    retried: bool = False  # a second reply was sampled with a new seed
    repaired: bool = False  # both slipped: the agenda simulator's reply was used instead


def user_view(history: list[dict]) -> list[dict]:
    """What the user sees: the chat without system prompts."""
    return [m for m in history if m["role"] != "system"]


def revealed_requirements(task: Task, history: list[dict]) -> set[str]:
    """Ids of the requirements whose statement the user already wrote."""
    said = " ".join(m["content"] for m in history if m["role"] == "user")
    return {r.id for r in task.requirements if r.statement in said}


class AgendaUser:
    """A rule-based user with an agenda: the task's hidden requirements.

    It opens with `task.opening`; when the assistant asks a question that mentions a
    requirement's keywords it states that requirement; when the assistant proposes an answer it
    checks it (tests, answer, BLEU) and either ends the chat, or complains about the first
    requirement it has not stated yet, or ends when nothing is left to say. Deterministic: the
    reply depends only on the task and the history (seeds are ignored).
    """

    name = "agenda"

    def __init__(self, bleu_threshold: float = 0.3):
        self.bleu_threshold = bleu_threshold

    def respond(self, items: list[tuple[Task, list[dict], int]]) -> list[UserTurn]:
        return [
            self._story(task, user_view(history), seed)
            if task.metadata.get("intents")
            else self.reply(task, user_view(history))
            for task, history, seed in items
        ]

    @staticmethod
    def _story(task: Task, history: list[dict], seed: int) -> UserTurn:
        """Story qa (issue 13): knows what it meant, not the answer; `stories.user_reply`."""
        from .stories import user_reply

        return UserTurn(*user_reply(task, history, seed))

    def reply(self, task: Task, history: list[dict]) -> UserTurn:
        assistant_turns = [m["content"] for m in history if m["role"] == "assistant"]
        if not assistant_turns:
            return UserTurn(task.opening)
        last = assistant_turns[-1]
        revealed = revealed_requirements(task, history)
        unrevealed = [r for r in task.requirements if r.id not in revealed]
        if "?" in last:
            asked = [r for r in unrevealed if any(k in last.lower() for k in r.keywords)]
            if asked:
                return UserTurn(" ".join(r.statement for r in asked))
        if metrics.proposes_answer(task, last):
            if metrics.solves(task, last, self.bleu_threshold):
                return UserTurn(f"Thanks, that is what I needed. {TERMINATE}", terminated=True)
            if unrevealed:
                return UserTurn(f"That's not quite it. {unrevealed[0].statement}")
            return UserTurn(f"It is still not right, but I have nothing to add. {TERMINATE}", True)
        if "?" in last:
            return UserTurn("I don't have more details. Please just give it a try.")
        thing = {"code": "the code", "math": "the answer", "doc": "the text"}.get(task.kind)
        return UserTurn(f"Can you give me {thing or 'an answer'} now?")


_ASSISTANT_OPENERS = (
    "assistant:",
    "to solve",
    "sure",
    "certainly",
    "of course",
    "absolutely",
    "here is",
    "here's",
    "great question",
)
_ASSISTANT_PHRASES = (
    "as an ai",
    "i can help",
    "i'd be happy to",
    "i would be happy to",
    "happy to help",
    "how can i help",
    "how can i assist",
    "let me know if you",
    "i hope this helps",
)


_NARRATION = ("the user", "this user", "the chat", "the conversation", "the assistant")


def role_slip(text: str, task: Task | None = None) -> str | None:
    """Why `text` reads like the assistant (or a narrator) rather than the user, else None."""
    lowered = text.strip().lower()
    if not lowered:
        return "empty"
    if lowered.startswith(_NARRATION):
        return "narrates"
    if lowered.startswith(_ASSISTANT_OPENERS):
        return "assistant opener"
    if any(phrase in lowered for phrase in _ASSISTANT_PHRASES):
        return "assistant phrase"
    if re.search(r"```[^\n]*\n\s*(def|class|import|from) ", text):
        return "writes code"
    if task is not None and task.kind == "code" and metrics.extract_code(text, task.entry_point):
        return "writes the solution"
    if "\\boxed" in text:
        return "solves the problem"
    return None


_USER_SYSTEM_PROMPT = """You are a USER chatting with an AI assistant. You are not the \
assistant: never solve the task yourself, never write code or final answers.

Your goal, which the assistant cannot see:
{goal}

How you write: one or two short sentences, little effort. You are vague at first and give a \
detail of your goal only when the assistant asks about it or gets it wrong. You say what you \
prefer, plainly, and now and then you make a small mistake. {kind_rule}
When the assistant's last answer fully meets your goal, write only {terminate}"""


def _kind_rule(task: Task) -> str:
    if task.kind == "code":
        return f"Call the function `{task.entry_point}` by its name and name its arguments."
    if task.kind == "doc":
        words = len(task.reference.split())
        paragraphs = len([p for p in task.reference.split("\n\n") if p.strip()])
        return f"You want a text of about {words} words in {paragraphs} paragraphs."
    if task.kind == "math":
        return "You want one final number as the answer."
    return "You want a short answer to your question."


def user_prompt(task: Task, history: list[dict]) -> list[dict]:
    """The simulator's chat: persona and hidden goal as the system prompt, then the history with
    the roles swapped, so that the model's next 'assistant' turn is the user's next message."""
    swap = {"user": "assistant", "assistant": "user"}
    system = _USER_SYSTEM_PROMPT.format(
        goal=task.goal, kind_rule=_kind_rule(task), terminate=TERMINATE
    )
    turns = [{"role": swap[m["role"]], "content": m["content"]} for m in history]
    return [{"role": "system", "content": system}, *turns]


def _clean(text: str) -> str:
    """Drop a leading 'USER:' label, anything from an 'ASSISTANT:' label on, and quotes."""
    text = re.sub(r"^\s*\**user\**\s*:\s*", "", text.strip(), flags=re.IGNORECASE)
    text = re.split(r"\n\s*\**assistant\**\s*:", text, flags=re.IGNORECASE)[0].strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def _is_termination(text: str) -> bool:
    return "[[terminate]]" in text.lower()


class LLMUser:
    """A language model plays the user; see `user_prompt` for its persona and view.

    One batched `backend.chat` per `respond`, plus one more for the replies that slipped into
    the assistant's role; a reply that slips twice is replaced by `AgendaUser`'s reply. The
    first user turn of a conversation is the task's opening, as for the agenda simulator.
    """

    name = "llm"

    def __init__(self, backend, sampling: Sampling | None = None, *, bleu_threshold: float = 0.3):
        self.backend = backend
        self.sampling = sampling or Sampling(max_new_tokens=96)
        self.fallback = AgendaUser(bleu_threshold)

    def respond(self, items: list[tuple[Task, list[dict], int]]) -> list[UserTurn]:
        views = [(task, user_view(history), seed) for task, history, seed in items]
        turns: dict[int, UserTurn] = {}
        asking = []
        for i, (task, history, _seed) in enumerate(views):
            if any(m["role"] == "assistant" for m in history):
                asking.append(i)
            else:
                turns[i] = UserTurn(task.opening)
        texts = self._sample(views, asking, [views[i][2] for i in asking])
        slipped = [i for i in asking if role_slip(texts[i], views[i][0])]
        retry_seeds = [derive_seed(views[i][2], "retry") for i in slipped]
        texts.update(self._sample(views, slipped, retry_seeds))
        for i in asking:
            task, history, _seed = views[i]
            first_slipped = i in slipped
            if first_slipped and role_slip(texts[i], task):
                repaired = self.fallback.reply(task, history)
                turns[i] = UserTurn(repaired.text, repaired.terminated, True, True, True)
            else:
                text = texts[i]
                turns[i] = UserTurn(text, _is_termination(text), first_slipped, first_slipped)
        return [turns[i] for i in range(len(views))]

    def _sample(self, views, indices: list[int], seeds: list[int]) -> dict[int, str]:
        if not indices:
            return {}
        prompts = [user_prompt(*views[i][:2]) for i in indices]
        generations = self.backend.chat(prompts, seed=seeds, desc="user", **self.sampling.kwargs)
        return {i: _clean(g.text) for i, g in zip(indices, generations)}


class ScriptedCoder:
    """A rule-based assistant for one code task: the agenda simulator's counterpart.

    It writes the task's reference solution once the user has stated every hidden requirement,
    and the naive solution (`task.metadata["naive_solution"]`) before that. No model is involved,
    so MR can be shown exactly, without a small model's coding skill in the way. Tokens are
    counted with `tokenizer_backend` (e.g. the run's assistant) when given.
    """

    name = "scripted"

    def __init__(self, task: Task, tokenizer_backend=None):
        if "naive_solution" not in task.metadata:
            raise ValueError(f"{task.id}: ScriptedCoder needs metadata['naive_solution']")
        self.task, self.tokenizer_backend = task, tokenizer_backend
        self.model_calls = self.generated = 0

    def chat(self, conversations, *, max_new_tokens, temperature, top_p=1.0, seed, desc=None):
        self.model_calls += 1
        self.generated += len(conversations)
        every = {r.id for r in self.task.requirements}
        replies = []
        for messages in conversations:
            told = revealed_requirements(self.task, messages) >= every
            code = self.task.reference if told else self.task.metadata["naive_solution"]
            replies.append(Generation(f"Here is the code:\n```python\n{code.strip()}\n```", 0, 0))
        return replies

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer_backend, texts)
