"""The rollout engine: contexts, candidate responses and their simulated futures.

The multiturn-aware reward (MR) of a candidate response is its expected reward over simulated
futures: after the candidate, a user simulator (`users`) and the assistant talk for `window`
rounds.

    sampling = params.sampling()                  # max_new_tokens, temperature, top_p
    candidates = generate_candidates(contexts, assistant, n=4, proactive_fraction=0.5,
                                     seed=0, sampling=sampling)
    futures = rollout(contexts, candidates, assistant=assistant, user=AgendaUser(),
                      n_samples=3, window=2, seed=0, sampling=sampling)

The engine advances all live futures of all candidates in lock-step: one batched call for the
user and one for the assistant per round; futures that stop drop out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .config import Sampling
from .llm import BackendError, count_tokens
from .seeds import derive_seed
from .tasks import Task
from .users import openings

# The paper's "proactive" prompt for Proactive Base, in our own words with the same content:
# think about what is missing, ask when it matters, otherwise answer; spare the user's effort.
PROACTIVE_SYSTEM_PROMPT = (
    "You are a collaborative assistant. Before you answer, think about what the user's request "
    "leaves open: details you would otherwise have to guess, such as the exact goal, "
    "constraints, format, length, or which of several things they mean. If a missing detail "
    "would change your answer, ask one short, specific question about it (offer options when "
    "that makes replying easy) instead of guessing. If the request is clear, answer it directly "
    "and concisely. Keep what the user must read and type short, and look ahead: prefer the "
    "response that gets the user to their goal in the fewest turns."
)

STOP_REASONS = ("terminated", "window", "max_tokens", "error")


# ----------------------------------------------------------------------------- data


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Context:
    """A conversation waiting for the assistant's reply: the task, its messages, the turn."""

    task: Task
    messages: list[dict]
    turn: int = 0

    @classmethod
    def opening(cls, task: Task) -> Context:
        """The first turn: the task's vague opening message."""
        return cls(task, [{"role": "user", "content": task.opening}], 0)

    @classmethod
    def openings(cls, tasks: list[Task], user, seed: int) -> list[Context]:
        """The first turn of each task, written by the user simulator in one batched call: an
        LLM user writes it from the hidden goal, the agenda user says the vague opening."""
        texts = openings(user, tasks, seed)
        return [
            cls(task, [{"role": "user", "content": text}], 0) for task, text in zip(tasks, texts)
        ]


@dataclass(frozen=True)
class Candidate:
    """One candidate response; `kind` is 'plain', 'proactive' or a hand-written label."""

    index: int
    kind: str
    text: str
    seed: int | None = None


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
    assistant_tokens: int = 0  # candidate + later assistant turns (llm.count_tokens)
    user_tokens: int = 0  # the user's turns in the window
    role_slips: int = 0
    retries: int = 0
    repairs: int = 0
    error: str = ""
    live: bool = field(default=True, repr=False)

    @property
    def window(self) -> list[dict]:
        """The candidate and everything after it."""
        return self.messages[self.start :]


# ---------------------------------------------------------------------- candidates


def with_system(messages: list[dict], prompt: str) -> list[dict]:
    """`messages` with `prompt` as (the start of) the system message."""
    if messages and messages[0]["role"] == "system":
        merged = f"{prompt}\n\n{messages[0]['content']}"
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


# Few-shot candidates (issue 13): the same model shown three short exchanges first: one clear
# question it answered, then two ambiguous ones where it asked. Hand-written,
# not from any story template; the pair prompt never contains them (like the proactive prompt).
FEWSHOT_MESSAGES = [
    {
        "role": "user",
        "content": "Lucy has two cats, Tiger and Snow. Tiger sleeps on the sofa. Snow sleeps on "
        "the bed.\n\nWhere does Snow sleep?",
    },
    {"role": "assistant", "content": "Snow sleeps on the bed."},
    {
        "role": "user",
        "content": "Tom and Sam fixed the old fence. Tom painted the fence green. Sam painted "
        "the gate white.\n\nWhat color did he paint?",
    },
    {"role": "assistant", "content": "Do you mean Tom or Sam?"},
    {
        "role": "user",
        "content": "Two jars stood on the shelf, a tall one and a short one. The tall jar held "
        "rice. The short jar held sugar.\n\nWhat was in the jar?",
    },
    {"role": "assistant", "content": "Which jar do you mean, the tall one or the short one?"},
]


def candidate_kinds(n: int, proactive_fraction: float, fewshot_fraction: float = 0.0) -> list[str]:
    """`n` kinds: plain first, then round(n * proactive_fraction) proactive ones, then
    round(n * fewshot_fraction) few-shot ones."""
    n_proactive = round(n * proactive_fraction)
    n_fewshot = min(round(n * fewshot_fraction), n - n_proactive)
    n_plain = n - n_proactive - n_fewshot
    return ["plain"] * n_plain + ["proactive"] * n_proactive + ["fewshot"] * n_fewshot


def with_fewshot(messages: list[dict]) -> list[dict]:
    """`messages` after the few-shot exchanges (after a system message, if any)."""
    if messages and messages[0]["role"] == "system":
        return [messages[0], *FEWSHOT_MESSAGES, *messages[1:]]
    return [*FEWSHOT_MESSAGES, *messages]


def generate_candidates(
    contexts: list[Context],
    assistant,
    *,
    n: int,
    proactive_fraction: float,
    seed: int,
    sampling: Sampling,
    fewshot_fraction: float = 0.0,
) -> list[list[Candidate]]:
    """`n` candidates per context, plain, proactive-prompted and few-shot, in one batched call."""
    requests, seeds, slots = [], [], []
    for context in contexts:
        for index, kind in enumerate(candidate_kinds(n, proactive_fraction, fewshot_fraction)):
            messages = context.messages
            if kind == "proactive":
                messages = with_system(messages, PROACTIVE_SYSTEM_PROMPT)
            if kind == "fewshot":
                messages = with_fewshot(messages)
            requests.append(messages)
            seeds.append(derive_seed(seed, context.task.id, context.turn, index, "candidate"))
            slots.append((index, kind))
    generations = assistant.chat(requests, seed=seeds, desc="candidates", **sampling.kwargs)
    made = [Candidate(i, kind, g.text, s) for (i, kind), g, s in zip(slots, generations, seeds)]
    return [made[c * n : (c + 1) * n] for c in range(len(contexts))]


def handwritten(responses: list[tuple[str, str]]) -> list[Candidate]:
    """Hand-written candidates from (kind, text) pairs, e.g. [("answer-now", A), ("ask-first", B)]."""
    return [Candidate(i, kind, text) for i, (kind, text) in enumerate(responses)]


# ------------------------------------------------------------------ rollout engine


def new_futures(contexts, candidates, n_samples, window, seed, assistant) -> list[Future]:
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


def advance(futures, contexts, *, assistant, user, window, seed, sampling, token_budget, bar):
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
        user_tokens = count_tokens(assistant, [turn.text for turn in turns])
        for future, turn, count in zip(live, turns, user_tokens):
            future.messages.append({"role": "user", "content": turn.text})
            future.user_tokens += count
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
            replies = assistant.chat([f.messages for f in live], seed=seeds, **sampling.kwargs)
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
    sampling: Sampling,
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
    futures = new_futures(contexts, candidates, n_samples, window, seed, assistant)
    total = len(futures) * window
    with tqdm(total=total, desc="rollouts", unit="round", disable=not progress) as bar:
        advance(
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
