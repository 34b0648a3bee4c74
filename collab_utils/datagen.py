"""Multi-turn data generation (paper §3.3): the conversations that DPO pairs come from.

For every task the user opens. At each turn, for all live conversations at once:

    N candidates ──► S futures of w rounds each ──► MR per candidate
    the best candidate is appended; the next user turn is the user's reply in the best
    candidate's first future; a conversation ends on the termination signal or at max_turns.

Each turn's future table is stored (`RunFolder.datagen_turn(t)`) before the next turn starts,
so a killed run resumes from the stored turns, and every generation is in the cache anyway.
`datagen/inputs.sha256` records the tasks and parameters the turns were made with; a run with
other ones discards them and rebuilds them (from the cache wherever the requests are the same).
The path follows MR at `pairs.path_lam` (default: `reward.lam`); a λ sweep that pins it
re-scores the same futures instead of generating new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import reward, simulate
from .config import Params
from .io import mark_done, up_to_date, write_parquet
from .run_folder import datagen_turn


@dataclass
class Conversations:
    futures: pd.DataFrame  # one row per (task, turn, candidate, sample)
    candidates: pd.DataFrame  # one row per (task, turn, candidate) with MR and the prompt
    paths: dict[str, list[dict]]  # task id -> the chosen conversation


def _rows_with_prompts(table: pd.DataFrame, contexts: list[simulate.Context]) -> pd.DataFrame:
    table = table.copy()
    table["prompt"] = [contexts[c].messages for c in table["context"]]
    return table


def _turn(contexts, roles, params: Params) -> pd.DataFrame:
    """Candidates, futures and scores for one turn of every live conversation."""
    candidates = simulate.generate_candidates(
        contexts,
        roles.assistant,
        n=params.reward.n_candidates,
        proactive_fraction=params.reward.proactive_fraction,
        fewshot_fraction=params.reward.fewshot_fraction,
        seed=params.seed,
        sampling=params.sampling(),
    )
    table, _ = reward.score_candidates(
        contexts,
        candidates,
        assistant=roles.assistant,
        user=roles.user,
        judge=roles.judge if params.reward.mu > 0 else None,  # μ = 0: no judge calls at all
        params=params,
    )
    return _rows_with_prompts(table, contexts)


def best_candidates(table: pd.DataFrame, lam: float) -> pd.DataFrame:
    """Per context, the candidate with the highest MR at `lam` (ties: the lowest index)."""
    summary = reward.mr_at(table, lam=lam)
    summary = summary.sort_values(["context", "mr", "candidate"], ascending=[True, False, True])
    return summary.drop_duplicates("context").set_index("context")


def next_contexts(table: pd.DataFrame, contexts, user, lam: float):
    """The best candidate per context, and the live conversations after it and the user's reply.

    The reply is the user turn of the best candidate's first future; with w = 0 there is none,
    so the user simulator is asked directly (one batched call).
    """
    best = best_candidates(table, lam)
    answered = [
        [*map(_plain, context.messages), {"role": "assistant", "content": best.loc[c, "response"]}]
        for c, context in enumerate(contexts)
    ]
    replies = {}
    for c in range(len(contexts)):
        future = table[
            (table["context"] == c)
            & (table["candidate"] == best.loc[c, "candidate"])
            & (table["sample"] == 0)
        ].iloc[0]
        window = list(future["messages"])
        if len(window) > 1:
            ended = future["stop_reason"] == "terminated" and future["rounds"] == 0
            replies[c] = (str(window[1]["content"]), ended)
    missing = [c for c in range(len(contexts)) if c not in replies]
    if missing:
        turns = user.respond([(contexts[c].task, answered[c], 0) for c in missing])
        replies.update({c: (t.text, t.terminated) for c, t in zip(missing, turns)})
    live = [
        simulate.Context(
            context.task,
            [*answered[c], {"role": "user", "content": replies[c][0]}],
            context.turn + 1,
        )
        for c, context in enumerate(contexts)
        if not replies[c][1]
    ]
    return best, answered, live


def _plain(message) -> dict:
    return {"role": str(message["role"]), "content": str(message["content"])}


def generation_inputs(tasks, params: Params) -> list:
    """What the stored turns depend on: the tasks and every parameter that changes a turn."""
    values = params.to_dict()
    pairs = values["pairs"]
    return [
        [task.id for task in tasks],
        {key: values[key] for key in ("seed", "models", "tasks", "generation", "reward")},
        {"max_turns": pairs["max_turns"], "path_lam": pairs["path_lam"]},
    ]


def _discard_stale_turns(store: Path, inputs: list) -> None:
    marker = store / "inputs.sha256"
    if up_to_date(marker, *inputs):
        return
    stale = sorted(store.glob(datagen_turn("", "*").name))
    if stale:
        print(f"{store}: {len(stale)} stored turns were made with other tasks or parameters")
    for path in stale:
        path.unlink()
    mark_done(marker, *inputs)


def generate(tasks, roles, params: Params, store: str | Path, *, progress: bool = True):
    """Run (or resume) multi-turn data generation for `tasks`; see the module docstring."""
    store = Path(store)
    _discard_stale_turns(store, generation_inputs(tasks, params))
    lam = params.pairs.path_lam if params.pairs.path_lam is not None else params.reward.lam
    contexts = simulate.Context.openings(tasks, roles.user, params.seed)
    paths = {task.id: [] for task in tasks}
    tables = []
    for turn in tqdm(range(params.pairs.max_turns), desc="turns", disable=not progress):
        if not contexts:
            break
        stored = datagen_turn(store, turn)
        if stored.exists():
            table = pd.read_parquet(stored)
        else:
            table = _turn(contexts, roles, params)
            write_parquet(stored, table)
        tables.append(table)
        _, answered, live = next_contexts(table, contexts, roles.user, lam)
        for context, conversation in zip(contexts, answered):
            paths[context.task.id] = conversation
        contexts = live
    futures = pd.concat(tables, ignore_index=True)
    return Conversations(futures, candidate_table(futures, params.reward.lam), paths)


def candidate_table(futures: pd.DataFrame, lam: float) -> pd.DataFrame:
    """MR per (task, turn, candidate) at `lam`, with the prompt the candidate answered."""
    keys = ["task_id", "turn", "context"]
    summaries = []
    for _, group in futures.groupby(["turn"], sort=True):
        summary = reward.mr_at(group, lam=lam)
        prompts = group.drop_duplicates("context").set_index("context")["prompt"]
        summary["prompt"] = [list(prompts[c]) for c in summary["context"]]
        summary["kind"] = summary["candidate_kind"]  # the column name `pairs` expects
        summaries.append(summary)
    return pd.concat(summaries, ignore_index=True).sort_values([*keys, "candidate"])
