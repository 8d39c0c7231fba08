"""Maxima of sums of two rows by a threshold search on sorted rows (``core.maxplus``): the same
float as the full row's maximum, at the counted cost, on rows built to defeat the shallow
depths (anti-correlated rows, ties, exclusions at the top)."""

import pytest
import torch

from compact_proofs.core import maxplus
from compact_proofs.core.rigorous import Approx, Ops


def _rows(kind: str, R: int, V: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(R, V, generator=g, dtype=torch.float64)
    b = torch.randn(R, V, generator=g, dtype=torch.float64)
    if kind == "anti":  # the largest a sit on the smallest b: the max is deep in both orders
        b = -a + 0.1 * b
    elif kind == "ties":  # few distinct values: ties across candidates and the rest
        a, b = (a * 2).round() / 2, (b * 2).round() / 2
    elif kind == "peaked":  # one large entry per row: settled at the first depth
        a[torch.arange(R), torch.randint(0, V, (R,), generator=g)] += 10
    return a, b


@pytest.mark.parametrize("kind", ["random", "anti", "ties", "peaked"])
@pytest.mark.parametrize("V", [5, 12, 40, 64])
@pytest.mark.parametrize("e", [1, 2])
def test_threshold_max_is_the_full_rows_float_max(kind, V, e):
    g = torch.Generator().manual_seed(V * 10 + e)
    R, P = 9, 300
    a_mid, b_mid = _rows(kind, R, V, g)
    a, b = Approx(a_mid, 1e-12, 30.0), Approx(b_mid, 2e-12, 30.0)
    ra = torch.randint(0, R, (P,), generator=g)
    rb = ra.clone() if kind == "anti" else torch.randint(0, R, (P,), generator=g)
    # exclusions: often the top entries themselves (as the cubic excludes m and the first max)
    top_a = a_mid[ra].argmax(dim=1)
    exclude = torch.stack([top_a, torch.randint(0, V, (P,), generator=g)], dim=1)[:, :e]
    ops = Ops()
    sa, sb = maxplus.sort_rows(a, ops, "t"), maxplus.sort_rows(b, ops, "t")
    assert ops.ledger.flop == 2 * R * (V - 1)
    ops = Ops()
    got, arg, stage = maxplus.max_of_sums(a, sa, ra, b, sb, rb, exclude, ops, "t")
    tries = maxplus.tries(stage, V)
    full = (a_mid[ra] + b_mid[rb]).scatter(1, exclude, -torch.inf)
    assert torch.equal(got.mid, full.amax(dim=1))  # the same float, bit for bit
    assert torch.equal(full.gather(1, arg[:, None])[:, 0], got.mid)  # an x attaining it
    assert not bool((arg[:, None] == exclude).any())
    assert got.rad >= Ops().add(a, b).rad and got.mag >= Ops().add(a, b).mag
    assert ops.ledger.flop == maxplus.max_of_sums_flops(V, tries)
    assert ops.ledger.flop == int(maxplus.pair_flops(stage, V).sum())  # the same, per pair
    for i in range(0, P, 37):  # a pair alone is charged its own share
        alone = Ops()
        maxplus.max_of_sums(
            a, sa, ra[i : i + 1], b, sb, rb[i : i + 1], exclude[i : i + 1], alone, "t"
        )
        assert alone.ledger.flop == int(maxplus.pair_flops(stage[i : i + 1], V)[0])
    assert tries[0] == (P if maxplus.useful(maxplus.DEPTHS[0], V) else 0)
    if V == 64 and kind == "peaked":
        assert tries[-1] < P // 10 and ops.ledger.flop < P * (2 * V - 1) // 2  # cheap here
    if V == 64 and kind == "anti":
        assert tries[-1] > P // 2  # ... and the full rows where the shallow ones cannot tell


def test_depths_are_used_only_where_cheaper():
    assert not maxplus.useful(4, 9) and maxplus.useful(4, 10)
    assert not maxplus.useful(8, 17) and maxplus.useful(8, 18)


def test_candidates_all_excluded_fall_through():
    """When the exclusions cover every candidate of a depth (rows ordered alike, their 4 largest
    excluded), that depth decides nothing and the next one (or the full row) gives the max."""
    g = torch.Generator().manual_seed(7)
    V, P = 40, 50
    a_mid = torch.randn(P, V, generator=g, dtype=torch.float64)
    b_mid = a_mid * 0.5  # the same order
    exclude = a_mid.argsort(dim=1, descending=True)[:, :4]
    a, b = Approx(a_mid, 0.0, 10.0), Approx(b_mid, 0.0, 10.0)
    ops = Ops()
    sa, sb = maxplus.sort_rows(a, ops, "t"), maxplus.sort_rows(b, ops, "t")
    rows = torch.arange(P)
    got, arg, stage = maxplus.max_of_sums(a, sa, rows, b, sb, rows, exclude, Ops(), "t")
    tries = maxplus.tries(stage, V)
    full = (a_mid + b_mid).scatter(1, exclude, -torch.inf)
    assert torch.equal(got.mid, full.amax(dim=1))
    assert tries[1] == P  # none decided at depth 4
