"""Online DPO as iterative rounds: sample from the current adapter, rank by MR, DPO, repeat.

    result = train_online.online_dpo(contexts, mr, model="embedded", train_params=params.train,
                                     output_dir=run.train, seed=params.seed, reuse=True)

Each of `train.online_rounds` rounds:

    the current policy (the base, then the previous round's adapter) samples G = group_size
    responses per training context (one batched call, through the generation cache)
    ──► MR of each response: S futures through the rollout engine, user simulator and judge
        (`train_rewards.MRReward`, one batched call per role per round of the futures)
    ──► per context the best against the worst response (ties and identical texts dropped)
    ──► DPO on those pairs (`train.train_dpo`), continuing the current adapter, which is also
        the round's reference (a frozen copy of it; the base in round 0)

Why rounds and not `trl.experimental.online_dpo.OnlineDPOTrainer` (TRL 1.16): its reward
functions do get the whole batch at once, but the trainer samples exactly two completions per
prompt with `model.generate` inside its training step: that sampling is neither seeded per
request nor cached, so a rerun samples (and then scores) new responses, and a pair is best of
two rather than best against worst of G. Rounds keep every generation of the policy and of the
reward in the project's engine and cache (a rerun with `reuse` makes no new generation), reuse
the tested DPO path (LoRA/QLoRA, `accelerate launch`), and keep one pair set per round on disk.
The price: the policy is refreshed once per round, not once per step (iterative DPO).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from . import pairs, simulate
from .config import TrainParams
from .io import mark_done, write_folder, write_json, write_text
from .llm.lora import adapter_backend
from .seeds import derive_seed
from .train_memory import cpu_threads


def online_dpo(
    contexts: list[simulate.Context],
    reward,
    *,
    model: str,
    train_params: TrainParams,
    output_dir: str | Path,
    seed: int = 0,
    reuse: bool = False,
):
    """Run the rounds (see the module docstring); returns the last round's `TrainResult` with
    the adapter copied to output_dir/adapter, every round's log and `timing["rounds"]`: per
    round the mean MR of the policy's samples, pairs, generations per role and seconds spent
    sampling, in rollouts, in the judge and training. Round r works in output_dir/rounds/r.
    """
    from .train import earlier_result, train_dpo  # train imports this module lazily

    output_dir = Path(output_dir)
    if reward.assistant.spec.model != model:
        raise ValueError(
            f"online DPO samples from the model it trains ({model!r}), and the reward's "
            f"assistant role is {reward.assistant.spec.model!r}: they must be the same model"
        )
    place = [[c.task.id, c.turn, c.messages] for c in contexts]
    inputs = ("online_dpo", place, model, asdict(train_params), seed, reward.settings())
    if (earlier := earlier_result(output_dir, inputs, reuse)) is not None:
        return earlier
    import torch

    adapter, rounds, logs, last = None, [], [], None
    # sampling and rollouts on CPU: torch threads for the free cores only, as in training
    with cpu_threads("cuda" if torch.cuda.is_available() else "cpu"):
        for round_ in range(train_params.online_rounds):
            cache = reward.assistant.cache
            policy = (
                reward.assistant
                if adapter is None
                else adapter_backend(reward.assistant.spec, adapter, cache)
            )
            before = policy.generated
            started = time.perf_counter()
            samples = simulate.generate_candidates(
                contexts,
                policy,
                n=train_params.group_size,
                proactive_fraction=0.0,
                # round 0 samples what data generation's plain candidates were (cache hits)
                seed=seed if round_ == 0 else derive_seed(seed, "online_dpo", round_),
                sampling=reward.sampling,
            )
            sampled = time.perf_counter()
            generated = {"policy": policy.generated - before}
            table = reward.score(contexts, [[c.text for c in group] for group in samples])
            round_pairs, report = pairs.build_pairs(_candidate_rows(table, contexts), min_gap=0.0)
            row = {
                "round": round_,
                "samples": sum(len(group) for group in samples),
                "mean_mr": float(table["mr"].mean()),
                "pairs": len(round_pairs),
                "ties": report["tie"] + report["identical_response"],
                "sampling_seconds": round(sampled - started, 3),
                "rollout_seconds": round(reward.last["rollout_seconds"], 3),
                "judge_seconds": round(reward.last["judge_seconds"], 3),
            }
            trained = time.perf_counter()
            if round_pairs:
                last = train_dpo(
                    round_pairs,
                    model=model,
                    train_params=train_params,
                    output_dir=output_dir / "rounds" / str(round_),
                    seed=seed,
                    reuse=reuse,
                    init_adapter=adapter,
                )
                adapter = last.adapter_dir
                logs.append(last.log.assign(round=round_))
            row["train_seconds"] = round(time.perf_counter() - trained, 3)
            row["steps"] = last.timing["steps"] if round_pairs else 0
            row["generated"] = {
                **generated,
                **{r: reward.last[f"generated_{r}"] for r in ("assistant", "user", "judge")},
            }
            rounds.append(row)
    if last is None:
        raise ValueError(
            f"online DPO: in all {train_params.online_rounds} rounds every context's "
            f"{train_params.group_size} samples tied on MR; no pair to train on (sample more "
            "per context: train.group_size, or raise generation.temperature)"
        )
    return _finish(last, rounds, logs, output_dir, inputs, model, train_params, seed)


def _candidate_rows(table: pd.DataFrame, contexts: list[simulate.Context]) -> pd.DataFrame:
    """The candidate table in the shape `pairs.build_pairs` reads."""
    return table.assign(
        kind=table["candidate_kind"], prompt=[contexts[c].messages for c in table["context"]]
    )


def _finish(last, rounds, logs, output_dir, inputs, model, train_params, seed):
    """The last adapter to output_dir/adapter; the log, summary and marker of all rounds.
    Under `accelerate launch` every rank ran the rounds; rank 0 writes, the others wait."""
    from accelerate import PartialState

    from .train import MARKER, TrainResult

    state = PartialState()
    adapter, log_path = output_dir / "adapter", output_dir / "train_log.jsonl"
    log = pd.concat(logs, ignore_index=True)
    log = log.assign(round_step=log["step"], step=range(1, len(log) + 1))  # steps of all rounds
    steps = sum(r["steps"] for r in rounds)
    train_seconds = sum(r["train_seconds"] for r in rounds)
    timing = {
        "reused": False,
        "device": last.timing["device"],
        "rounds": rounds,
        "steps": steps,
        "contexts": len(inputs[1]),
        "seconds_per_step": round(train_seconds / max(steps, 1), 3),
        "total_seconds": round(
            sum(
                r[k]
                for r in rounds
                for k in ("sampling_seconds", "rollout_seconds", "judge_seconds", "train_seconds")
            ),
            3,
        ),
    }
    if state.is_main_process:
        write_folder(
            adapter,
            lambda folder: shutil.copytree(last.adapter_dir, folder, dirs_exist_ok=True),
            replace=True,
        )
        write_text(log_path, log.to_json(orient="records", lines=True))
        write_json(
            output_dir / "train_summary.json",
            {"model": model, "seed": seed, "train_params": asdict(train_params), "timing": timing},
        )
        mark_done(output_dir / MARKER, *inputs)
    state.wait_for_everyone()
    return TrainResult(adapter, log, timing, log_path)
