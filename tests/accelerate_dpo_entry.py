"""`python -m collab_utils train` with a record of the examples each process trains on.

    accelerate launch --cpu --num_processes 2 tests/accelerate_dpo_entry.py LOG_DIR PARAMS ...
    python tests/accelerate_dpo_entry.py LOG_DIR PARAMS ...        # one process

Wraps `trl.DPOTrainer.compute_loss` (the training itself is untouched) so that every training
batch appends one line to LOG_DIR/rank<process index>.jsonl: the optimizer step it belongs to,
the world size and the decoded chosen sequences of the batch. Then runs the project's own
`train` command (`collab_utils.__main__.main`) with the remaining arguments.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def record_batches(log_dir: Path) -> None:
    from trl import DPOTrainer

    original = DPOTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            chosen = ids.shape[0] // 2  # the batch is [chosen..., rejected...]
            row = {
                "step": self.state.global_step,
                "rank": self.accelerator.process_index,
                "world_size": self.accelerator.num_processes,
                "chosen": [
                    self.processing_class.decode(ids[i][mask[i].bool()]) for i in range(chosen)
                ],
            }
            path = log_dir / f"rank{self.accelerator.process_index}.jsonl"
            with path.open("a") as out:
                out.write(json.dumps(row) + "\n")
        return original(self, model, inputs, return_outputs, num_items_in_batch)

    DPOTrainer.compute_loss = compute_loss


if __name__ == "__main__":
    log_dir = Path(sys.argv[1])
    log_dir.mkdir(parents=True, exist_ok=True)
    record_batches(log_dir)
    from collab_utils.__main__ import main

    sys.exit(main(["train", *sys.argv[2:]]))
