"""The multiturn-aware reward (MR) of candidate responses.

For each simulated future f of a candidate (see `simulate.rollout`):

    R*(f)  = R_ext(f) + R_int(f)
    R_ext  = task success of the final answer in the window (code: pass rate; math: accuracy;
             doc: BLEU against the reference; qa: clarified when ambiguous / answered when clear)
    R_int  = -min(λ · tokens, 1) + μ · ITR
    tokens = the tokens of the window (candidate included; `reward.token_turns`: all turns, as
             the paper counts, or the assistant's only), one tokenizer for every system
    ITR    = the judge's interactivity score of the conversation, in [0, 1]

and MR(candidate) = the mean of R* over its S futures. Every term is a column of the future
table, so `rescore(table, lam=..., mu=...)` recomputes R_int and R* without any generation, and
`mr_at(table, lam=..., mu=...)` gives the candidate table (MR) at new λ and μ.

Missing scores are never zeros. A judge reply without a score leaves `itr` NaN with
`itr_parsed=False`, so that future's R* is NaN and MR averages the others (`n` counts them).
With no judge at all (`judge=None`) the interactivity term is left out of R_int on purpose
(`judged=False`; it equals μ = 0) and helpfulness is NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import judges, metrics, simulate
from .config import LAM_PRESETS, JudgeParams, Params
from .seeds import derive_seed


def token_penalty(tokens, lam):
    """-min(λ·tokens, 1): the price of what the user must read, capped at 1."""
    return -np.minimum(np.asarray(lam, float) * np.asarray(tokens, float), 1.0)


def interactivity(itr, judged, mu):
    """μ·ITR, left out (0) where no judge was used."""
    return np.where(np.asarray(judged), np.asarray(mu, float) * np.asarray(itr, float), 0.0)


def intrinsic_reward(tokens, itr, judged, lam: float, mu: float):
    """R_int = -min(λ·tokens, 1) + μ·ITR; the ITR term is left out where no judge was used."""
    return token_penalty(tokens, lam) + interactivity(itr, judged, mu)


def _judge_interactivity(judge, futures, contexts, seed, max_new_tokens, judging: JudgeParams):
    """(itr, parsed, raw) per future, from one batched judge call (NaN where not scored).

    The judge sees the context as history and rates the follow-up: the candidate and its future.
    """
    if judge is None or not futures:
        return [math.nan] * len(futures), [False] * len(futures), [""] * len(futures)
    histories = [[m for m in f.messages[: f.start] if m["role"] != "system"] for f in futures]
    goals = [contexts[f.context].task.goal for f in futures] if judging.sees_goal else None
    seeds = [_seed(seed, contexts[f.context], f.candidate, f.sample, "itr") for f in futures]
    scores = judges.judge_interactivity(
        judge,
        histories,
        [f.window for f in futures],
        goals,
        seeds=seeds,
        max_new_tokens=max_new_tokens,
        reasons=judging.reasons,
    )
    return _unpack(scores)


def _judge_helpfulness(judge, contexts, candidates, seed, max_new_tokens, judging: JudgeParams):
    """{(context, candidate): (score, parsed)}: the judge on each candidate alone, one call."""
    pairs = [(c, cand) for c, options in enumerate(candidates) for cand in options]
    if judge is None:
        return {(c, cand.index): (math.nan, False) for c, cand in pairs}
    goals = [contexts[c].task.goal for c, _ in pairs] if judging.sees_goal else None
    scores = judges.judge_helpfulness(
        judge,
        [contexts[c].messages for c, _ in pairs],
        [cand.text for _, cand in pairs],
        goals,
        seeds=[_seed(seed, contexts[c], cand.index, 0, "helpfulness") for c, cand in pairs],
        max_new_tokens=max_new_tokens,
        reasons=judging.reasons,
    )
    values, parsed, _raw = _unpack(scores)
    return {(c, cand.index): (v, p) for (c, cand), v, p in zip(pairs, values, parsed)}


def _task_columns(context, future, doc_metric: str) -> dict:
    """r_ext and the task columns beside it (NaN for a failed future)."""
    columns = metrics.score_columns(
        context.task, future.window, history=context.messages, doc_metric=doc_metric
    )
    columns["r_ext"] = columns.pop("task_success")
    if future.stop_reason == "error":
        columns = dict.fromkeys(columns, math.nan)
    return columns


def _unpack(scores):
    values = [math.nan if s.score is None else s.score for s in scores]
    return values, [s.parsed for s in scores], [s.raw for s in scores]


def _seed(seed, context, candidate, sample, purpose) -> int:
    return derive_seed(seed, context.task.id, context.turn, candidate, sample, purpose)


def score_futures(
    futures,
    contexts,
    candidates,
    *,
    judge,
    seed: int,
    lam: float | None,
    mu: float,
    judge_max_new_tokens: int = 48,
    judging: JudgeParams | None = None,
    token_turns: str = "window",
    doc_metric: str = "paper_bleu",
) -> pd.DataFrame:
    """The future table: one row per (context, candidate, sample), one column per term.

    `lam` None takes the paper's preset for each task kind (`config.LAM_PRESETS`). `tokens` is
    what λ prices: the whole window ('window', the paper's count) or the assistant's turns.
    A future that failed (stop reason 'error') gets NaN R_ext, so MR leaves it out. R_ext is
    the final answer's score in the window (else in the context before it): code all tests pass,
    documents `doc_metric` (beside it both BLEUs; code: `tests_passed_fraction`, never in R_ext).
    """
    judging = judging or JudgeParams()
    itr, itr_parsed, itr_raw = _judge_interactivity(
        judge, futures, contexts, seed, judge_max_new_tokens, judging
    )
    helpfulness = _judge_helpfulness(
        judge, contexts, candidates, seed, judge_max_new_tokens, judging
    )
    by_index = [{cand.index: cand for cand in options} for options in candidates]
    rows = []
    for i, future in enumerate(futures):
        context = contexts[future.context]
        candidate = by_index[future.context][future.candidate]
        help_score, help_parsed = helpfulness[(future.context, future.candidate)]
        rows.append(
            {
                "context": future.context,
                "task_id": context.task.id,
                "kind": context.task.kind,
                "turn": context.turn,
                "candidate": future.candidate,
                "candidate_kind": candidate.kind,
                "sample": future.sample,
                "response": candidate.text,
                "stop_reason": future.stop_reason,
                "rounds": future.rounds,
                **_task_columns(context, future, doc_metric),
                "tokens": future.assistant_tokens
                + (future.user_tokens if token_turns == "window" else 0),
                "assistant_tokens": future.assistant_tokens,
                "user_tokens": future.user_tokens,
                "token_turns": token_turns,
                "lam": LAM_PRESETS[context.task.kind] if lam is None else lam,
                "itr": itr[i],
                "itr_parsed": itr_parsed[i],
                "itr_raw": itr_raw[i],
                "judged": judge is not None,
                "helpfulness": help_score,
                "helpfulness_parsed": help_parsed,
                "role_slips": future.role_slips,
                "retries": future.retries,
                "repairs": future.repairs,
                "seed": future.seed,
                "error": future.error,
                "messages": future.window,
            }
        )
    return rescore(pd.DataFrame(rows), mu=mu)


def rescore(table: pd.DataFrame, lam: float | None = None, mu: float | None = None):
    """The table with R_int and R* recomputed for new λ and/or μ; no generation at all.
    None keeps each row's value."""
    table = table.copy()
    if lam is not None:
        table["lam"] = float(lam)
    if mu is not None:
        table["mu"] = float(mu)
    table["token_penalty"] = token_penalty(table["tokens"], table["lam"])
    table["interactivity"] = interactivity(table["itr"], table["judged"], table["mu"])
    table["r_int"] = table["token_penalty"] + table["interactivity"]
    table["r_star"] = table["r_ext"] + table["r_int"]
    return table


def mr_at(table: pd.DataFrame, lam: float | None = None, mu: float | None = None):
    """The candidate table (MR per candidate) of a future table at new λ and/or μ."""
    return summarize(rescore(table, lam=lam, mu=mu))


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """The candidate table: MR (mean R* over futures), its std (ddof 0), n scored futures and
    n_failed (futures that errored, left out), the mean of each term, and single-turn
    helpfulness beside MR."""
    keys = ["context", "task_id", "turn", "candidate", "candidate_kind"]
    grouped = table.groupby(keys, sort=True)
    summary = grouped.agg(
        mr=("r_star", "mean"),
        mr_std=("r_star", lambda values: float(np.std(values.dropna()))),
        n=("r_star", "count"),
        n_failed=("stop_reason", lambda reasons: int((reasons == "error").sum())),
        r_ext=("r_ext", "mean"),
        tokens=("tokens", "mean"),
        itr=("itr", "mean"),
        helpfulness=("helpfulness", "first"),
        response=("response", "first"),
        lam=("lam", "first"),
        mu=("mu", "first"),
    )
    return summary.reset_index()


def score_candidates(contexts, candidates, *, assistant, user, judge, params: Params):
    """Roll out, score and summarise: returns (future_table, candidate_table).

    From `params`: reward.n_samples / window / lam / mu / token_budget, the assistant's
    sampling, the judge's token limit, and `seed`.
    """
    futures = simulate.rollout(
        contexts,
        candidates,
        assistant=assistant,
        user=user,
        n_samples=params.reward.n_samples,
        window=params.reward.window,
        seed=params.seed,
        sampling=params.sampling(),
        token_budget=params.reward.token_budget,
    )
    table = score_futures(
        futures,
        contexts,
        candidates,
        judge=judge,
        seed=params.seed,
        lam=params.reward.lam,
        mu=params.reward.mu,
        judge_max_new_tokens=params.generation.judge_max_new_tokens,
        judging=params.judge,
        token_turns=params.reward.token_turns,
        doc_metric=params.tasks.doc_metric,
    )
    return table, summarize(table)
