"""How the `hf` engine splits one call's prompts into `generate` batches.

Two ideas. Shared prefixes: the N candidates of a context share the whole prompt, and the S
futures of a candidate share the context and the candidate, so prompts that begin alike form a
group whose common prefix is computed once (`shared_prefixes`). Batch sizes: as large as the
work and a memory budget allow (`plan`), not a fixed count: on this CPU 48 rows at once make
1.7x the tokens/s of 16.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    """Rows (indices into the call's prompts) generated together. With `prefix_lengths`, row k's
    first `prefix_lengths[k]` tokens are a prefix that rows with the same tokens share."""

    rows: list[int]
    prefix_lengths: list[int] | None = None


def common_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two prompts share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefixes(prompts: list[list[int]], min_shared: int = 32) -> list[list[int]]:
    """Groups of prompt indices that share a prefix of at least `min_shared` tokens.

    Sorted lexicographically, prompts with a common prefix are neighbours; the grouping of that
    order into runs maximises the tokens saved, Σ (run size − 1) × (run's common prefix), by
    dynamic programming (O(n²) on one call's prompts). Prompts that share nothing worth it are
    groups of one.
    """
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    n = len(order)
    adjacent = [common_length(prompts[order[k]], prompts[order[k + 1]]) for k in range(n - 1)]
    best, cut = [0] * (n + 1), [0] * (n + 1)
    for end in range(1, n + 1):
        best[end], cut[end] = best[end - 1], end - 1  # the prompt at end-1 alone
        shared = None
        for start in range(end - 2, -1, -1):
            shared = adjacent[start] if shared is None else min(shared, adjacent[start])
            if shared < min_shared:
                break
            saved = best[start] + (end - start - 1) * shared
            if saved > best[end]:
                best[end], cut[end] = saved, start
    groups, end = [], n
    while end > 0:
        groups.append([order[k] for k in range(cut[end], end)])
        end = cut[end]
    return groups[::-1]


def group_prefix(prompts: list[list[int]], group: list[int]) -> int:
    """The group's common prefix length, leaving every prompt at least one token to feed."""
    first = prompts[group[0]]
    shared = min(common_length(first, prompts[i]) for i in group[1:])
    return min(shared, min(len(prompts[i]) for i in group) - 1)


def plan(
    prompts: list[list[int]],
    *,
    max_rows: int,
    max_tokens: int,
    new_tokens: int,
    reuse_prefixes: bool = True,
    min_shared: int = 32,
) -> list[Batch]:
    """Batches for one call: groups kept together, sorted by length, each batch as large as
    `max_rows` and the key/value budget `rows × (longest prompt + new_tokens) ≤ max_tokens`
    allow. Groups of one go to plain batches; larger groups to shared-prefix batches."""
    groups = (
        shared_prefixes(prompts, min_shared)
        if reuse_prefixes
        else [[i] for i in range(len(prompts))]
    )
    shared = [g for g in groups if len(g) > 1]
    alone = sorted((g[0] for g in groups if len(g) == 1), key=lambda i: len(prompts[i]))
    batches = [
        Batch(rows)
        for rows in _fill([[i] for i in alone], prompts, max_rows, max_tokens, new_tokens)
    ]
    shared.sort(key=lambda g: max(len(prompts[i]) for i in g))
    for rows in _fill(shared, prompts, max_rows, max_tokens, new_tokens):
        present, lengths = set(rows), {}
        for group in shared:
            part = [i for i in group if i in present]  # a group split across two batches
            if part:
                p = group_prefix(prompts, part) if len(part) > 1 else len(prompts[part[0]]) - 1
                lengths.update(dict.fromkeys(part, p))
        batches.append(Batch(rows, [lengths[i] for i in rows]))
    return batches


def _fill(units, prompts, max_rows, max_tokens, new_tokens):
    """Pack units (lists of rows kept together where they fit) into batches in order."""
    batches, rows, width = [], [], 0
    for unit in units:
        for i in unit:
            wider = max(width, len(prompts[i]))
            if rows and (
                len(rows) + 1 > max_rows or (len(rows) + 1) * (wider + new_tokens) > max_tokens
            ):
                batches.append(rows)
                rows, wider = [], len(prompts[i])
            rows.append(i)
            width = wider
    if rows:
        batches.append(rows)
    return batches
