"""Every ``Ops`` primitive against exact truth (python-flint rationals, or arb balls at 400 bits).

Each test builds inputs as balls: exact rational values within ``rad`` of float64 midpoints
(adversarial: cancellation, huge magnitudes, underflow, huge dynamic range for softmax), applies
the primitive, and asserts that the exact result of the same operation on the exact inputs lies
in [mid - rad, mid + rad] and below ``mag``; and that the FLOP charge is the paper's rule.
"""

import math

import flint
import pytest
import torch

from compact_proofs.core.rigorous import Approx, Ops

PREC = 400


@pytest.fixture(autouse=True)
def _high_precision():
    old = flint.ctx.prec
    flint.ctx.prec = PREC
    yield
    flint.ctx.prec = old


def q(x: float) -> flint.fmpq:
    return flint.fmpq(*float(x).as_integer_ratio())


def ball(mid: torch.Tensor, rad: float, seed: int) -> tuple[Approx, list]:
    """An Approx around ``mid`` and exact rational values inside it (flat list, row-major)."""
    g = torch.Generator().manual_seed(seed)
    mid = mid.double()
    u = (torch.rand(mid.numel(), generator=g, dtype=torch.float64) * 2 - 1).tolist()
    exact = [q(x) + q(t) * q(rad) for x, t in zip(mid.flatten().tolist(), u, strict=True)]
    mag = math.nextafter(float(mid.abs().max()) + rad, math.inf) if mid.numel() else rad
    return Approx(mid, rad, mag), exact


def to_arb(x) -> flint.arb:
    return x if isinstance(x, flint.arb) else flint.arb(x)


def assert_contains(out: Approx, exact: list) -> None:
    mids = out.mid.flatten().tolist()
    assert len(mids) == len(exact)
    rad, mag = to_arb(q(out.rad)), to_arb(q(out.mag))
    for i, (m, e) in enumerate(zip(mids, exact, strict=True)):
        err = abs(to_arb(e) - to_arb(q(m)))
        assert err < rad or err == 0, f"entry {i}: |exact - mid| = {err} > rad {out.rad}"
        assert abs(to_arb(e)) <= mag and abs(m) <= out.mag, f"entry {i}: magnitude bound"


def reshape(flat: list, shape) -> list:
    """Row-major nested indexing helper: returns a function idx -> element."""
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    return lambda *idx: flat[sum(i * s for i, s in zip(idx, strides, strict=True))]


def rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ------------------------------------------------------------------------------- arithmetic
CASES = {
    "random": lambda s: (rand((6, 5), s), rand((6, 5), s + 1)),
    "cancellation": lambda s: (
        rand((6, 5), s, 1e10),
        -rand((6, 5), s, 1e10) + rand((6, 5), s + 1, 1e-3),
    ),
    "huge-range": lambda s: (rand((6, 5), s, 1e150), rand((6, 5), s + 1, 1e-150)),
    "underflow": lambda s: (rand((6, 5), s, 1e-160), rand((6, 5), s + 1, 1e-160)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rad", [0.0, 1e-12])
def test_add_sub_mul(case, rad):
    x, y = CASES[case](3)
    a, ea = ball(x, rad * float(x.abs().max()), 1)
    b, eb = ball(y, rad * float(y.abs().max()), 2)
    ops = Ops()
    assert_contains(ops.add(a, b), [s + t for s, t in zip(ea, eb, strict=True)])
    assert_contains(ops.sub(a, b), [s - t for s, t in zip(ea, eb, strict=True)])
    assert_contains(ops.mul(a, b), [s * t for s, t in zip(ea, eb, strict=True)])
    assert ops.ledger.flop == 3 * x.numel()


@pytest.mark.parametrize("case", list(CASES))
def test_scale_and_divide_by_real(case):
    x, _ = CASES[case](5)
    a, ea = ball(x, 1e-13 * float(x.abs().max()), 3)
    ops = Ops()
    assert_contains(ops.scale(a, -0.375), [e * q(-0.375) for e in ea])
    s = math.sqrt(32)  # correctly rounded, so sqrt(32) = s (1 + e) with |e| <= 2^-52
    exact_s = flint.arb(32).sqrt()
    assert_contains(ops.divide_by_real(a, s, 2.0**-52), [to_arb(e) / exact_s for e in ea])
    assert ops.ledger.flop == 2 * x.numel()


@pytest.mark.parametrize("case", ["random", "cancellation", "huge-range"])
def test_matmul_and_sum(case):
    x, y = CASES[case](7)
    a, ea = ball(x, 1e-14 * float(x.abs().max()), 4)  # [6, 5]
    b, eb = ball(y.T.contiguous(), 1e-14 * float(y.abs().max()), 5)  # [5, 6]
    A, B = reshape(ea, (6, 5)), reshape(eb, (5, 6))
    ops = Ops()
    out = ops.matmul(a, b)
    exact = [sum((A(i, t) * B(t, j) for t in range(5)), q(0)) for i in range(6) for j in range(6)]
    assert_contains(out, exact)
    assert ops.ledger.flop == 6 * 6 * (2 * 5 - 1)
    ops = Ops()
    assert_contains(ops.sum(a, dim=1), [sum((A(i, t) for t in range(5)), q(0)) for i in range(6)])
    assert_contains(ops.sum(a, dim=0), [sum((A(t, j) for t in range(6)), q(0)) for j in range(5)])
    assert ops.ledger.flop == 6 * 4 + 5 * 5


def test_matmul_cancelling_rows():
    """Rows whose dot products cancel almost exactly: the bound must still hold."""
    x = torch.tensor([[1e8, 1.0, -1e8, 3e-8]], dtype=torch.float64)
    y = torch.tensor([[1.0], [1e-9], [1.0], [1.0]], dtype=torch.float64)
    a, ea = ball(x, 0.0, 0)
    b, eb = ball(y, 0.0, 0)
    out = Ops().matmul(a, b)
    assert_contains(out, [sum((s * t for s, t in zip(ea, eb, strict=True)), q(0))])


# --------------------------------------------------------------------------- order statistics
def _close_pairs(seed):
    """Entries closer than the radius, so exact and float orderings can differ."""
    x = rand((5, 7), seed)
    x[:, 1] = x[:, 0] + 1e-13
    return x


def test_max_min_sort_and_selection():
    x = _close_pairs(1)
    a, ea = ball(x, 1e-12, 6)
    b, eb = ball(rand((5, 7), 9), 1e-12, 7)
    A = reshape(ea, (5, 7))
    ops = Ops()
    assert_contains(ops.amax(a, dim=1), [max(A(i, j) for j in range(7)) for i in range(5)])
    assert_contains(ops.amin(a, dim=0), [min(A(i, j) for i in range(5)) for j in range(7)])
    assert_contains(ops.maximum(a, b), [max(s, t) for s, t in zip(ea, eb, strict=True)])
    assert_contains(ops.minimum(a, b), [min(s, t) for s, t in zip(ea, eb, strict=True)])
    assert_contains(
        ops.sort(a, dim=1), [v for i in range(5) for v in sorted(A(i, j) for j in range(7))]
    )
    cond = x > 0
    assert_contains(
        ops.where(cond, a, b),
        [s if c else t for s, t, c in zip(ea, eb, cond.flatten().tolist(), strict=True)],
    )
    assert ops.ledger.flop == 5 * 6 + 7 * 4 + 35 + 35 + 5 * 6 + 35


def test_excluding_and_leave_one_out():
    x = _close_pairs(2)
    x[0, 3] = x[0, 2]  # an exact tie at the top of some row
    a, ea = ball(x, 1e-12, 8)
    A = reshape(ea, (5, 7))
    ops = Ops()
    ex = torch.tensor([[0, 3], [1, 1], [6, 2], [0, 0], [5, 4]])
    out = ops.amax_excluding(a, dim=1, exclude=ex)
    want = [max(A(i, j) for j in range(7) if j not in ex[i].tolist()) for i in range(5)]
    assert_contains(out, want)
    assert ops.ledger.flop == 5 * 6
    ops = Ops()
    out = ops.amax_leave_one_out(a, dim=1)
    assert_contains(
        out, [max(A(i, t) for t in range(7) if t != j) for i in range(5) for j in range(7)]
    )
    assert ops.ledger.flop == 5 * (2 * 7 - 3) + 2 * 35
    ops = Ops()
    e = torch.tensor([0, 6, 3, 3, 1])
    out = ops.amax_leave_one_out(a, dim=1, exclude=e)
    want = [
        max(A(i, t) for t in range(7) if t not in (j, int(e[i])))
        for i in range(5)
        for j in range(7)
    ]
    assert_contains(out, want)
    assert ops.ledger.flop == 5 * (2 * 7 - 4) + 2 * 35


def test_top_k_and_first_not_excluded():
    x = _close_pairs(3)
    x[1, 4] = x[1, 0]  # an exact tie at the top of some row
    a, ea = ball(x, 1e-12, 9)
    A = reshape(ea, (5, 7))
    ops = Ops()
    top, idx = ops.top_k(a, 3)
    assert ops.ledger.flop == 5 * (3 * 6 - 3)
    ex = torch.tensor([[idx[0, 0], idx[0, 1]], [6, 6], [idx[2, 0], 1], [0, 2], [idx[4, 1], 5]])
    out = ops.first_not_excluded(top, idx, ex)
    want = [max(A(i, j) for j in range(7) if j not in ex[i].tolist()) for i in range(5)]
    assert_contains(out, want)
    assert ops.ledger.flop == 5 * (3 * 6 - 3) + 5 and ops.ledger.int_op == 5 * 3 * 2
    # rows gathered per output (as the cubic proof uses them), with one index left out first
    ops = Ops()
    drop = torch.tensor([2, 0, 6, 3, 1])
    top, idx = ops.top_k(a, 2, exclude=drop)
    assert ops.ledger.flop == 5 * (2 * 5 - 1)
    rows = torch.tensor([0, 0, 3, 4, 4, 2])
    ex = torch.tensor([[1], [4], [5], [0], [6], [2]])
    out = ops.first_not_excluded(top[rows], idx[rows], ex)
    want = [
        max(A(int(i), j) for j in range(7) if j not in (int(drop[i]), int(e)))
        for i, e in zip(rows, ex[:, 0], strict=True)
    ]
    assert_contains(out, want)
    with pytest.raises(ValueError):
        ops.first_not_excluded(top, idx, torch.zeros(5, 2, dtype=torch.int64))


def test_running_max_and_min():
    x = _close_pairs(4)
    a, ea = ball(x, 1e-12, 11)
    A = reshape(ea, (5, 7))
    ops = Ops()
    hi = ops.cummax(a, dim=1)
    lo = ops.cummin(a, dim=0)
    assert ops.ledger.flop == 5 * 6 + 7 * 4
    assert_contains(hi, [max(A(i, t) for t in range(j + 1)) for i in range(5) for j in range(7)])
    assert_contains(lo, [min(A(t, j) for t in range(i + 1)) for i in range(5) for j in range(7)])


def test_layout_ops_are_free_and_keep_bounds():
    a, ea = ball(rand((3, 4), 1), 1e-9, 1)
    b, eb = ball(rand((3, 4), 2, 100.0), 1e-6, 2)
    assert_contains(Ops.stack([a, b], dim=0), ea + eb)
    assert_contains(
        Ops.cat([a, b], dim=1),
        [v for i in range(3) for v in ea[4 * i : 4 * i + 4] + eb[4 * i : 4 * i + 4]],
    )


# --------------------------------------------------------------------------- softmax and lse
SCORES = {
    "random": lambda: rand((4, 6), 1, 3.0),
    "sharp": lambda: rand((4, 6), 2, 300.0),
    "dynamic-range": lambda: torch.tensor(
        [
            [0.0, -800.0, -745.3, -708.5, 1e-300, 700.0],
            [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
            [1e3, -1e3, 0.0, 1e3 - 1e-12, 2.0, -2.0],
            [-1e4, -1e4 + 1.0, -1e4 + 2.0, 0.5, 0.25, 0.125],
        ],
        dtype=torch.float64,
    ),
    "two-entries": lambda: rand((4, 2), 3, 10.0),
    "three-tiny": lambda: rand((4, 3), 4, 1e-3),
}


def _softmax_exact(rows: list[list]) -> list:
    out = []
    for row in rows:
        e = [to_arb(v).exp() for v in row]
        tot = sum(e[1:], e[0])
        out += [x / tot for x in e]
    return out


@pytest.mark.parametrize("case", list(SCORES))
@pytest.mark.parametrize("rad", [0.0, 1e-10])
def test_softmax(case, rad):
    x = SCORES[case]()
    r, c = x.shape
    a, ea = ball(x, rad, 11)
    A = reshape(ea, (r, c))
    ops = Ops()
    out = ops.softmax(a, dim=1)
    assert_contains(out, _softmax_exact([[A(i, j) for j in range(c)] for i in range(r)]))
    assert ops.ledger.flop == 2 * r * (c - 1) + 3 * r * c
    ops = Ops()
    out0 = ops.softmax(a, dim=0)  # along the other axis too
    cols = _softmax_exact([[A(i, j) for i in range(r)] for j in range(c)])
    assert_contains(out0, [cols[j * r + i] for i in range(r) for j in range(c)])


@pytest.mark.parametrize("case", list(SCORES))
@pytest.mark.parametrize("rad", [0.0, 1e-10])
def test_logsumexp(case, rad):
    x = SCORES[case]()
    r, c = x.shape
    a, ea = ball(x, rad, 12)
    A = reshape(ea, (r, c))
    ops = Ops()
    out = ops.logsumexp(a, dim=1)
    exact = []
    for i in range(r):
        e = [to_arb(A(i, j)).exp() for j in range(c)]
        exact.append(sum(e[1:], e[0]).log())
    assert_contains(out, exact)
    assert ops.ledger.flop == 2 * r * (c - 1) + 2 * r * c + 2 * r


@pytest.mark.parametrize("case", list(SCORES))
@pytest.mark.parametrize("rad", [0.0, 1e-10])
def test_exp_shifted(case, rad):
    x = SCORES[case]()
    r, c = x.shape
    a, ea = ball(x, rad, 13)
    A = reshape(ea, (r, c))
    ops = Ops()
    out = ops.exp_shifted(a, dim=1)
    top = x.amax(dim=1).tolist()  # the shift is the max of the float midpoints
    exact = [(to_arb(A(i, j)) - to_arb(q(top[i]))).exp() for i in range(r) for j in range(c)]
    assert_contains(out, exact)
    assert ops.ledger.flop == r * (c - 1) + 2 * r * c
    assert out.mid.amax(dim=1).eq(1.0).all()


@pytest.mark.parametrize("case", list(SCORES))
@pytest.mark.parametrize("rad", [0.0, 1e-10])
def test_exp_of_shifted_extremes(case, rad):
    """exp_nonpositive of the max / min over rows of shift_by_max (the range of exp_shifted over
    rows, as the adaptive box tables take it), against arb."""
    x = SCORES[case]()
    r, c = x.shape
    a, ea = ball(x, rad, 17)
    A = reshape(ea, (r, c))
    ops = Ops()
    d, top = ops.shift_by_max(a, dim=1)
    assert torch.equal(top[:, 0], x.amax(dim=1)) and (d.mid <= 0).all()
    hi = ops.exp_nonpositive(ops.amax(d, dim=0))
    lo = ops.exp_nonpositive(ops.amin(d, dim=0))
    top = top[:, 0].tolist()
    shifted = [[(to_arb(A(i, j)) - to_arb(q(top[i]))).exp() for i in range(r)] for j in range(c)]
    assert_contains(d, [(to_arb(A(i, j)) - to_arb(q(top[i]))) for i in range(r) for j in range(c)])
    assert_contains(hi, [max(col, key=lambda v: v.mid()) for col in shifted])
    assert_contains(lo, [min(col, key=lambda v: v.mid()) for col in shifted])
    assert ops.ledger.flop == r * (c - 1) + r * c + 2 * c * (r - 1) + 2 * c


def test_exp_nonpositive_refuses_positive():
    with pytest.raises(ValueError):
        Ops().exp_nonpositive(Approx(torch.tensor([-1.0, 0.5], dtype=torch.float64), 0.0, 1.0))


def test_upper_exact():
    a, ea = ball(rand((4, 5), 5, 1e3), 1e-9, 5)
    ops = Ops()
    up = ops.upper_exact(a)
    assert up.rad == 0.0 and ops.ledger.flop == 20
    for u, e in zip(up.mid.flatten().tolist(), ea, strict=True):
        assert to_arb(e) <= to_arb(q(u)) and abs(u) <= up.mag


def test_softmax_bound_is_not_vacuous():
    a, _ = ball(rand((4, 3), 1), 0.0, 0)
    assert Ops().softmax(a, dim=1).rad < 1e-14
    assert Ops().logsumexp(a, dim=1).rad < 1e-14


# ------------------------------------------------------------------------------- decisions
def test_decisions_and_leaves():
    x = torch.tensor([-1e-300, 0.0, -1.0, 2.0, -3e-16, float("nan")], dtype=torch.float64)
    ops = Ops()
    a = Approx(x, 1e-16, 3.0)
    neg = ops.proven_negative(a)
    assert neg.tolist() == [False, False, True, False, True, False]
    assert ops.ledger.flop == 6  # one comparison per entry
    pos = ops.proven_positive(Approx(-x, 1e-16, 3.0))
    assert pos.tolist() == neg.tolist() and ops.ledger.flop == 12
    # the comparison mid < -rad is exact: one ulp below -rad is proven, -rad itself is not
    edge = torch.tensor([-1e-16, math.nextafter(-1e-16, -1.0)], dtype=torch.float64)
    assert Ops().proven_negative(Approx(edge, 1e-16, 1.0)).tolist() == [False, True]
    assert Ops().proven_positive(Approx(-edge, 1e-16, 1.0)).tolist() == [False, True]
    assert not bool(Ops().proven_negative(Approx(x[:1], math.inf, math.inf)).any())
    up, lo = Ops().upper(a), Ops().lower(a)
    for m, u, l in zip(x.tolist()[:5], up.tolist()[:5], lo.tolist()[:5], strict=True):
        assert q(u) >= q(m) + q(1e-16) and q(l) <= q(m) - q(1e-16)
    ops = Ops()
    w = torch.tensor([[0.1, -2.5], [3.0, 1e-30]], dtype=torch.float32)
    leaf = ops.exact(w)
    assert leaf.rad == 0.0 and leaf.mag == 3.0 and ops.ledger.flop == 2 * 4 - 1
    assert_contains(leaf, [q(float(v)) for v in w.flatten().tolist()])


def test_bounds_past_float64_range_are_infinite_not_errors():
    """Scores beyond exp's float64 range give vacuous (+inf) radii, never an OverflowError; a
    zero bound times an infinite one bounds a product of 0 (no NaN radius)."""
    from compact_proofs.core import rigorous

    assert rigorous._exp_up(800.0) == math.inf and rigorous._expm1_up(1e6) == math.inf
    assert rigorous._exp_up(700.0) >= math.exp(700.0)
    assert rigorous.up_mul(0.0, math.inf) == 0.0 and rigorous.up_mul(2.0, math.inf) == math.inf
    ops = Ops()
    out = ops.softmax(Approx(torch.tensor([[0.0, -1.0]], dtype=torch.float64), 400.0, 1.0), 1)
    assert out.rad == math.inf
    assert not ops.proven_negative(ops.sub(out, Approx(out.mid + 1.0, 0.0, 3.0))).any()


def test_a_nan_bound_becomes_infinite():
    """max(1.0, nan) is 1.0 in Python: a NaN radius could be dropped by a later max(); it is
    stored as +inf instead."""
    a = Approx(torch.zeros(2, dtype=torch.float64), math.nan, math.nan)
    assert a.rad == math.inf and a.mag == math.inf
    assert a[0].rad == math.inf and max(1.0, a.rad) == math.inf


def test_a_sum_or_product_that_overflows_gets_an_infinite_radius():
    """127 copies of m < DBL_MAX / 127 sum exactly to just below DBL_MAX, but the rounded sum
    overflows to +inf; the radius must not stay finite (lower() would then exceed the exact
    sum). Likewise a matmul whose dot products round past DBL_MAX (found by a review)."""
    ops = Ops()
    m = float.fromhex("0x1.0204081020406p+1017")
    for sign in (1.0, -1.0):
        s = ops.sum(ops.exact(torch.full((127,), sign * m, dtype=torch.float64)), 0)
        exact = q(sign * m) * 127
        assert abs(exact) < q(1.7976931348623157e308)  # the exact sum is below DBL_MAX
        assert s.rad == math.inf
        lo, up = float(ops.lower(s)), float(ops.upper(s))
        # No bound (NaN, which no comparison proves anything from, or infinite) or a true one.
        assert not (math.isfinite(lo) and q(lo) > exact)
        assert not (math.isfinite(up) and q(up) < exact)
        assert not ops.proven_negative(s if sign > 0 else ops.scale(s, -1.0)).any()
    m2 = float.fromhex("0x1.47ae147ae1478p+1019")
    p = ops.matmul(
        ops.exact(torch.ones(2, 25, dtype=torch.float64)),
        ops.exact(torch.full((25, 2), m2, dtype=torch.float64)),
    )
    assert p.rad == math.inf and not ops.proven_negative(ops.scale(p, -1.0)).any()


def test_an_exact_zero_times_an_overflowed_value_is_zero_not_nan():
    """0 * inf is NaN in floating point, and sort() moves a NaN past the finite entries, which
    once 'proved' min [-5, 1, 2] > 0 (found by a review). A factor with magnitude bound 0 is
    exactly zero, so the product is exactly zero."""
    ops = Ops()
    big = ops.exact(torch.tensor([1e300, 1.0, 1.0], dtype=torch.float64))
    over = ops.mul(big, big)  # mid [inf, 1, 1]: an honest overflow, radius inf
    assert over.rad == math.inf
    zero = ops.constant(torch.zeros(3, dtype=torch.float64))
    for z in (ops.mul(zero, over), ops.mul(over, zero), ops.scale(over, 0.0)):
        assert z.mid.tolist() == [0.0, 0.0, 0.0]
    z = ops.matmul(zero.map_layout(lambda t: t[None, :]), over.map_layout(lambda t: t[:, None]))
    assert z.mid.tolist() == [[0.0]]
    y = ops.add(ops.mul(zero, over), ops.exact(torch.tensor([-5.0, 1.0, 2.0])))
    smallest = ops.sort(y, 0)[0]
    assert float(ops.lower(smallest)) <= -5.0 <= float(ops.upper(smallest))


def test_preconditions_are_enforced():
    """A divisor known only to within a factor of 2 or worse has no bounded reciprocal; a
    float32 mid would compute in float32 against float64 radii; exp's upper bound covers
    underflow (found by a review)."""
    from compact_proofs.core import rigorous

    ops = Ops()
    one = ops.exact(torch.ones(1, dtype=torch.float64))
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="relative error"):
            ops.divide_by_real(one, 1.0, bad)
    with pytest.raises(TypeError, match="float64"):
        Approx(torch.ones(2, dtype=torch.float32), 0.0, 1.0)
    for x in (-800.0, -745.2, -1e6):
        assert rigorous._exp_up(x) > 0  # e^x > 0, though math.exp(x) underflows to 0
