"""User simulators, and a scripted assistant for exact lessons.

Two simulators share one batched interface, `user.respond(items) -> list[UserTurn]` with items
`(task, history, seed)`:

- `AgendaUser`: rule-based and deterministic. It reveals a hidden requirement when the assistant
  asks about it, checks proposed answers with the task's tests (`metrics.solves`), and
  complains about one unmet requirement at a time.
- `LLMUser`: a language model plays the user. It sees the hidden goal and the chat history (never
  the assistant's system prompt) and writes the first turn itself, as the paper's simulator
  does. Replies that slip into the assistant's role (`role_slip`), and first turns that paste
  the goal (`copies_goal`), are retried once with a new seed, then repaired with the agenda
  simulator's reply; each case is counted.

`openings(user, tasks, seed)` gives the first user turn of each task's conversation.

`ScriptedCoder` is the agenda user's counterpart on the assistant side: rules, no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import metrics
from .config import Sampling
from .llm import Generation, count_tokens
from .seeds import derive_seed
from .stories import user_reply
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

    A document is accepted at `bleu_threshold` of `doc_metric`. The default is word BLEU: the
    paper's character BLEU gives unrelated documents of the same length 0.35 to 0.48, so no
    threshold on it tells a draft of this document from another one.
    """

    name = "agenda"

    def __init__(self, bleu_threshold: float = 0.3, doc_metric: str = "word_bleu"):
        self.bleu_threshold, self.doc_metric = bleu_threshold, doc_metric

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
            if metrics.solves(task, last, self.bleu_threshold, self.doc_metric):
                return UserTurn(f"Thanks, that is what I needed. {TERMINATE}", terminated=True)
            if unrevealed:
                return UserTurn(f"That's not quite it. {unrevealed[0].statement}")
            return UserTurn(f"It is still not right, but I have nothing to add. {TERMINATE}", True)
        if "?" in last:
            return UserTurn("I don't have more details. Please just give it a try.")
        thing = {"code": "the code", "math": "the answer", "doc": "the text"}.get(task.kind)
        return UserTurn(f"Can you give me {thing or 'an answer'} now?")


_ASSISTANT_OPENERS = ("assistant:", "to solve", "here is", "here's", "great question", "below is")
# A user answers a yes/no question with these; only what follows can make it the assistant's.
_AGREEMENT = re.compile(r"^(sure|certainly|of course|absolutely|yes|okay|ok)\b[\s,.!:;-]*")
_ASSISTANT_CONTINUATIONS = (*_ASSISTANT_OPENERS, "here you go", "let me", "the following")
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
    agreement = _AGREEMENT.match(lowered)
    if agreement and lowered[agreement.end() :].startswith(_ASSISTANT_CONTINUATIONS):
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


def copies_goal(text: str, task: Task, run: int = 6) -> bool:
    """Does `text` paste the hidden goal: half or more of the goal's `run`-word sequences (a
    goal shorter than that: the whole goal) appear in it, ignoring case and punctuation?"""
    goal, said = re.findall(r"\w+", task.goal.lower()), re.findall(r"\w+", text.lower())
    if len(goal) < run:
        return " ".join(goal) in " ".join(said)
    grams = {tuple(goal[i : i + run]) for i in range(len(goal) - run + 1)}
    found = {tuple(said[i : i + run]) for i in range(len(said) - run + 1)}
    return len(grams & found) >= 0.5 * len(grams)


_USER_SYSTEM_PROMPT = """You are a USER chatting with an AI assistant. You are not the \
assistant: never solve the task yourself, never write code or final answers.

Your goal, which the assistant cannot see:
{goal}

How you write: one or two short sentences, little effort. You are vague at first and give a \
detail of your goal only when the assistant asks about it or gets it wrong. Use your own words: \
never copy your goal verbatim. Keep the chat on your goal: no small talk, and bring the \
assistant back to it when it drifts. You say what you prefer, plainly, and now and then you \
make a small mistake. {kind_rule}
When the assistant's last answer fully meets your goal, or when the assistant cannot help you \
any further, write only {terminate}"""

_START = "Start the chat: write your first request to the assistant, short and vague."


def _kind_rule(task: Task) -> str:
    if task.kind == "code":
        return f"Call the function `{task.entry_point}` by its name and name its arguments."
    if task.kind == "doc":
        words = len(task.reference.split())
        paragraphs = len([p for p in task.reference.split("\n\n") if p.strip()])
        return f"You want a text of about {words} words in {paragraphs} paragraphs."
    if task.kind == "math":
        return "You want the answer in the form your problem asks for (a number, a fraction, an \
expression, an interval...)."
    return "You want a short answer to your question."


def user_prompt(task: Task, history: list[dict]) -> list[dict]:
    """The simulator's chat: persona and hidden goal as the system prompt, then the history with
    the roles swapped, so that the model's next 'assistant' turn is the user's next message.
    An empty history asks for the first turn."""
    swap = {"user": "assistant", "assistant": "user"}
    system = _USER_SYSTEM_PROMPT.format(
        goal=task.goal, kind_rule=_kind_rule(task), terminate=TERMINATE
    )
    turns = [{"role": swap[m["role"]], "content": m["content"]} for m in history]
    return [
        {"role": "system", "content": system},
        *(turns or [{"role": "user", "content": _START}]),
    ]


def _clean(text: str) -> str:
    """Drop a leading 'USER:' label, anything from an 'ASSISTANT:' label on, and quotes."""
    text = re.sub(r"^\s*\**user\**\s*:\s*", "", text.strip(), flags=re.IGNORECASE)
    text = re.split(r"\n\s*\**assistant\**\s*:", text, flags=re.IGNORECASE)[0].strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def _is_termination(text: str) -> bool:
    return "[[terminate]]" in text.lower()


def _slips(text: str, task: Task, first: bool) -> bool:
    """A reply to retry: it reads like the assistant; a first turn also when it pastes the goal
    or ends the chat before it began."""
    if role_slip(text, task):
        return True
    return first and (copies_goal(text, task) or _is_termination(text))


class LLMUser:
    """A language model plays the user; see `user_prompt` for its persona and view.

    One batched `backend.chat` per `respond`, plus one more for the replies that slipped; a
    reply that slips twice is replaced by `AgendaUser`'s reply (for a first turn: the task's
    vague `opening`). With an empty history the model writes the first turn from the goal.
    """

    name = "llm"

    def __init__(
        self,
        backend,
        sampling: Sampling | None = None,
        *,
        bleu_threshold: float = 0.3,
        doc_metric: str = "word_bleu",
    ):
        self.backend = backend
        self.sampling = sampling or Sampling(max_new_tokens=96)
        self.fallback = AgendaUser(bleu_threshold, doc_metric)

    def respond(self, items: list[tuple[Task, list[dict], int]]) -> list[UserTurn]:
        views = [(task, user_view(history), seed) for task, history, seed in items]
        first = [not any(m["role"] == "assistant" for m in history) for _t, history, _s in views]
        everyone = list(range(len(views)))
        texts = self._sample(views, everyone, [seed for _t, _h, seed in views])
        slipped = [i for i in everyone if _slips(texts[i], views[i][0], first[i])]
        retry_seeds = [derive_seed(views[i][2], "retry") for i in slipped]
        texts.update(self._sample(views, slipped, retry_seeds))
        turns = []
        for i, (task, history, _seed) in enumerate(views):
            first_slipped = i in slipped
            if first_slipped and _slips(texts[i], task, first[i]):
                repaired = self.fallback.reply(task, history)
                turns.append(UserTurn(repaired.text, repaired.terminated, True, True, True))
            else:
                ends = not first[i] and _is_termination(texts[i])
                turns.append(UserTurn(texts[i], ends, first_slipped, first_slipped))
        return turns

    def _sample(self, views, indices: list[int], seeds: list[int]) -> dict[int, str]:
        if not indices:
            return {}
        prompts = [user_prompt(*views[i][:2]) for i in indices]
        generations = self.backend.chat(prompts, seed=seeds, desc="user", **self.sampling.kwargs)
        return {i: _clean(g.text) for i, g in zip(indices, generations)}


def openings(user, tasks: list[Task], seed: int) -> list[str]:
    """The first user message of each task's conversation, in one batched call: `LLMUser` writes
    it from the hidden goal, `AgendaUser` says the task's vague `opening`."""
    items = [(task, [], derive_seed(seed, task.id, "opening")) for task in tasks]
    return [turn.text for turn in user.respond(items)]


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
