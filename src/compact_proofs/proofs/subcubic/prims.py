"""Small counted primitives the subcubic checker needs beyond ``Ops`` (each charged to the
ledger with the paper's rules, reference-algorithms §10.2, and each sound for the ``Approx``
model of ``core/rigorous.py``: mid within rad of the exact value, |mid|, |exact| <= mag).
"""

import math

import torch

from compact_proofs.core.rigorous import Approx, Ops, U, up_mul, up_sum


def neg(a: Approx) -> Approx:
    """-a: negation is exact in floating point; free (a sign flip, like a layout change)."""
    return Approx(-a.mid, a.rad, a.mag)


def absolute(a: Approx, ops: Ops, label: str) -> Approx:
    """|a| elementwise. Claim: ||mid| - |exact|| <= |mid - exact| <= rad (|.| is 1-Lipschitz and
    exact in floating point), magnitudes unchanged. Cost: numel (elementwise unary)."""
    ops.ledger.add(a.mid.numel(), label=label)
    return Approx(a.mid.abs(), a.rad, a.mag)


def cummax(a: Approx, dim: int, ops: Ops, label: str) -> Approx:
    """Prefix maxima along ``dim``. Claim: each output is the float max of a set of entries of
    mid, each within rad of its exact value, hence within rad of the exact max of the same set.
    Cost: (n - 1) per prefix scan (a running max), like a reduction."""
    n = a.mid.shape[dim]
    ops.ledger.add(a.mid.numel() // max(n, 1) * max(n - 1, 0), label=label)
    return Approx(a.mid.cummax(dim).values, a.rad, a.mag)


def cummin(a: Approx, dim: int, ops: Ops, label: str) -> Approx:
    """Prefix minima along ``dim``; as ``cummax``."""
    n = a.mid.shape[dim]
    ops.ledger.add(a.mid.numel() // max(n, 1) * max(n - 1, 0), label=label)
    return Approx(a.mid.cummin(dim).values, a.rad, a.mag)


def tighten(a: Approx, ops: Ops, label: str) -> Approx:
    """Replace the a-priori magnitude by max|mid| + rad (rounded up) when smaller. Claim:
    |exact| <= |mid| + rad entrywise. Cost: 2 numel - 1 (abs and a max, as ``Ops.exact``)."""
    numel = a.mid.numel()
    ops.ledger.add(2 * numel - 1, label=label)
    mag = up_sum(float(a.mid.abs().max()), a.rad, a.rad)
    return Approx(a.mid, a.rad, min(a.mag, mag))


def rowrange(a: Approx, ops: Ops, label: str) -> Approx:
    """max - min along the last dim (bounds on the exact range follow from ``amax``/``amin``/
    ``sub``). Cost: 2 kept (n - 1) + kept."""
    return ops.sub(ops.amax(a, -1, label=label), ops.amin(a, -1, label=label), label=label)


def outer(u: Approx, v: Approx, ops: Ops, label: str) -> Approx:
    """u v^T for vectors u [a], v [b]. Cost: a b."""
    return ops.mul(u.map_layout(lambda t: t[:, None]), v.map_layout(lambda t: t[None, :]), label)


def vecmat(v: Approx, m: Approx, ops: Ops, label: str) -> Approx:
    """v^T M for v [a], M [a, b] -> [b]. Cost: b (2a - 1)."""
    out = ops.matmul(v.map_layout(lambda t: t[None, :]), m, label=label)
    return out.map_layout(lambda t: t[0])


def matvec(m: Approx, v: Approx, ops: Ops, label: str) -> Approx:
    """M v for M [a, b], v [b] -> [a]. Cost: a (2b - 1)."""
    out = ops.matmul(m, v.map_layout(lambda t: t[:, None]), label=label)
    return out.map_layout(lambda t: t[:, 0])


def transpose(a: Approx) -> Approx:
    return a.map_layout(lambda t: t.transpose(-1, -2))


def zeros_like(a: Approx) -> Approx:
    return Approx(torch.zeros_like(a.mid), 0.0, 0.0)


def sqrt(a: Approx, ops: Ops, label: str) -> Approx:
    """Elementwise square root of an Approx whose exact values are >= 0.
    Claim: with m = max(mid, 0), |sqrt(m) - sqrt(exact)| <= sqrt(|m - exact|) <= sqrt(rad)
    (sqrt is 1/2-Hoelder with constant 1 on [0, inf), and clamping to 0 moves mid towards the
    non-negative exact value), and fl(sqrt) is correctly rounded (relative error <= u), so
    rad' = sqrt(rad) + u mag' with mag' = sqrt(mag), all rounded up. Cost: numel."""
    ops.ledger.add(a.mid.numel(), label=label)
    mag = math.nextafter(math.sqrt(a.mag), math.inf)
    if not math.isfinite(a.rad):  # vacuous input (e.g. from a certificate's huge vector)
        return Approx(a.mid.clamp(min=0.0).sqrt(), math.inf, math.inf)
    r = math.sqrt(a.rad) if a.rad > 0 else 0.0
    while math.nextafter(r * r, -math.inf) < a.rad:  # a lower bound on r^2 must reach rad
        r = math.nextafter(r, math.inf)
    rad = up_sum(r, up_mul(U, mag))
    return Approx(a.mid.clamp(min=0.0).sqrt(), rad, math.nextafter(mag + rad, math.inf))


def upper_exact(a: Approx, ops: Ops, label: str) -> Approx:
    """For a quantity used only through upper bounds (a bound eps in a claim 'x <= eps'):
    the float tensor nextafter(mid + rad, +inf) >= exact, read as an exact value (rad 0, tight
    magnitude). Claim: any claim 'x <= eps' stays true with eps replaced by something larger;
    the returned numbers are exact floats. Cost: numel (``Ops.upper``) + 2 numel - 1 (the
    magnitude, as ``Ops.exact``)."""
    up = ops.upper(a, label=label)
    numel = up.numel()
    ops.ledger.add(2 * numel - 1, label=label)
    return Approx(up, 0.0, float(up.abs().max()) if numel else 0.0)
