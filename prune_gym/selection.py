"""Exact selection of the ``count`` smallest scores, within one tensor or across many.

Ties are broken by index (the earlier element goes first), everywhere in prune-gym, so the same
scores always give the same mask. :func:`remove_smallest_in_parts` selects across many tensors
(Global MP's one threshold over a whole network): a sampled bracket narrows the threshold, and
only the scores inside it are sorted. On the CPU it works part by part without concatenating
them; on a GPU, where each of those per-part steps waits for the device, it concatenates and
needs a handful of waits in all (:func:`remove_smallest_concatenated`; both measured in
``benchmarks/README.md``, Global MP section).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def remove_smallest(scores: Tensor, count: int) -> Tensor:
    """Keep-mask (flat, bool) that removes exactly ``count`` smallest ``scores``.

    Ties at the threshold are broken by flat index (lower index removed first).
    """
    total = scores.numel()
    if count <= 0:
        return torch.ones(total, dtype=torch.bool, device=scores.device)
    if count >= total:
        return torch.zeros(total, dtype=torch.bool, device=scores.device)
    return _keep_above(scores, torch.kthvalue(scores, count).values, count)


def _keep_above(scores: Tensor, threshold: Tensor, count: int) -> Tensor:
    """Keep-mask removing the ``count`` smallest ``scores``, ``threshold`` being the count-th
    smallest: every score below it, then the first scores equal to it (by flat index)."""
    remove = scores < threshold
    missing = count - int(remove.sum())
    if missing > 0:
        ties = torch.nonzero(scores == threshold).flatten()[:missing]
        remove[ties] = True
    return ~remove


#: Sample size of the bracketing step of :func:`remove_smallest_in_parts`.
_SAMPLE = 1 << 16


def _bracket(sample: Tensor, count: int, total: int) -> tuple[Tensor | None, Tensor | None]:
    """Values of ``sample`` (strided from all ``total`` scores) below and above which the
    ``count``-th smallest score almost surely lies (None: no bound on that side)."""
    rank = count / total * len(sample)
    margin = 8.0 * math.sqrt(max(rank * (1 - count / total), 1.0)) + 32  # binomial spread, generously
    low_rank, high_rank = int(rank - margin), int(rank + margin) + 1
    low = torch.kthvalue(sample, low_rank).values if low_rank >= 1 else None
    high = torch.kthvalue(sample, high_rank).values if high_rank <= len(sample) else None
    return low, high


def remove_smallest_in_parts(parts: Sequence[Tensor], count: int) -> list[Tensor]:
    """:func:`remove_smallest` over the concatenation of ``parts``, one keep-mask per part.

    Same result, bit for bit (ties broken by index in the concatenated order), but no sort or
    ``kthvalue`` over all values: a strided sample brackets the threshold, the values below the
    bracket are counted and those inside it gathered, and ``kthvalue`` runs on that small set
    only. If the bracket misses (unusual data), it falls back to the full ``kthvalue``. CUDA
    tensors go to :func:`remove_smallest_concatenated`, others to
    :func:`remove_smallest_part_by_part`.
    """
    if parts and parts[0].is_cuda:
        return remove_smallest_concatenated(parts, count)
    return remove_smallest_part_by_part(parts, count)


def remove_smallest_part_by_part(parts: Sequence[Tensor], count: int) -> list[Tensor]:
    """The CPU path of :func:`remove_smallest_in_parts`: one pass per part, no copy of all scores."""
    sizes = [part.numel() for part in parts]
    total = sum(sizes)
    if count <= 0:
        return [torch.ones(n, dtype=torch.bool, device=part.device) for n, part in zip(sizes, parts)]
    if count >= total:
        return [torch.zeros(n, dtype=torch.bool, device=part.device) for n, part in zip(sizes, parts)]
    stride = max(1, total // _SAMPLE)
    low, high = _bracket(torch.cat([part[::stride] for part in parts]), count, total)
    # One pass per part: how many values lie below the bracket, and where the ones inside are.
    below, outside_high, positions, candidates = 0, [], [], []
    for part in parts:
        under = part < low if low is not None else torch.zeros_like(part, dtype=torch.bool)
        within_high = part <= high if high is not None else torch.ones_like(part, dtype=torch.bool)
        below += int(torch.count_nonzero(under))
        index = torch.nonzero(within_high ^ under).flatten()  # low <= value <= high
        outside_high.append(~within_high)
        positions.append(index)
        candidates.append(part[index])
    needed = count - below
    pool = torch.cat(candidates)
    if not 1 <= needed <= len(pool):  # the bracket missed the count-th value (unusual data)
        return remove_smallest_in_parts_plainly(parts, count)
    threshold = torch.kthvalue(pool, needed).values
    # Kept: everything above the bracket, and the candidates above the threshold. Of the values
    # equal to the threshold (all inside the bracket), the first ones in concatenated order go
    # until ``count`` are removed; the others stay.
    to_remove = count - below - int((pool < threshold).sum())
    keeps = []
    for keep, index, inside in zip(outside_high, positions, candidates):
        keep[index[inside > threshold]] = True
        tied = index[inside == threshold]
        if len(tied):
            keep[tied[to_remove:]] = True
            to_remove = max(0, to_remove - len(tied))
        keeps.append(keep)
    return keeps


def remove_smallest_concatenated(parts: Sequence[Tensor], count: int) -> list[Tensor]:
    """The GPU path of :func:`remove_smallest_in_parts`: the same bracket, then whole-tensor
    operations on a copy of all scores, waiting for the device three or four times in all where
    the part-by-part path waits a few times per part. On the CPU it is slower than that path.
    Same masks, bit for bit."""
    sizes = [part.numel() for part in parts]
    scores = torch.cat(list(parts))
    total = scores.numel()
    if count <= 0 or count >= total:
        return list(remove_smallest(scores, count).split(sizes))
    low, high = _bracket(scores[:: max(1, total // _SAMPLE)], count, total)
    under = scores < low if low is not None else torch.zeros_like(scores, dtype=torch.bool)
    within_high = scores <= high if high is not None else torch.ones_like(scores, dtype=torch.bool)
    needed = count - int(torch.count_nonzero(under))
    pool = scores[within_high & ~under]
    if not 1 <= needed <= len(pool):  # the bracket missed the count-th value (unusual data)
        return list(remove_smallest(scores, count).split(sizes))
    return list(_keep_above(scores, torch.kthvalue(pool, needed).values, count).split(sizes))


def remove_smallest_in_parts_plainly(parts: Sequence[Tensor], count: int) -> list[Tensor]:
    keep = remove_smallest(torch.cat(list(parts)), count)
    return list(keep.split([part.numel() for part in parts]))
