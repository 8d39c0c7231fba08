"""Maxima of sums of two table rows, max_{x not in X} a[x] + b[x], by a threshold search on the
rows' sorted orders (each row sorted once, then shared by every pair of rows that needs it).

A full row costs d_vocab sums and d_vocab - 1 comparisons. With the rows sorted, the d largest
entries of each usually contain the maximum, and one comparison shows when they must:

Claim: let C be the indices of the d largest entries of a and of b (from their sorted orders),
a' and b' their (d+1)-th largest values, and s* the float max of fl(a[x] + b[x]) over
x in C minus X (taken only if that set is non-empty). If s* >= fl(a' + b'), then s* is the float
max of fl(a[x] + b[x]) over every x not in X, the value the full row computes, and so within the
sums' radius of the exact maximum (as for ``Ops.amax``).
Proof: an x outside C is not among the d largest entries of a, nor of b, so a[x] <= a' and
b[x] <= b' (as floats), and rounding is monotone: fl(a[x] + b[x]) <= fl(a' + b') <= s*.      QED
Otherwise the next depth is tried, and at last the full row. The candidates' sums are the same
float operations as the full row's at those x, so the result is the same float either way.
Cost: ``max_of_sums_flops`` of the ``tries``, or ``pair_flops`` per pair, of the stages reached.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops

# Depths tried in turn (each only where it costs less than the full row: 4 d + 1 < 2 V - 1).
# Measured on Max-of-4 seed 123's cubic pair maxima (EUPU + own rows): the 4 largest of each
# row settle 88% of them, the 8 largest 99%.
DEPTHS = (4, 8)


@dataclass(frozen=True)
class SortedRows:
    """Rows sorted in descending order: ``values[r, i] = rows[r, order[r, i]]``."""

    values: Approx  # [rows, V]
    order: Tensor  # [rows, V]


def sort_rows(rows: Approx, ops: Ops, label: str) -> SortedRows:
    """Cost: V - 1 per row (``Ops.sort_indices``)."""
    values, order = ops.sort_indices(rows, dim=1, descending=True, label=label)
    return SortedRows(values=values, order=order)


def useful(d: int, V: int) -> bool:
    """Whether depth d costs less than a full row of length V."""
    return 4 * d + 1 < 2 * V - 1


def max_of_sums(
    a: Approx,
    sa: SortedRows,
    ra: Int[Tensor, " pairs"],
    b: Approx,
    sb: SortedRows,
    rb: Int[Tensor, " pairs"],
    exclude: Int[Tensor, "pairs e"],
    ops: Ops,
    label: str,
) -> tuple[Approx, Tensor, Tensor]:
    """Per pair i, max over x not in ``exclude[i]`` of a[ra[i], x] + b[rb[i], x] (rows ``a``,
    ``b`` [rows, V], sorted as ``sa``, ``sb``), an x attaining it, and the stage that settled it
    (t < len(DEPTHS): at depth DEPTHS[t]; len(DEPTHS): the full row; for ``tries`` and
    ``pair_flops``). Needs V > e."""
    P, V = ra.numel(), a.shape[1]
    val = torch.empty(P, dtype=torch.float64)
    arg = torch.empty(P, dtype=torch.int64)
    stage = torch.full((P,), len(DEPTHS), dtype=torch.int64)
    rad = mag = 0.0
    todo = torch.arange(P)
    for t, d in enumerate(DEPTHS):
        if not useful(d, V):
            continue
        i, j = ra[todo], rb[todo]
        cand = torch.cat([sa.order[i, :d], sb.order[j, :d]], dim=1)  # [T, 2 d]
        sums = ops.add(a[i[:, None], cand], b[j[:, None], cand], label=label)
        out = (cand[:, :, None] == exclude[todo][:, None, :]).any(dim=2)
        best = sums.mid.masked_fill(out, -torch.inf).max(dim=1)
        threshold = ops.add(sa.values[i, d], sb.values[j, d], label=label)
        ops.ledger.add(todo.numel() * (2 * d - 1 + 1), label=label)  # the max, the test
        rad, mag = max(rad, sums.rad), max(mag, sums.mag)
        done = (best.values >= threshold.mid) & ~out.all(dim=1)
        val[todo[done]] = best.values[done]
        arg[todo[done]] = cand.gather(1, best.indices[:, None])[done, 0]
        stage[todo[done]] = t
        todo = todo[~done]
    if todo.numel():
        sums = ops.add(a[ra[todo]], b[rb[todo]], label=label)  # [T, V]
        best = ops.amax_excluding(sums, 1, exclude[todo], label=label)
        val[todo] = best.mid
        arg[todo] = sums.mid.scatter(1, exclude[todo], -torch.inf).argmax(dim=1)
        rad, mag = max(rad, best.rad), max(mag, best.mag)
    return Approx(val, rad, mag), arg, stage


def tries(stage: Int[Tensor, " pairs"], V: int) -> list[int]:
    """How many pairs each depth of ``DEPTHS`` (0 where not ``useful``) and the full row were
    tried on, from the stages ``max_of_sums`` reached."""
    at_depth = [int((stage >= t).sum()) if useful(d, V) else 0 for t, d in enumerate(DEPTHS)]
    return at_depth + [int((stage == len(DEPTHS)).sum())]


def pair_flops(stage: Int[Tensor, " pairs"], V: int) -> Int[Tensor, " pairs"]:
    """``max_of_sums``'s charge per pair, from the stage it reached: 4 d + 1 per useful depth
    d tried, 2 V - 1 for the full row."""
    out = torch.where(stage == len(DEPTHS), 2 * V - 1, 0)
    for t, d in enumerate(DEPTHS):
        if useful(d, V):
            out = out + torch.where(stage >= t, 4 * d + 1, 0)
    return out


def max_of_sums_flops(V: int, tries: list[int]) -> int:
    """Ledger total of ``max_of_sums`` when ``tries[t]`` pairs reached stage t (the depths of
    ``DEPTHS``, then the full row): 4 d + 1 per pair at depth d, 2 V - 1 per full row."""
    *at_depth, full = tries
    return sum(n * (4 * d + 1) for n, d in zip(at_depth, DEPTHS, strict=True)) + full * (2 * V - 1)
