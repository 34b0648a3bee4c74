"""What an optimizer step of the online methods costs: online DPO and GRPO on smoke-sized data.

Both train the embedded model on the two training tasks of `params/smoke.yaml` (G 2 responses
per context, S 2 futures of one round, 24 new tokens, the agenda user, the embedded judge) with
a cold cache in a temp folder. Per optimizer step: wall time, generations per role, and the
share of the time spent sampling, in rollouts, in the judge and in training.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import config, session, simulate, train, train_rewards

SMOKE = [
    "generation.max_new_tokens=24",
    "train.group_size=2",
    "train.futures=2",
    "train.batch_size=2",
    "reward.window=1",
]
METHODS = {
    "online_dpo": ["train.method=online_dpo", "train.online_rounds=2", "train.epochs=3"],
    "grpo": ["train.method=grpo", "train.epochs=2"],
}


def step_costs(method: str) -> dict:
    """Train `method` once on a cold cache; its per-step costs."""
    with tempfile.TemporaryDirectory(prefix=f"collab-bench-{method}-") as folder:
        overrides = [f"output_dir={folder}", f"cache_path={folder}/cache.sqlite"]
        params = config.load("params/smoke.yaml", [*overrides, *SMOKE, *METHODS[method]])
        train_tasks, _ = session.task_splits(params)
        reward = train_rewards.MRReward.from_params(params, session.load_roles(params), train_tasks)
        records = [
            {"prompt": simulate.Context.opening(t).messages, "task_id": t.id, "turn": 0}
            for t in train_tasks
        ]
        started = time.perf_counter()
        result = train.train_recipe(
            records,
            None,
            model="embedded",
            train_params=params.train,
            output_dir=Path(folder) / "train",
            seed=params.seed,
            reward=reward,
        )
        seconds = time.perf_counter() - started
    timing, steps = result.timing, max(1, result.timing["steps"])
    if method == "online_dpo":
        rounds = timing["rounds"]
        parts = {
            k: sum(r[f"{k}_seconds"] for r in rounds)
            for k in ("sampling", "rollout", "judge", "train")
        }
        generated = {
            role: sum(r["generated"].get(role, 0) for r in rounds)
            for role in ("policy", "assistant", "user", "judge")
        }
    else:
        spent = timing["reward"]
        parts = {"rollout": spent["rollout_seconds"], "judge": spent["judge_seconds"]}
        # TRL samples inside the training step; the rest of the step is sampling + training
        parts["sampling_and_train"] = timing["train_seconds"] - sum(parts.values())
        generated = {r: spent[f"generated_{r}"] for r in ("assistant", "user", "judge")}
        generated["policy"] = spent["responses"]  # TRL's own samples, not cached
    return {
        "steps": timing["steps"],
        "seconds": round(seconds, 2),
        "seconds_per_step": seconds / steps,
        "generations_per_step": {k: v / steps for k, v in generated.items()},
        "share": {k: v / seconds for k, v in parts.items()},
    }


def run() -> dict:
    return {method: step_costs(method) for method in METHODS}
