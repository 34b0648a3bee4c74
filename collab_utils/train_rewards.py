"""MR as the reward of responses sampled from the policy while it trains (online_dpo, grpo).

    reward = train_rewards.reward_for(params)   # None unless train.method is online_dpo or grpo
    contexts = train_rewards.training_contexts(pair_list, reward.tasks)
    mr = reward.score(contexts, [["response 1", "response 2"], ...])   # one row per context
    rewards = reward(prompts=..., completions=..., task_id=..., turn=...)  # TRL's reward_funcs

For a whole batch of sampled responses at once, the responses to one context become that
context's candidates (identical texts scored once), and `simulate.rollout` simulates S futures of
each in lock-step: one batched user call and one batched assistant call per round across every
context and response of the batch, then one batched judge call for ITR (and one for single-turn
helpfulness, logged beside MR). The futures' assistant turns come from the run's assistant role
(the base model), not from the policy being trained: MR is then a fixed function of (context,
response), the optimizer chases a stationary reward, and the futures of a response the policy
samples again are cache hits. Seeds derive from (run seed, task, turn, position in the group,
sample, round, role), as in data generation, and every generation goes through the roles'
`GenerationCache`: a rerun that samples the same responses makes no new generation.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, is_dataclass

import pandas as pd

from . import reward, simulate
from .config import ONLINE_METHODS, JudgeParams, Params, Sampling
from .tasks import Task


@dataclass
class MRReward:
    """The multiturn-aware reward of sampled responses, through the rollout engine and cache.

    `stats` accumulates what the scoring cost (`last`: of the latest call): calls, scored
    responses, generations per role (cache misses), seconds in rollouts and in the judge.
    """

    tasks: dict[str, Task]
    assistant: object  # the futures' assistant (llm backend)
    user: object  # the user simulator (users.AgendaUser or users.LLMUser)
    judge: object | None  # None: no ITR term (μ = 0)
    n_samples: int
    window: int
    seed: int
    sampling: Sampling
    lam: float | None = None
    mu: float = 1.0
    token_budget: int | None = None
    token_turns: str = "window"
    judge_max_new_tokens: int = 48
    judging: JudgeParams = field(default_factory=JudgeParams)
    doc_metric: str = "paper_bleu"
    stats: dict = field(default_factory=lambda: defaultdict(float), repr=False)
    last: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_params(cls, params: Params, roles, tasks: list[Task]) -> MRReward:
        """The run's reward settings; S is `train.futures`, else `reward.n_samples`."""
        return cls(
            tasks={task.id: task for task in tasks},
            assistant=roles.assistant,
            user=roles.user,
            judge=roles.judge if params.reward.mu > 0 else None,
            n_samples=params.train.futures or params.reward.n_samples,
            window=params.reward.window,
            seed=params.seed,
            sampling=params.sampling(),
            lam=params.reward.lam,
            mu=params.reward.mu,
            token_budget=params.reward.token_budget,
            token_turns=params.reward.token_turns,
            judge_max_new_tokens=params.generation.judge_max_new_tokens,
            judging=params.judge,
            doc_metric=params.tasks.doc_metric,
        )

    def settings(self) -> dict:
        """Everything but the backends' weights that changes a score (for reuse digests)."""
        values = {k: v for k, v in self.__dict__.items() if k not in ("tasks", "stats", "last")}
        for role in ("assistant", "user", "judge"):
            values[role] = _identity(values[role])
        values.update(sampling=asdict(self.sampling), judging=asdict(self.judging))
        return values

    def generated(self) -> dict[str, int]:
        """Generations that reached a model so far, per role (cache hits excluded)."""
        user = getattr(self.user, "backend", None)
        return {
            "assistant": self.assistant.generated,
            "user": user.generated if user is not None else 0,
            "judge": self.judge.generated if self.judge is not None else 0,
        }

    def score(self, contexts: list[simulate.Context], responses: list[list[str]]) -> pd.DataFrame:
        """MR of `responses[i]` (texts) to `contexts[i]`: the candidate table (`reward.summarize`)
        with `mr` per (context, candidate); identical texts of one context share one candidate."""
        candidates = [
            [simulate.Candidate(i, "policy", text) for i, text in enumerate(dict.fromkeys(texts))]
            for texts in responses
        ]
        before = self.generated()
        started = time.perf_counter()
        futures = simulate.rollout(
            contexts,
            candidates,
            assistant=self.assistant,
            user=self.user,
            n_samples=self.n_samples,
            window=self.window,
            seed=self.seed,
            sampling=self.sampling,
            token_budget=self.token_budget,
            progress=False,
        )
        rolled = time.perf_counter()
        table = reward.score_futures(
            futures,
            contexts,
            candidates,
            judge=self.judge,
            seed=self.seed,
            lam=self.lam,
            mu=self.mu,
            judge_max_new_tokens=self.judge_max_new_tokens,
            judging=self.judging,
            token_turns=self.token_turns,
            doc_metric=self.doc_metric,
        )
        self.last = {
            "rollout_seconds": rolled - started,
            "judge_seconds": time.perf_counter() - rolled,
            "calls": 1,
            "responses": sum(len(texts) for texts in responses),
            **{f"generated_{r}": n - before[r] for r, n in self.generated().items()},
        }
        for name, value in self.last.items():
            self.stats[name] += value
        return reward.summarize(table)

    def mr_of(self, contexts: list[simulate.Context], responses: list[list[str]]):
        """MR per response, in the shape of `responses` (NaN where every future failed)."""
        table = self.score(contexts, responses).set_index(["context", "response"])["mr"]
        return [[float(table[(c, text)]) for text in texts] for c, texts in enumerate(responses)]

    def __call__(self, prompts, completions, task_id, turn, **kwargs) -> list[float | None]:
        """TRL's reward-function call: one MR per completion of the batch, all scored at once.

        Completions of the same prompt (task, turn, messages) form one group of candidates.
        """
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (prompt, task, t) in enumerate(zip(prompts, task_id, turn, strict=True)):
            groups[(task, int(t), _key(prompt))].append(i)
        contexts = [
            simulate.Context(self.tasks[task], _messages(prompts[rows[0]]), t)
            for (task, t, _), rows in groups.items()
        ]
        texts = [[_text(completions[i]) for i in rows] for rows in groups.values()]
        scores = self.mr_of(contexts, texts)
        rewards: list[float | None] = [None] * len(completions)
        for rows, values in zip(groups.values(), scores):
            for i, value in zip(rows, values):
                rewards[i] = None if math.isnan(value) else value
        log_metric = kwargs.get("log_metric")  # TRL averages these per logged step
        if log_metric is not None:
            for name, value in self.last.items():
                log_metric(f"mr/{name}", float(value))
        return rewards


def reward_for(params: Params) -> MRReward | None:
    """The reward `params.train.method` needs: MR with the run's roles (generation cache
    included) on its training tasks for online_dpo and grpo; None for the offline methods."""
    if params.train.method not in ONLINE_METHODS:
        return None
    from . import session

    train_tasks, _ = session.task_splits(params)
    return MRReward.from_params(params, session.load_roles(params), train_tasks)


def training_contexts(records: list[dict], tasks: dict[str, Task]) -> list[simulate.Context]:
    """The contexts to sample on: one per (task_id, turn) of `records` (pairs or candidate rows,
    each with `task_id`, `turn` and `prompt`), in first-seen order."""
    contexts = {}
    for index, record in enumerate(records):
        missing = [k for k in ("task_id", "turn", "prompt") if k not in record]
        if missing:
            raise ValueError(f"record {index + 1}: needs {missing} to place it in a task")
        if record["task_id"] not in tasks:
            raise ValueError(
                f"record {index + 1}: task {record['task_id']!r} is not among the training tasks"
            )
        key = (record["task_id"], int(record["turn"]))
        if key not in contexts:
            task = tasks[record["task_id"]]
            contexts[key] = simulate.Context(task, _messages(record["prompt"]), key[1])
    if not contexts:
        raise ValueError("no training contexts: the records are empty")
    return list(contexts.values())


def _identity(role) -> str:
    """A role for digests: a backend's fingerprint (model, adapter, precision); a user
    simulator's settings and, for an LLM user, its backend's fingerprint."""
    if role is None or hasattr(role, "fingerprint"):
        return getattr(role, "fingerprint", "none")
    settings = {
        k: v if is_dataclass(v) or not hasattr(v, "__dict__") else _identity(v)
        for k, v in vars(role).items()
        if k != "backend"
    }
    return f"{type(role).__name__}{_identity(getattr(role, 'backend', None))}{settings!r}"


def _messages(prompt) -> list[dict]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def _key(prompt) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt)


def _text(completion) -> str:
    """A completion's text: TRL passes conversational ones as [{"role": ..., "content": ...}]."""
    if isinstance(completion, str):
        return completion.strip()
    return str(completion[-1]["content"]).strip()
