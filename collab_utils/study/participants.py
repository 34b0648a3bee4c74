"""Simulated participants: the project's user simulator plays the human, over HTTP.

    with running(study.app()) as url:
        simulate(study, url, n=30, turns=3)

Each simulated participant goes through the same API as the page (consent, messages, a 1-10
rating of every reply, the final document and its rating) and is marked `simulated` in the
database (only the admin token may set that mark). Participants move on independently, each as
soon as its own reply is in, so time spent reflects its system's speed and how soon its user
was satisfied; those whose replies arrive together are rated and answered in one batched call.
The user simulator of the params (`models.user`: agenda or an LLM) writes the messages and
decides when the document is good enough; the judge (`models.judge`) gives the ratings:
1 + 9 x its helpfulness score of each reply in its conversation, and of the final document
(the assistant's last reply) alone against the goal.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import httpx

from .. import judges, llm
from ..cache import GenerationCache
from ..seeds import derive_seed
from ..session import make_user
from .server import Study

MIDPOINT = 5  # the rating when the judge gives no usable score


class SimulationError(RuntimeError):
    """The server refused a simulated participant or never replied."""


@dataclass
class Participant:
    session_id: str
    task: object
    history: list[dict] = field(default_factory=list)
    sent: int = 0


def _checked(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise SimulationError(
            f"{response.request.method} {response.request.url.path}: HTTP "
            f"{response.status_code}: {response.text[:300]}"
        )
    return response.json()


class _Crowd:
    """The simulated participants of one run, their HTTP client, user simulator and judge."""

    def __init__(self, study: Study, client: httpx.Client):
        params = study.params
        cache = GenerationCache(params.cache_file)
        self.study, self.client, self.seed = study, client, params.seed
        self.user = make_user(params, cache)
        self.judge = llm.load_backend(params.models.judge, cache)
        self.judge_tokens = params.generation.judge_max_new_tokens
        self.midpoint_ratings = 0

    def join(self) -> Participant:
        admin = {"Authorization": f"Bearer {self.study.settings.admin_token}"}
        body = {"consent": True, "simulated": True}
        session_id = _checked(self.client.post("/api/sessions", json=body, headers=admin))
        session_id = session_id["session"]
        task_id = self.study.store.session(session_id)["task_id"]
        return Participant(session_id, self.study.tasks[task_id])

    def ratings(self, participants, responses, contexts) -> list[int]:
        """1-10 ratings of `responses` (one per participant), in one judge call."""
        scores = judges.judge_helpfulness(
            self.judge,
            contexts,
            responses,
            [p.task.goal for p in participants],
            seeds=[
                derive_seed(self.seed, p.session_id, len(p.history), "rate") for p in participants
            ],
            max_new_tokens=self.judge_tokens,
        )
        self.midpoint_ratings += sum(s.score is None for s in scores)
        return [MIDPOINT if s.score is None else 1 + round(9 * s.score) for s in scores]

    def write(self, participants: list[Participant]) -> tuple[list[Participant], list[Participant]]:
        """Each participant's next message, in one simulator call: (sent, satisfied)."""
        if not participants:
            return [], []
        items = [(p.task, p.history, derive_seed(self.seed, "study-sim", p.session_id, p.sent))
                 for p in participants]  # fmt: skip
        sent, satisfied = [], []
        for p, turn in zip(participants, self.user.respond(items), strict=True):
            if turn.terminated:
                satisfied.append(p)
                continue
            body = {"text": turn.text, "client_id": secrets.token_hex(8)}
            _checked(self.client.post(f"/api/sessions/{p.session_id}/messages", json=body))
            p.sent += 1
            sent.append(p)
        return sent, satisfied

    def answered(self, waiting: list[Participant]) -> list[Participant]:
        """The participants whose reply is in (their history updated), after rating it."""
        done = []
        for p in waiting:
            state = _checked(self.client.get(f"/api/sessions/{p.session_id}"))
            if state["error"]:
                raise SimulationError(f"session {p.session_id}: {state['error']}")
            if not state["waiting"]:
                p.history = [
                    {"role": m["role"], "content": m["content"]} for m in state["messages"]
                ]
                done.append(p)
        if done:
            replies = [p.history[-1]["content"] for p in done]
            ratings = self.ratings(done, replies, [p.history[:-1] for p in done])
            for p, rating in zip(done, ratings, strict=True):
                body = {"turn": p.sent, "rating": rating}
                _checked(self.client.post(f"/api/sessions/{p.session_id}/ratings", json=body))
        return done

    def finish(self, participants: list[Participant]) -> None:
        """The final document (the last reply), rated alone against the goal."""
        documents = [next(m["content"] for m in reversed(p.history) if m["role"] == "assistant")
                     for p in participants]  # fmt: skip
        ratings = self.ratings(participants, documents, [[] for _ in participants])
        for p, document, rating in zip(participants, documents, ratings, strict=True):
            body = {"document": document, "rating": rating, "comment": "simulated participant"}
            _checked(self.client.post(f"/api/sessions/{p.session_id}/finish", json=body))


def simulate(study: Study, url: str, n: int, *, turns: int = 3, timeout_s: float = 600.0) -> dict:
    """Run `n` simulated participants of at most `turns` messages each against `url`; fails
    when no reply arrives for `timeout_s`."""
    if n < 1 or turns < 1:
        raise ValueError(f"need n >= 1 and turns >= 1, got n={n}, turns={turns}")
    with httpx.Client(base_url=url, timeout=60.0) as client:
        crowd = _Crowd(study, client)
        participants = [crowd.join() for _ in range(n)]
        to_write, waiting, finished = participants, [], 0
        deadline = time.monotonic() + timeout_s
        while to_write or waiting:
            done = [p for p in to_write if p.sent >= turns]
            sent, satisfied = crowd.write([p for p in to_write if p.sent < turns])
            if done + satisfied:
                crowd.finish(done + satisfied)
                finished += len(done + satisfied)
            waiting += sent
            to_write = crowd.answered(waiting)
            waiting = [p for p in waiting if p not in to_write]
            if to_write:
                deadline = time.monotonic() + timeout_s
            elif waiting:
                if time.monotonic() > deadline:
                    raise SimulationError(
                        f"no reply for {len(waiting)} sessions in {timeout_s:.0f} s"
                    )
                time.sleep(0.1)
    return {
        "sessions": [p.session_id for p in participants],
        "finished": finished,
        "midpoint_ratings": crowd.midpoint_ratings,
    }
