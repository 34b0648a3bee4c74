"""Preference pairs from scored candidates, in TRL's conversational preference format.

    pairs, report = pairs.build_pairs(candidates, min_gap=0.05, pairs_per_turn=1)
    pairs.write_jsonl(pairs, run_dir / "pairs.jsonl")

`candidates` holds one row per candidate response: `task_id`, `turn`, `candidate`, `kind`,
`prompt` (the conversation so far, ending with a user turn), `response` and `mr`. Per
(task, turn), the best MR is chosen and the worst rejected; with `pairs_per_turn = k` the
2nd best meets the 2nd worst, and so on, each pair with distinct candidates. A pair is kept
when its MR gap is at least `min_gap`. Every candidate or pair left out is counted by reason
in the report:

- `nan_mr`: candidates without a score (dropped before ranking);
- `single_candidate`: turns with fewer than two scored candidates;
- `tie`: pairs whose MRs are equal;
- `identical_response`: pairs whose two responses are the same text;
- `below_min_gap`: pairs whose gap is under `min_gap`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .io import write_text

REQUIRED_COLUMNS = ("task_id", "turn", "candidate", "kind", "prompt", "response", "mr")
DROP_REASONS = ("nan_mr", "single_candidate", "tie", "identical_response", "below_min_gap")
# Gaps are differences of means; 0.30 - 0.25 must still pass min_gap = 0.05.
GAP_TOLERANCE = 1e-9


def build_pairs(
    candidates: pd.DataFrame, *, min_gap: float, pairs_per_turn: int = 1
) -> tuple[list[dict], dict[str, int]]:
    """Chosen/rejected pairs per (task_id, turn) and a report of counts (see the module doc)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidate table lacks columns {missing}; needs {list(REQUIRED_COLUMNS)}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    if pairs_per_turn < 1:
        raise ValueError(f"pairs_per_turn must be >= 1, got {pairs_per_turn}")
    report = {"turns": 0, "candidates": len(candidates), "pairs": 0}
    report.update(dict.fromkeys(DROP_REASONS, 0))
    pairs = []
    for (task_id, turn), group in candidates.groupby(["task_id", "turn"], sort=True, observed=True):
        report["turns"] += 1
        prompt = _shared_prompt(group, task_id, turn)
        scored = group[group["mr"].notna()]
        report["nan_mr"] += len(group) - len(scored)
        if len(scored) < 2:
            report["single_candidate"] += 1
            continue
        ranked = scored.sort_values(["mr", "candidate"], ascending=[False, True], kind="stable")
        rows = list(ranked.itertuples(index=False))
        for rank in range(min(pairs_per_turn, len(rows) // 2)):
            chosen, rejected = rows[rank], rows[-1 - rank]
            gap = float(chosen.mr) - float(rejected.mr)
            reason = _drop_reason(chosen, rejected, gap, min_gap)
            if reason:
                report[reason] += 1
                continue
            pairs.append(_pair_record(prompt, chosen, rejected, gap, rank, task_id, turn))
    report["pairs"] = len(pairs)
    return pairs, report


def _drop_reason(chosen, rejected, gap: float, min_gap: float) -> str | None:
    if gap <= GAP_TOLERANCE:
        return "tie"
    if str(chosen.response).strip() == str(rejected.response).strip():
        return "identical_response"
    if gap < min_gap - GAP_TOLERANCE:
        return "below_min_gap"
    return None


def _pair_record(prompt, chosen, rejected, gap: float, rank: int, task_id, turn) -> dict:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": str(chosen.response)}],
        "rejected": [{"role": "assistant", "content": str(rejected.response)}],
        "task_id": _plain(task_id),
        "turn": _plain(turn),
        "rank": rank,
        "chosen_candidate": _plain(chosen.candidate),
        "rejected_candidate": _plain(rejected.candidate),
        "chosen_kind": str(chosen.kind),
        "rejected_kind": str(rejected.kind),
        "chosen_mr": float(chosen.mr),
        "rejected_mr": float(rejected.mr),
        "gap": gap,
    }


def _shared_prompt(group: pd.DataFrame, task_id, turn) -> list[dict]:
    """The context all candidates of one turn answer; it must be one conversation ending in user."""
    prompts = [as_messages(p, f"task {task_id!r} turn {turn}") for p in group["prompt"]]
    first = prompts[0]
    if any(p != first for p in prompts[1:]):
        raise ValueError(f"task {task_id!r} turn {turn}: candidates answer different prompts")
    if not first or first[-1]["role"] != "user":
        raise ValueError(f"task {task_id!r} turn {turn}: the prompt must end with a user message")
    return first


def as_messages(value, where: str) -> list[dict]:
    """A conversation as plain {"role", "content"} dicts (from lists, arrays or JSON text)."""
    if isinstance(value, str):
        value = json.loads(value)
    messages = []
    for message in list(value):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise ValueError(f"{where}: each message needs 'role' and 'content', got {message!r}")
        if message["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: unknown role {message['role']!r}")
        messages.append({"role": str(message["role"]), "content": str(message["content"])})
    return messages


def _plain(value):
    """numpy scalars to Python ones, so records serialise to JSON."""
    return value.item() if hasattr(value, "item") else value


def sft_examples(chosen_path_conversations: list) -> list[dict]:
    """An SFT set from the chosen paths: {"messages": [...]}, trailing user turns trimmed."""
    examples = []
    for index, conversation in enumerate(chosen_path_conversations):
        messages = as_messages(conversation, f"conversation {index}")
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if not any(m["role"] == "user" for m in messages):
            raise ValueError(f"conversation {index}: no user turn answered by the assistant")
        examples.append({"messages": messages})
    return examples


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """One JSON object a line, written atomically."""
    lines = (json.dumps(record, ensure_ascii=False, default=_plain) for record in records)
    return write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; a bad line raises ValueError with its number."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from None
    return records
