"""Evaluation: fresh simulated conversations, from the user's opening to a round limit.

Each system (the base model, the base model with the proactive system prompt, the trained
adapter) talks with the user simulator on held-out tasks. Per conversation we record:

    task_success  R_ext of the final answer (pass rate / accuracy / BLEU)
    itr           the judge's interactivity score of the whole conversation, in [0, 1]
    tokens_k      thousands of assistant tokens the user had to read
    rounds        assistant turns until the user ended the chat or the limit

and their means per system: the shape of the paper's Table 1. On the qa set, each system's
first reply is checked: a clarifying question when the question is ambiguous, an answer when
it is clear (Table 2). Transcripts are stored, so every metric can be recomputed offline.
"""

from __future__ import annotations

import math

import pandas as pd

from . import judges, llm, metrics, simulate
from .config import JudgeParams, Sampling
from .seeds import derive_seed

# Table 1's rows, named for what each system is (the paper's names).
BASE, PROACTIVE, OFFLINE_DPO = "Base", "Proactive Base", "Offline DPO from base"
SFT, SFT_DPO = "SFT", "Offline DPO from SFT"  # train.method sft; dpo with train.init sft
ONLINE_DPO, GRPO = "Online DPO", "GRPO"  # train.method online_dpo, grpo


def trained_label(train_params) -> str:
    """Table 1's name of the system `train_params` (params.train) trains: by method and init."""
    if train_params.method == "sft":
        return SFT
    if train_params.method == "dpo":
        return SFT_DPO if train_params.init == "sft" else OFFLINE_DPO
    if train_params.method in ("online_dpo", "grpo"):
        return ONLINE_DPO if train_params.method == "online_dpo" else GRPO
    raise ValueError(f"train.method {train_params.method!r} has no Table 1 label")


class Prompted:
    """A backend whose every request starts with `system_prompt` (e.g. the proactive prompt)."""

    def __init__(self, backend, system_prompt: str | None):
        self.backend, self.system_prompt = backend, system_prompt

    def chat(self, conversations, **kwargs):
        if self.system_prompt:
            conversations = [simulate.with_system(c, self.system_prompt) for c in conversations]
        return self.backend.chat(conversations, **kwargs)

    def count_tokens(self, texts):
        return llm.count_tokens(self.backend, texts)


def converse(tasks, assistant, user, *, rounds: int, seed: int, sampling: Sampling, label: str):
    """One conversation per task: the user's first turn, `rounds` assistant turns at most, in
    lock-step."""
    contexts = simulate.Context.openings(tasks, user, seed)
    seeds = [derive_seed(seed, t.id, "eval", "first") for t in tasks]
    first = assistant.chat(
        [c.messages for c in contexts], seed=seeds, desc=label, **sampling.kwargs
    )
    candidates = [[simulate.Candidate(0, label, g.text, s)] for g, s in zip(first, seeds)]
    return contexts, simulate.rollout(
        contexts,
        candidates,
        assistant=assistant,
        user=user,
        n_samples=1,
        window=rounds - 1,
        seed=derive_seed(seed, "eval"),
        sampling=sampling,
        progress=False,
    )


def evaluate(
    tasks,
    systems: dict,
    *,
    user,
    judge,
    rounds: int,
    seed: int,
    sampling: Sampling,
    judge_max_new_tokens: int = 48,
    judging: JudgeParams | None = None,
    doc_metric: str = "paper_bleu",
) -> pd.DataFrame:
    """The transcript table: one row per (system, task). `systems` maps a name to a backend.

    The judge rates each conversation after the opening, with the opening as its history.
    Task success is R_ext of the final answer (documents: `doc_metric`)."""
    judging = judging or JudgeParams()
    rows = []
    for name, assistant in systems.items():
        contexts, futures = converse(
            tasks, assistant, user, rounds=rounds, seed=seed, sampling=sampling, label=name
        )
        conversations = [[*contexts[i].messages, *f.window] for i, f in enumerate(futures)]
        seeds = [derive_seed(seed, t.id, "eval", "itr") for t in tasks]
        scores = [judges.JudgeScore(None, False, "")] * len(tasks)  # no judge: ITR is NaN
        scores = (
            scores
            if judge is None
            else judges.judge_interactivity(
                judge,
                [c.messages for c in contexts],
                [f.window for f in futures],
                [t.goal for t in tasks] if judging.sees_goal else None,
                seeds=seeds,
                max_new_tokens=judge_max_new_tokens,
                reasons=judging.reasons,
            )
        )
        rows_of = zip(tasks, contexts, futures, conversations, scores)
        for task, context, future, conversation, score in rows_of:
            rows.append(
                {
                    "system": name,
                    "task_id": task.id,
                    "kind": task.kind,
                    "task_success": metrics.task_success(
                        task, future.window, history=context.messages, doc_metric=doc_metric
                    ),
                    "itr": score.score if score.parsed else math.nan,
                    "itr_parsed": score.parsed,
                    "tokens_k": future.assistant_tokens / 1000,
                    "rounds": future.rounds + 1,
                    "stop_reason": future.stop_reason,
                    "first_reply": future.window[0]["content"],
                    "messages": conversation,
                }
            )
    return pd.DataFrame(rows)


def summary_table(transcripts: pd.DataFrame) -> pd.DataFrame:
    """Table 1: mean and standard error over tasks of each metric, per system."""
    columns = ["task_success", "itr", "tokens_k", "rounds"]
    grouped = transcripts.groupby("system", sort=False)[columns]
    mean, sem = grouped.mean(), grouped.sem(ddof=1)
    table = mean.join(sem, rsuffix="_sem")
    table["n"] = grouped.size()
    return table


def across_runs(tables: dict[str, dict]) -> pd.DataFrame:
    """One Table 1 from several runs' Table 1s ({run: {system: {metric: value}}}).

    Base and Proactive Base come from the first run that has them (every run of a sweep
    evaluates them on the same tasks with the same cache); each run adds its trained row,
    named by its method, or by method and run where two runs trained the same method.
    """
    rows: dict[str, dict] = {}
    trained = [
        (run, s, v) for run, t in tables.items() for s, v in t.items() if s not in (BASE, PROACTIVE)
    ]
    for base_row in (BASE, PROACTIVE):
        found = next((t[base_row] for t in tables.values() if base_row in t), None)
        if found is not None:
            rows[base_row] = found
    labels = [s for _, s, _ in trained]
    for run, system, values in trained:
        rows[system if labels.count(system) == 1 else f"{system} ({run})"] = values
    return pd.DataFrame.from_dict(rows, orient="index")


def qa_table(qa_tasks, systems: dict, *, seed: int, sampling: Sampling) -> pd.DataFrame:
    """Table 2: clarify-when-ambiguous and answer-when-clear accuracy of the first reply."""
    rows = []
    for name, assistant in systems.items():
        seeds = [derive_seed(seed, t.id, "eval", "qa") for t in qa_tasks]
        openings = [simulate.Context.opening(t).messages for t in qa_tasks]
        replies = assistant.chat(openings, seed=seeds, desc=f"qa {name}", **sampling.kwargs)
        for task, reply in zip(qa_tasks, replies):
            rows.append(
                {
                    "system": name,
                    "task_id": task.id,
                    "ambiguous": task.reference == "clarify",
                    "move": metrics.clarify_or_answer(reply.text),
                    "correct": metrics.qa_correct(reply.text, task),
                    "reply": reply.text,
                }
            )
    table = pd.DataFrame(rows)
    accuracy = table.pivot_table(index="system", columns="ambiguous", values="correct", sort=False)
    accuracy = accuracy.rename(columns={True: "clarify_when_ambiguous", False: "answer_when_clear"})
    return table, accuracy


def bootstrap_ci(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `values` with a percentile bootstrap interval over items (NaNs dropped)."""
    import numpy as np

    data = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    if len(data) == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(n_boot, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(data.mean()), "low": float(low), "high": float(high), "n": len(data)}


def ask_metrics(transcripts: pd.DataFrame, tasks, *, seed: int = 0) -> dict:
    """Issue 13's three metrics per system, each with a 95% bootstrap interval over items, from
    the held-out conversations: clarify-when-ambiguous and answer-when-clear of the first reply
    (`metrics.clarify_or_answer`), and the accuracy of the final answer (`task_success`, which
    for story tasks is the final answer's correctness for the user's intent). Only qa tasks
    with a clarify/answer reference count; {} when there are none."""
    labels = {t.id: t.reference for t in tasks if t.kind == "qa"}
    rows = transcripts[transcripts["task_id"].isin(labels)]
    result = {}
    for system, group in rows.groupby("system", sort=False):
        moves = group["first_reply"].map(metrics.clarify_or_answer)
        wanted = group["task_id"].map(labels)
        ambiguous = wanted == "clarify"
        result[system] = {
            "clarify_when_ambiguous": bootstrap_ci(
                (moves[ambiguous] == "clarify").astype(float), seed=seed
            ),
            "answer_when_clear": bootstrap_ci(
                (moves[~ambiguous] == "answer").astype(float), seed=seed
            ),
            "final_answer_accuracy": bootstrap_ci(group["task_success"], seed=seed),
            "final_answer_accuracy_ambiguous": bootstrap_ci(
                group.loc[ambiguous, "task_success"], seed=seed
            ),
            "final_answer_accuracy_clear": bootstrap_ci(
                group.loc[~ambiguous, "task_success"], seed=seed
            ),
        }
    return result
