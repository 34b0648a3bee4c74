"""Explicit seeds: every generation request carries one, derived from where it stands.

    seed = derive_seed(run_seed, task_id, turn, candidate, sample, role)

The same position in the same run always gets the same seed, so the cache answers reruns.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts (ints, strings); stable across processes and machines."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
