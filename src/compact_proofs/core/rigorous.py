"""Rounding-sound float64 arithmetic with a-priori error bounds, and FLOP counting.

Arithmetic model (stated once, referenced by every checker):
    IEEE-754 binary64, round-to-nearest, unit roundoff u = 2^-53, for +, -, *, / and for the
    summations inside matmul/sum (any order, FMA or not: the classical bound
    |fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_n sum_i |a_i b_i|, gamma_n = n u / (1 - n u), holds for
    every summation order). ``torch.exp`` in float64 is assumed accurate to 4 ulp relative
    (its CPU kernels are SLEEF ``expd_u10`` or glibc ``exp``, both documented at <= 1 ulp).
    Error radii are Python floats; every update is rounded upward with ``math.nextafter``. No
    ``fesetround`` (unsound with threaded BLAS).

An ``Approx`` is a float64 tensor ``mid`` with two scalars: ``rad`` bounds ``|mid - exact|`` entrywise,
``mag`` bounds ``max(|mid|, |exact|)`` entrywise. Magnitudes are propagated analytically (O(1) scalar
work per tensor operation, not counted as FLOPs, like the paper's uncounted Python-level work), so
rigour costs no extra tensor passes. The checker's final decisions go through ``proven_negative``.

Every tensor operation adds its cost to the ``FlopLedger`` with the paper's rules (§10.2).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.core.ledger import FlopLedger

U = 2.0**-53
EXP_REL_ERR = 4 * U
_INF = math.inf


def _up(x: float) -> float:
    """Round a Python float (already within 1/2 ulp of the true value) upward."""
    return math.nextafter(x, _INF)


def up_sum(*terms: float) -> float:
    """Upper bound on the exact sum of non-negative floats."""
    total = 0.0
    for t in terms:
        total = _up(total + t)
    return total


def up_mul(*factors: float) -> float:
    """Upper bound on the exact product of non-negative floats."""
    prod = 1.0
    for f in factors:
        prod = _up(prod * f)
    return prod


def _grow(mag: float, rel: float) -> float:
    """A magnitude bound that also covers the rounded value: mag (1 + rel)."""
    return up_mul(mag, _up(1.0 + rel))


def gamma(n: int) -> float:
    """Upper bound on gamma_n = n u / (1 - n u)."""
    if n * U >= 0.5:
        raise ValueError("summation too long for the gamma_n bound")
    return _up(_up(n * U) / (1.0 - _up(n * U)))


@dataclass(frozen=True)
class Approx:
    """A float64 tensor with a rigorous uniform error radius and magnitude bound."""

    mid: Tensor
    rad: float
    mag: float

    @property
    def shape(self) -> torch.Size:
        return self.mid.shape

    def __getitem__(self, index) -> "Approx":
        """Indexing/reshaping is free and keeps the (uniform) bounds."""
        return Approx(self.mid[index], self.rad, self.mag)

    def map_layout(self, fn) -> "Approx":
        """Apply a pure layout function (transpose, reshape, flip, expand, gather) to ``mid``."""
        return Approx(fn(self.mid), self.rad, self.mag)


class Ops:
    """Counted, rounding-sound primitives. One instance per proof check, holding its ledger."""

    def __init__(self, ledger: FlopLedger | None = None):
        self.ledger = ledger if ledger is not None else FlopLedger()

    # -- leaves ---------------------------------------------------------------------------------
    def exact(self, t: Tensor, label: str = "load") -> Approx:
        """Exact float32 (or float64) data, read as exact reals. Cost: max|.|, i.e. 2 numel - 1."""
        mid = t.detach().to(torch.float64)
        numel = mid.numel()
        self.ledger.add(2 * numel - 1 if numel else 0, label=label)
        mag = float(mid.abs().max()) if numel else 0.0
        return Approx(mid, 0.0, mag)

    def constant(self, t: Tensor) -> Approx:
        """An exactly known constant tensor built by the checker (e.g. zeros); free."""
        mid = t.to(torch.float64)
        return Approx(mid, 0.0, float(mid.abs().max()) if mid.numel() else 0.0)

    # -- arithmetic -----------------------------------------------------------------------------
    def add(self, a: Approx, b: Approx, label: str = "add") -> Approx:
        mid = a.mid + b.mid
        self.ledger.add(mid.numel(), label=label)
        mag = up_sum(a.mag, b.mag)
        return Approx(mid, up_sum(a.rad, b.rad, up_mul(U, mag)), _grow(mag, U))

    def sub(self, a: Approx, b: Approx, label: str = "sub") -> Approx:
        return self.add(a, Approx(-b.mid, b.rad, b.mag), label=label)

    def mul(self, a: Approx, b: Approx, label: str = "mul") -> Approx:
        mid = a.mid * b.mid
        self.ledger.add(mid.numel(), label=label)
        mag = up_mul(a.mag, b.mag)
        rad = up_sum(up_mul(a.rad, b.mag), up_mul(b.rad, a.mag), up_mul(a.rad, b.rad), up_mul(U, mag))
        return Approx(mid, rad, _grow(mag, U))

    def scale(self, a: Approx, c: float, label: str = "scale") -> Approx:
        """Multiply by an exactly representable scalar ``c``."""
        mid = a.mid * c
        self.ledger.add(mid.numel(), label=label)
        mag = up_mul(a.mag, abs(c))
        return Approx(mid, up_sum(up_mul(a.rad, abs(c)), up_mul(U, mag)), _grow(mag, U))

    def divide_by_real(self, a: Approx, c: float, c_rel_err: float, label: str = "div") -> Approx:
        """Divide by a positive real known as the float ``c`` with relative error <= ``c_rel_err``."""
        if not c > 0:
            raise ValueError("divisor must be positive")
        mid = a.mid / c
        self.ledger.add(mid.numel(), label=label)
        # exact/c_true with c_true = c (1 + e), |e| <= c_rel_err: |1/(1+e) - 1| <= c_rel_err / (1 - c_rel_err).
        rel = _up(c_rel_err / (1.0 - c_rel_err))
        mag = up_mul(_up(a.mag / c), 1.0 + rel)
        rad = up_sum(up_mul(_up(a.rad / c), 1.0 + rel), up_mul(rel, mag), up_mul(U, mag))
        return Approx(mid, rad, _grow(mag, U))

    def matmul(self, a: Approx, b: Approx, label: str = "matmul") -> Approx:
        """``a @ b`` for 2-D (or batched) operands with inner size n.

        Error: |fl(AB) - A_ex B_ex| <= gamma_n n mag_A mag_B + n (r_A mag_B + r_B mag_A + r_A r_B).
        """
        mid = a.mid @ b.mid
        n = a.mid.shape[-1]
        self.ledger.add(mid.numel() * (2 * n - 1), label=label)
        mag = up_mul(n, a.mag, b.mag)
        prop = up_mul(n, up_sum(up_mul(a.rad, b.mag), up_mul(b.rad, a.mag), up_mul(a.rad, b.rad)))
        rad = up_sum(up_mul(gamma(n), mag), prop)
        return Approx(mid, rad, _grow(mag, gamma(n)))

    def sum(self, a: Approx, dim: int, label: str = "sum") -> Approx:
        n = a.mid.shape[dim]
        mid = a.mid.sum(dim)
        self.ledger.add(mid.numel() * max(n - 1, 0), label=label)
        mag = up_mul(n, a.mag)
        g = gamma(max(n, 1))
        return Approx(mid, up_sum(up_mul(n, a.rad), up_mul(g, mag)), _grow(mag, g))

    def amax(self, a: Approx, dim: int, label: str = "max") -> Approx:
        """Max is exact in floating point; |max mid - max exact| <= rad."""
        n = a.mid.shape[dim]
        mid = a.mid.amax(dim)
        self.ledger.add(mid.numel() * max(n - 1, 0), label=label)
        return Approx(mid, a.rad, a.mag)

    def amin(self, a: Approx, dim: int, label: str = "min") -> Approx:
        n = a.mid.shape[dim]
        mid = a.mid.amin(dim)
        self.ledger.add(mid.numel() * max(n - 1, 0), label=label)
        return Approx(mid, a.rad, a.mag)

    def maximum(self, a: Approx, b: Approx, label: str = "max") -> Approx:
        mid = torch.maximum(a.mid, b.mid)
        self.ledger.add(mid.numel(), label=label)
        return Approx(mid, max(a.rad, b.rad), max(a.mag, b.mag))

    def minimum(self, a: Approx, b: Approx, label: str = "min") -> Approx:
        mid = torch.minimum(a.mid, b.mid)
        self.ledger.add(mid.numel(), label=label)
        return Approx(mid, max(a.rad, b.rad), max(a.mag, b.mag))

    def sort(self, a: Approx, dim: int, descending: bool = False, label: str = "sort") -> Approx:
        """Sorting; charged as verifying sortedness, (n - 1) per sorted array (§10.2).

        Sorting permutes values, so the uniform radius and magnitude are unchanged.
        """
        n = a.mid.shape[dim]
        mid = a.mid.sort(dim=dim, descending=descending).values
        self.ledger.add((mid.numel() // max(n, 1)) * max(n - 1, 0), label=label)
        return Approx(mid, a.rad, a.mag)

    def softmax(self, scores: Approx, dim: int, label: str = "softmax") -> Approx:
        """Softmax along ``dim`` with a rigorous absolute radius on the probabilities.

        Claim: if |s_mid - s_ex| <= r entrywise, the returned p satisfies |p - softmax(s_ex)| <= rad.
        Proof: softmax(s_ex)_j = softmax(s_mid)_j * rho_j with rho_j in [e^{-2r}, e^{2r}] (numerator and
        denominator each move by a factor in [e^{-r}, e^{r}]), so the exact-input error is
        <= p_j (e^{2r} - 1) <= e^{2r} - 1. Computing softmax(s_mid) in float64 (subtract the max: abs
        error <= u |s - max| <= 2 u mag in the exponent, i.e. relative e^{2 u mag} - 1; exp: 4 ulp;
        sum of n positive terms: gamma_n; one division: u) gives relative error
        <= (1 + e1)(1 + 4u)(1 + gamma_n)(1 + u)/(1 - gamma_n) - 1 on each p_j <= 1.       QED
        Cost (paper rules): max-reduce, subtract, exp, sum, divide.
        """
        n = scores.mid.shape[dim]
        mid = torch.softmax(scores.mid, dim=dim)
        kept = mid.numel() // max(n, 1)
        self.ledger.add(kept * (n - 1) * 2 + 3 * mid.numel(), label=label)
        e1 = math.expm1(_up(2 * _up(U * up_mul(2.0, scores.mag))))
        g = gamma(max(n, 1))
        rel_fp = up_mul(1.0 + e1, 1.0 + EXP_REL_ERR, 1.0 + g, 1.0 + U, _up(1.0 / (1.0 - g))) - 1.0
        rel_in = math.expm1(up_mul(2.0, scores.rad))
        rad = up_sum(_up(rel_in), _up(rel_fp), up_mul(_up(rel_in), _up(rel_fp)))
        return Approx(mid, _up(rad), _grow(1.0, rad))

    # -- decisions ------------------------------------------------------------------------------
    def upper(self, a: Approx, label: str = "decide") -> Tensor:
        """Rigorous upper bounds on the exact values: nextafter(mid + rad, +inf). NaN stays NaN."""
        self.ledger.add(a.mid.numel(), label=label)
        return torch.nextafter(a.mid + a.rad, torch.tensor(_INF, dtype=torch.float64))

    def lower(self, a: Approx, label: str = "decide") -> Tensor:
        self.ledger.add(a.mid.numel(), label=label)
        return torch.nextafter(a.mid - a.rad, torch.tensor(-_INF, dtype=torch.float64))

    def proven_negative(self, a: Approx, label: str = "decide") -> Tensor:
        """Boolean tensor: the exact value is certainly < 0 (NaN is never proven)."""
        upper = self.upper(a, label=label)
        self.ledger.add(a.mid.numel(), label=label)
        return upper < 0
