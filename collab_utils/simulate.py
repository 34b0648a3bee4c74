"""Simulated users, candidate responses and the lock-step rollout engine.

The multiturn-aware reward (MR) of a candidate response is its expected reward over simulated
futures: after the candidate, a user simulator and the assistant talk for `window` rounds.

    candidates = generate_candidates(contexts, assistant, n=4, proactive_fraction=0.5, seed=0, ...)
    futures = rollout(contexts, candidates, assistant=assistant, user=AgendaUser(),
                      n_samples=3, window=2, seed=0, max_new_tokens=256, temperature=0.8)

Two user simulators share one batched interface, `user.respond(items) -> list[UserTurn]` with
items `(task, history, seed)`:

- `AgendaUser`: rule-based and deterministic. It reveals a hidden requirement when the assistant
  asks about it, checks proposed answers with the task's tests, and complains about one unmet
  requirement at a time.
- `LLMUser`: a language model plays the user. It sees the hidden goal and the chat history (never
  the assistant's system prompt). Replies that slip into the assistant's role are retried once
  with a new seed, then repaired with the agenda simulator's reply; each case is counted.

The engine advances all live futures of all candidates in lock-step: one batched call for the
user and one for the assistant per round; futures that stop drop out.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from . import metrics
from .llm import BackendError, Generation
from .seeds import derive_seed
from .tasks import Task, last_boxed

TERMINATE = "[[TERMINATE]]"

PROACTIVE_SYSTEM_PROMPT = (
    "You are a collaborative assistant. If the user's request is ambiguous or leaves out details "
    "you need, first ask a short clarifying question about them instead of guessing. If the "
    "request is clear, answer it directly."
)

STOP_REASONS = ("terminated", "window", "max_tokens", "error")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Context:
    """A conversation waiting for the assistant's reply: the task, its messages, the turn."""

    task: Task
    messages: list[dict]
    turn: int = 0

    @classmethod
    def opening(cls, task: Task) -> Context:
        """The first turn: the user's vague opening message."""
        return cls(task, [{"role": "user", "content": task.opening}], 0)


@dataclass(frozen=True)
class Candidate:
    """One candidate response; `kind` is 'plain', 'proactive' or a hand-written label."""

    index: int
    kind: str
    text: str
    seed: int | None = None


@dataclass(frozen=True)
class UserTurn:
    """A simulated user message and how the simulator got it."""

    text: str
    terminated: bool = False
    role_slip: bool = False  # the first model reply read like the assistant
    retried: bool = False  # a second reply was sampled with a new seed
    repaired: bool = False  # both slipped: the agenda simulator's reply was used instead


@dataclass
class Future:
    """One simulated continuation of a candidate: `messages[start]` is the candidate."""

    context: int
    candidate: int
    sample: int
    seed: int
    messages: list[dict]
    start: int
    stop_reason: str = "window"
    rounds: int = 0
    assistant_tokens: int = 0  # candidate + later assistant turns, the assistant's tokenizer
    role_slips: int = 0
    retries: int = 0
    repairs: int = 0
    error: str = ""
    live: bool = field(default=True, repr=False)

    @property
    def window(self) -> list[dict]:
        """The candidate and everything after it."""
        return self.messages[self.start :]


# ------------------------------------------------------------------ answer checking


def proposes_answer(task: Task, text: str) -> bool:
    """Does this assistant message offer a solution (code, a final answer, a document)?"""
    if task.kind == "code":
        return metrics.extract_code(text, task.entry_point) is not None
    if task.kind == "math":
        stated = re.search(r"answer is", text, re.IGNORECASE)
        return bool(
            last_boxed(text) or stated or ("?" not in text and metrics.extract_answer(text))
        )
    if task.kind == "doc":
        return len(text.split()) >= min(40, len(task.reference.split()) // 2)
    return metrics.clarify_or_answer(text) == "answer"


def final_answer(task: Task, window: list[dict]) -> str | None:
    """The last assistant message of the window that proposes an answer."""
    for message in reversed(window):
        if message["role"] == "assistant" and proposes_answer(task, message["content"]):
            return message["content"]
    return None


def solves(task: Task, text: str, bleu_threshold: float = 0.3) -> bool:
    """Would the user accept this answer? Tests pass, the answer is right, the draft is close."""
    if task.kind == "code":
        return metrics.pass_rate(text, task) == 1.0
    if task.kind == "math":
        return metrics.accuracy(text, task) == 1.0
    if task.kind == "doc":
        return metrics.bleu(text, task.reference) >= bleu_threshold
    expected = str(task.metadata.get("answer", "")).lower()
    return not expected or expected in text.lower()


# ------------------------------------------------------------------ user simulators


def _user_view(history: list[dict]) -> list[dict]:
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
        return [self.reply(task, _user_view(history)) for task, history, _seed in items]

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
        if proposes_answer(task, last):
            if solves(task, last, self.bleu_threshold):
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

    def __init__(
        self,
        backend,
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.8,
        top_p: float = 1.0,
        bleu_threshold: float = 0.3,
    ):
        self.backend = backend
        self.sampling = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        self.fallback = AgendaUser(bleu_threshold)

    def respond(self, items: list[tuple[Task, list[dict], int]]) -> list[UserTurn]:
        views = [(task, _user_view(history), seed) for task, history, seed in items]
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
        generations = self.backend.chat(prompts, seed=seeds, desc="user", **self.sampling)
        return {i: _clean(g.text) for i, g in zip(indices, generations)}


def make_user(params, backend=None):
    """The simulator `params.models.user` names: `AgendaUser` for backend 'agenda', else an
    `LLMUser` on `backend` (the loaded user-role model) with the params' user sampling."""
    if params.models.user.backend == "agenda":
        return AgendaUser(params.tasks.accept_bleu)
    if backend is None:
        raise ValueError("an LLM user simulator needs its loaded backend")
    return LLMUser(
        backend,
        max_new_tokens=params.generation.user_max_new_tokens,
        temperature=params.generation.temperature,
        top_p=params.generation.top_p,
        bleu_threshold=params.tasks.accept_bleu,
    )


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


# ---------------------------------------------------------------------- candidates


def with_system(messages: list[dict], prompt: str) -> list[dict]:
    """`messages` with `prompt` as (the start of) the system message."""
    if messages and messages[0]["role"] == "system":
        merged = f"{prompt}\n\n{messages[0]['content']}"
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def candidate_kinds(n: int, proactive_fraction: float) -> list[str]:
    """`n` kinds: plain first, then round(n * proactive_fraction) proactive ones."""
    n_proactive = round(n * proactive_fraction)
    return ["plain"] * (n - n_proactive) + ["proactive"] * n_proactive


def generate_candidates(
    contexts: list[Context],
    assistant,
    *,
    n: int,
    proactive_fraction: float,
    seed: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
) -> list[list[Candidate]]:
    """`n` candidates per context, plain and proactive-prompted, in one batched call."""
    requests, seeds, slots = [], [], []
    for context in contexts:
        for index, kind in enumerate(candidate_kinds(n, proactive_fraction)):
            messages = context.messages
            if kind == "proactive":
                messages = with_system(messages, PROACTIVE_SYSTEM_PROMPT)
            requests.append(messages)
            seeds.append(derive_seed(seed, context.task.id, context.turn, index, "candidate"))
            slots.append((index, kind))
    generations = assistant.chat(
        requests,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seeds,
        desc="candidates",
    )
    made = [Candidate(i, kind, g.text, s) for (i, kind), g, s in zip(slots, generations, seeds)]
    return [made[c * n : (c + 1) * n] for c in range(len(contexts))]


def handwritten(responses: list[tuple[str, str]]) -> list[Candidate]:
    """Hand-written candidates from (kind, text) pairs, e.g. [("answer-now", A), ("ask-first", B)]."""
    return [Candidate(i, kind, text) for i, (kind, text) in enumerate(responses)]


# ------------------------------------------------------------------ rollout engine


def count_tokens(backend, texts: list[str]) -> list[int]:
    """Token counts with the backend's tokenizer; without one (no backend, a remote server)
    an estimate of 4/3 tokens per word."""
    if not texts:
        return []
    if backend is not None:
        try:
            return backend.count_tokens(texts)
        except NotImplementedError:
            pass
    return [round(len(text.split()) * 4 / 3) for text in texts]


def _new_futures(contexts, candidates, n_samples, window, seed, assistant) -> list[Future]:
    """S futures per (context, candidate); a window of 0 needs only one (nothing is sampled)."""
    futures = []
    for c, (context, options) in enumerate(zip(contexts, candidates, strict=True)):
        for candidate in options:
            for sample in range(n_samples if window > 0 else 1):
                messages = [*context.messages, {"role": "assistant", "content": candidate.text}]
                place = (context.task.id, context.turn, candidate.index, sample)
                futures.append(
                    Future(
                        c,
                        candidate.index,
                        sample,
                        derive_seed(seed, *place),
                        messages,
                        start=len(context.messages),
                    )
                )
    tokens = count_tokens(assistant, [f.messages[f.start]["content"] for f in futures])
    for future, count in zip(futures, tokens):
        future.assistant_tokens = count
    return futures


def _step_seed(seed, contexts, future: Future, round_: int, role: str) -> int:
    context = contexts[future.context]
    place = (context.task.id, context.turn, future.candidate, future.sample, round_, role)
    return derive_seed(seed, *place)


def _advance(futures, contexts, *, assistant, user, window, seed, sampling, token_budget, bar):
    """Run `futures` for `window` rounds in lock-step: one user call, one assistant call a round."""
    for round_ in range(1, window + 1):
        live = [f for f in futures if f.live]
        if not live:
            return
        items = [
            (contexts[f.context].task, f.messages, _step_seed(seed, contexts, f, round_, "user"))
            for f in live
        ]
        try:
            turns = user.respond(items)
        except BackendError as error:
            _stop(live, "error", bar, window, str(error))
            return
        for future, turn in zip(live, turns):
            future.messages.append({"role": "user", "content": turn.text})
            future.role_slips += turn.role_slip
            future.retries += turn.retried
            future.repairs += turn.repaired
            if turn.terminated:
                _stop([future], "terminated", bar, window)
        live = [f for f in live if f.live]
        if not live:
            return
        seeds = [_step_seed(seed, contexts, f, round_, "assistant") for f in live]
        try:
            replies = assistant.chat([f.messages for f in live], seed=seeds, **sampling)
        except BackendError as error:
            _stop(live, "error", bar, window, str(error))
            return
        tokens = count_tokens(assistant, [r.text for r in replies])
        for future, reply, count in zip(live, replies, tokens):
            future.messages.append({"role": "assistant", "content": reply.text})
            future.assistant_tokens += count
            future.rounds = round_
        bar.update(len(live))
        for future in live:
            if token_budget is not None and future.assistant_tokens >= token_budget:
                _stop([future], "max_tokens", bar, window)
    for future in futures:
        future.live = False


def _stop(futures, reason: str, bar, window: int, error: str = "") -> None:
    """End futures early; the bar counts their remaining rounds as done."""
    for future in futures:
        future.live, future.stop_reason, future.error = False, reason, error
        bar.update(window - future.rounds)


def rollout(
    contexts: list[Context],
    candidates: list[list[Candidate]],
    *,
    assistant,
    user,
    n_samples: int,
    window: int,
    seed: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    token_budget: int | None = None,
    progress: bool = True,
) -> list[Future]:
    """Simulate `n_samples` futures of `window` rounds for every candidate, all in lock-step.

    `candidates[i]` are the candidates for `contexts[i]`. Each round makes one batched user call
    and one batched assistant call over every live future. A future stops when the user sends
    the termination signal ('terminated'), when the window is over ('window'), when its
    assistant tokens reach `token_budget` ('max_tokens') or when a backend fails ('error').
    Seeds: derive_seed(seed, task, turn, candidate, sample, round, role).
    """
    futures = _new_futures(contexts, candidates, n_samples, window, seed, assistant)
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    total = len(futures) * window
    with tqdm(total=total, desc="rollouts", unit="round", disable=not progress) as bar:
        _advance(
            futures,
            contexts,
            assistant=assistant,
            user=user,
            window=window,
            seed=seed,
            sampling=sampling,
            token_budget=token_budget,
            bar=bar,
        )
    return futures


def rollout_one_at_a_time(
    contexts: list[Context],
    candidates: list[list[Candidate]],
    *,
    assistant,
    user,
    n_samples: int,
    window: int,
    seed: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    token_budget: int | None = None,
    progress: bool = False,
) -> list[Future]:
    """The same futures as `rollout` (same seeds), generated one future at a time.

    Kept only as the baseline of `bench_rollouts` and for the test that both paths agree.
    """
    futures = _new_futures(contexts, candidates, n_samples, window, seed, assistant)
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    with tqdm(total=len(futures) * window, desc="one at a time", disable=not progress) as bar:
        for future in futures:
            _advance(
                [future],
                contexts,
                assistant=assistant,
                user=user,
                window=window,
                seed=seed,
                sampling=sampling,
                token_budget=token_budget,
                bar=bar,
            )
    return futures


# ----------------------------------------------------------------------- benchmark


class _RecordingBackend:
    """Passes `chat` through to a backend and keeps every request with its generations."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def chat(self, conversations, **kwargs):
        generations = self.backend.chat(conversations, **kwargs)
        # copies: the engine appends the next turns to these very lists
        self.calls.append(([list(c) for c in conversations], kwargs, generations))
        return generations

    def count_tokens(self, texts):
        return self.backend.count_tokens(texts)


def _raw_generate_seconds(backend, calls) -> tuple[float, int, int]:
    """Time `backend.generate_ids` alone on the batches the engine sent to the model.

    Returns the seconds, the tokens and how many replies differ from the engine's (0 when the
    replay re-sends exactly the engine's requests).
    """
    seconds, tokens, differ = 0.0, 0, 0
    for conversations, kwargs, generations in calls:
        requests = zip(conversations, kwargs["seed"], generations)
        fresh = [(c, s, g) for c, s, g in requests if not g.cached]
        if not fresh:
            continue
        params = {k: kwargs.get(k, 1.0) for k in ("max_new_tokens", "temperature", "top_p")}
        prompts = backend.prompt_ids([c for c, _, _ in fresh])
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = backend.spec.batch_size
        for batch in (order[i : i + size] for i in range(0, len(order), size)):
            started = time.perf_counter()
            ids = backend.generate_ids(
                [prompts[i] for i in batch], params, [fresh[i][1] for i in batch]
            )
            seconds += time.perf_counter() - started
            tokens += sum(len(row) for row in ids)
            texts = backend.tokenizer.batch_decode(ids, skip_special_tokens=True)
            differ += sum(t.strip() != fresh[i][2].text for t, i in zip(texts, batch))
    return seconds, tokens, differ


def bench_rollouts(
    params=None,
    *,
    n_contexts: int = 4,
    n_candidates: int = 4,
    n_samples: int = 3,
    window: int = 2,
    max_new_tokens: int = 64,
    user: str = "agenda",
) -> dict:
    """Lock-step vs one-at-a-time futures, and the engine vs raw batched `generate`.

    Runs on `params.models.assistant` (default: the embedded hf model), each path with a cold
    cache in a temp folder, on the openings of `builtin:code`. `user` is 'agenda' (only the
    assistant is a model) or 'llm' (the same model plays both roles). Returns the two ratios
    and the seconds, token and call counts they come from.
    """
    from . import llm, tasks
    from .config import ModelSpec

    spec = params.models.assistant if params is not None else ModelSpec()
    seed = params.seed if params is not None else 0
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0.8}
    contexts = [Context.opening(t) for t in tasks.load("builtin:code")[:n_contexts]]
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as folder:

        def engine(cache_name):
            backend = _RecordingBackend(llm.load_backend(spec, Path(folder) / cache_name))
            simulator = AgendaUser() if user == "agenda" else LLMUser(backend, **sampling)
            settings = dict(user=simulator, n_samples=n_samples, window=window, seed=seed)
            return backend, {**settings, **sampling, "assistant": backend}

        lockstep, lockstep_settings = engine("lockstep.sqlite")
        candidates = generate_candidates(
            contexts, lockstep, n=n_candidates, proactive_fraction=0.5, seed=seed, **sampling
        )
        lockstep.calls.clear()
        calls_before = lockstep.backend.model_calls
        started = time.perf_counter()
        rollout(contexts, candidates, progress=False, **lockstep_settings)
        lockstep_s = time.perf_counter() - started
        lockstep_calls = lockstep.backend.model_calls - calls_before

        single, single_settings = engine("one_at_a_time.sqlite")
        started = time.perf_counter()
        rollout_one_at_a_time(contexts, candidates, **single_settings)
        single_s = time.perf_counter() - started

        raw_s, raw_tokens, raw_differ = _raw_generate_seconds(lockstep.backend, lockstep.calls)
    engine_tokens = sum(
        g.completion_tokens for _, _, gens in lockstep.calls for g in gens if not g.cached
    )
    return {
        "lockstep_speedup": single_s / lockstep_s,
        "engine_vs_raw_generate": (engine_tokens / lockstep_s) / (raw_tokens / raw_s),
        "lockstep_s": lockstep_s,
        "one_at_a_time_s": single_s,
        "raw_generate_s": raw_s,
        "engine_tokens": engine_tokens,
        "raw_tokens": raw_tokens,
        "raw_replies_differing": raw_differ,  # 0: the replay re-sent the engine's requests
        "lockstep_model_calls": lockstep_calls,
        "one_at_a_time_model_calls": single.backend.model_calls,
        "futures": n_contexts * n_candidates * n_samples,
        "window": window,
        "max_new_tokens": max_new_tokens,
        "user": user,
        "model": spec.model,
    }
