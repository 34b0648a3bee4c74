"""Log-probabilities and DPO loss of a trained adapter, recomputed outside TRL.

    logps = train.completion_logps(pairs, "embedded", run.adapter)
    loss = train.dpo_loss_on(pairs, "embedded", run.adapter, beta=0.1)

Tokenised as TRL's DPOTrainer does, so the loss equals TRL's `eval_loss` on the same weights
(notebook 04 checks it); `train` re-exports both.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import pandas as pd

from . import models
from .train_data import load_chat_tokenizer, preference_records, prompt_ids
from .train_memory import cpu_threads


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share (where TRL starts a completion)."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def completion_logps(
    pairs: list[dict],
    model: str = "embedded",
    adapter_dir: str | Path | None = None,
    *,
    max_length: int | None = None,
    batch_size: int = 4,
    reference_adapter: str | Path | None = None,
) -> pd.DataFrame:
    """Summed log-probabilities of each pair's chosen and rejected completion, under the policy
    (base + adapter) and the reference (base, or base + `reference_adapter`: the SFT adapter a
    DPO run started from), one row per pair.

    Tokenised as TRL does (chat template, completion after the common prefix, keep-start
    truncation at max_length). Without an adapter, policy and reference are the same model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    records = preference_records(pairs, "pairs")
    path = models.resolve(model)
    tokenizer = load_chat_tokenizer(path, model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    reference = contextlib.nullcontext
    if adapter_dir is not None:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(policy, str(adapter_dir))
        reference = policy.disable_adapter
        if reference_adapter is not None:
            policy.load_adapter(str(reference_adapter), adapter_name="ref")
            reference = functools.partial(_active_adapter, policy, "ref")
    policy.eval()

    def tokenized(record: dict) -> list[tuple[list[int], int]]:
        """(ids, completion start) of prompt + chosen, then of prompt + rejected."""
        prompt = prompt_ids(tokenizer, record["prompt"])
        full = [
            tokenizer.apply_chat_template(
                record["prompt"] + record[key], tokenize=True, return_dict=True
            )["input_ids"]
            for key in ("chosen", "rejected")
        ]
        start = min(common_prefix_length(prompt, ids) for ids in full)
        return [(ids[:max_length] if max_length else ids, start) for ids in full]

    def summed(sequences: list[tuple[list[int], int]]):
        """Summed log-probabilities of each sequence's completion tokens, in one padded batch."""
        width = max(len(ids) for ids, _ in sequences)
        rows = [(ids, start, width - len(ids)) for ids, start in sequences]
        input_ids = torch.tensor([ids + [0] * pad for ids, _, pad in rows], device=device)
        attention = torch.tensor([[1] * len(ids) + [0] * pad for ids, _, pad in rows])
        completion = torch.tensor(
            [[0] * start + [1] * (len(ids) - start) + [0] * pad for ids, start, pad in rows]
        )
        logits = policy(input_ids=input_ids, attention_mask=attention.to(device)).logits
        logits = logits[:, :-1].float()
        targets = input_ids[:, 1:, None]
        logps = logits.gather(-1, targets)[..., 0] - logits.logsumexp(-1)
        return (logps * completion[:, 1:].to(device)).sum(-1).view(-1, 2).tolist()

    rows = []
    with torch.inference_mode(), cpu_threads(device):
        for first in range(0, len(records), batch_size):
            sequences = [s for r in records[first : first + batch_size] for s in tokenized(r)]
            policy_logps = summed(sequences)
            with reference():
                reference_logps = summed(sequences)
            for (pc, pr), (rc, rr) in zip(policy_logps, reference_logps):
                rows.append(
                    {
                        "policy_chosen": pc,
                        "policy_rejected": pr,
                        "reference_chosen": rc,
                        "reference_rejected": rr,
                    }
                )
    return pd.DataFrame(rows)


def dpo_loss_on(
    pairs: list[dict],
    model: str = "embedded",
    adapter_dir: str | Path | None = None,
    *,
    beta: float = 0.1,
    max_length: int | None = None,
    batch_size: int = 4,
    reference_adapter: str | Path | None = None,
) -> float:
    """Mean DPO (sigmoid) loss of policy = base + adapter against reference = base (or base +
    `reference_adapter`) on `pairs`: -log σ(β[(π_c - ref_c) - (π_r - ref_r)]) over
    `completion_logps`. Without an adapter: ln 2."""
    import numpy as np

    logps = completion_logps(
        pairs,
        model,
        adapter_dir,
        max_length=max_length,
        batch_size=batch_size,
        reference_adapter=reference_adapter,
    )
    margins = beta * (
        (logps.policy_chosen - logps.reference_chosen)
        - (logps.policy_rejected - logps.reference_rejected)
    )
    return float(np.logaddexp(0.0, -margins).mean())


@contextlib.contextmanager
def _active_adapter(model, name: str):
    """`name` as the active adapter of a PeftModel for the block, then the previous one."""
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)
