"""Rounding-sound float64 arithmetic with a-priori error bounds, and FLOP counting.

Arithmetic model (stated once, referenced by every checker):
    IEEE-754 binary64, round-to-nearest, unit roundoff u = 2^-53, for +, -, *, / and for the
    summations inside matmul/sum (any order, FMA or not: the classical bound
    |fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_n sum_i |a_i b_i|, gamma_n = n u / (1 - n u),
    holds for every summation order). ``torch.exp`` in float64 is assumed accurate to 4 ulp
    relative (its CPU kernels are SLEEF ``expd_u10`` or glibc ``exp``, both documented at <= 1 ulp),
    and ``torch.log`` likewise. Underflow: a product or quotient that underflows has absolute error
    <= ETA = 2^-1021 beyond the relative bound (sums of floats are exact there; torch does not
    flush denormals by default), and an ``exp`` that underflows (flushing to 0 or a subnormal) has
    absolute error <= TAU = 2^-1021. Error radii are Python floats; every update is rounded upward
    with ``math.nextafter``. No ``fesetround`` (unsound with threaded BLAS).

An ``Approx`` is a float64 tensor ``mid`` with two scalars: ``rad`` bounds ``|mid - exact|``
entrywise, ``mag`` bounds ``max(|mid|, |exact|)`` entrywise. Magnitudes are propagated analytically
(O(1) scalar work per tensor operation, not counted as FLOPs, like the paper's uncounted
Python-level work), so rigour costs no extra tensor passes. The checker's final decisions go
through ``proven_negative``.

Every tensor operation adds its cost to the ``FlopLedger`` with the paper's rules (§10.2).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.core.ledger import FlopLedger

U = 2.0**-53
EXP_REL_ERR = 4 * U
LOG_REL_ERR = 4 * U
ETA = 2.0**-1021  # absolute underflow error of one product or quotient (even with flush-to-zero)
TAU = 2.0**-1021  # absolute underflow error of one exp (covers flush-to-zero)
_INF = math.inf
EXP_MAX_ARG = 709.0  # math.exp overflows a little above 709.78


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
    """Upper bound on the exact product of non-negative floats (bounds of non-negative reals:
    a zero factor bounds its real by 0, so the product is 0 even beside an infinite bound)."""
    if 0.0 in factors:
        return 0.0
    prod = 1.0
    for f in factors:
        prod = _up(prod * f)
    return prod


def _grow(mag: float, rel: float) -> float:
    """A magnitude bound that also covers the rounded value: mag (1 + rel)."""
    return up_mul(mag, _up(1.0 + rel))


def _down(x: float) -> float:
    """Round a Python float (already within 1/2 ulp of the true value) downward."""
    return math.nextafter(x, -_INF)


def _inv_one_minus(x: float) -> float:
    """Upper bound on 1 / (1 - x) for a float 0 <= x < 1."""
    return _up(1.0 / _down(1.0 - x))


def _exp_up(x: float) -> float:
    """Upper bound on e^x (libm ``exp`` assumed accurate to 4 ulp, like torch's, plus TAU where
    it may underflow); +inf past float64's range (the bound is then vacuous, and so is every
    radius built on it)."""
    if x >= EXP_MAX_ARG:
        return _INF
    bound = up_mul(math.exp(x), 1.0 + EXP_REL_ERR)
    return up_sum(bound, TAU) if x < 0 else bound


def _expm1_up(x: float) -> float:
    """Upper bound on e^x - 1 for x >= 0 (+inf past float64's range, as ``_exp_up``)."""
    if x <= 0:
        return 0.0
    return up_mul(math.expm1(x), 1.0 + EXP_REL_ERR) if x < EXP_MAX_ARG else _INF


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

    def __post_init__(self) -> None:
        if self.mid.dtype != torch.float64:
            raise TypeError(f"Approx needs a float64 tensor, not {self.mid.dtype}")
        # A NaN bound (from NaN or infinite inputs) is no bound: make it +inf, so that no
        # comparison and no Python max() (which may drop a NaN argument) can lose it.
        for name in ("rad", "mag"):
            if getattr(self, name) != getattr(self, name):
                object.__setattr__(self, name, _INF)
        # No magnitude bound, no error bound: where |value| may exceed float64's range, the
        # float result may have overflowed (a sum of n terms each below mag can round past
        # DBL_MAX), and no finite radius covers an infinite mid.
        if self.mag == _INF:
            object.__setattr__(self, "rad", _INF)

    @property
    def shape(self) -> torch.Size:
        return self.mid.shape

    def __getitem__(self, index) -> "Approx":
        """Indexing/reshaping is free and keeps the (uniform) bounds."""
        return Approx(self.mid[index], self.rad, self.mag)

    def map_layout(self, fn) -> "Approx":
        """Apply a pure layout function (transpose, reshape, flip, expand, gather) to ``mid``."""
        return Approx(fn(self.mid), self.rad, self.mag)


def _times_exact_zero(mid: Tensor, a: Approx, b: Approx) -> Tensor:
    """A product's ``mid``, exactly 0 where a factor is exactly zero (mag 0: then its mid is 0
    too): the float product would be NaN beside an overflowed (infinite) mid of the other."""
    return torch.zeros_like(mid) if a.mag == 0 or b.mag == 0 else mid


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
        mid = _times_exact_zero(a.mid * b.mid, a, b)
        self.ledger.add(mid.numel(), label=label)
        mag = up_mul(a.mag, b.mag)
        rad = up_sum(
            up_mul(a.rad, b.mag), up_mul(b.rad, a.mag), up_mul(a.rad, b.rad), up_mul(U, mag), ETA
        )
        return Approx(mid, rad, _grow(mag, U))

    def scale(self, a: Approx, c: float, label: str = "scale") -> Approx:
        """Multiply by an exactly representable scalar ``c``."""
        mid = torch.zeros_like(a.mid) if c == 0 else a.mid * c  # 0 * inf would be NaN
        self.ledger.add(mid.numel(), label=label)
        mag = up_mul(a.mag, abs(c))
        return Approx(mid, up_sum(up_mul(a.rad, abs(c)), up_mul(U, mag), ETA), _grow(mag, U))

    def divide_by_real(self, a: Approx, c: float, c_rel_err: float, label: str = "div") -> Approx:
        """Divide by a positive real known as the float ``c`` with relative error <= ``c_rel_err``.

        Proof: exact/c_true with c_true = c (1 + e), |e| <= c_rel_err, and
        |1/(1+e) - 1| <= c_rel_err / (1 - c_rel_err) =: rel.
        """
        if not c > 0:
            raise ValueError("divisor must be positive")
        if not 0 <= c_rel_err < 1:
            raise ValueError("the divisor's relative error must be in [0, 1)")
        mid = a.mid / c
        self.ledger.add(mid.numel(), label=label)
        rel = _up(c_rel_err / (1.0 - c_rel_err))
        mag = up_mul(_up(a.mag / c), 1.0 + rel)
        rad = up_sum(up_mul(_up(a.rad / c), 1.0 + rel), up_mul(rel, mag), up_mul(U, mag), ETA)
        return Approx(mid, rad, _grow(mag, U))

    def matmul(self, a: Approx, b: Approx, label: str = "matmul") -> Approx:
        """``a @ b`` for 2-D (or batched) operands with inner size n.

        Error: |fl(AB) - A_ex B_ex| <= gamma_n n mag_A mag_B + n (r_A mag_B + r_B mag_A + r_A r_B)
        + n ETA (underflow of the n products).
        """
        mid = _times_exact_zero(a.mid @ b.mid, a, b)
        n = a.mid.shape[-1]
        self.ledger.add(mid.numel() * (2 * n - 1), label=label)
        mag = up_mul(n, a.mag, b.mag)
        prop = up_mul(n, up_sum(up_mul(a.rad, b.mag), up_mul(b.rad, a.mag), up_mul(a.rad, b.rad)))
        rad = up_sum(up_mul(gamma(n), mag), prop, up_mul(n, ETA))
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

    def cummax(self, a: Approx, dim: int, label: str = "max") -> Approx:
        """Running max along ``dim``: ``out[..., j, ...] = max_{i <= j} a[..., i, ...]``.

        Each output is the float max of a set of ``mid`` entries, hence within ``rad`` of the
        exact max over the same set. Cost: kept (n - 1), one comparison per step."""
        n = a.mid.shape[dim]
        mid = a.mid.cummax(dim).values
        self.ledger.add(mid.numel() // max(n, 1) * max(n - 1, 0), label=label)
        return Approx(mid, a.rad, a.mag)

    def cummin(self, a: Approx, dim: int, label: str = "min") -> Approx:
        """Running min along ``dim``, as ``cummax``."""
        n = a.mid.shape[dim]
        mid = a.mid.cummin(dim).values
        self.ledger.add(mid.numel() // max(n, 1) * max(n - 1, 0), label=label)
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
        return self.sort_indices(a, dim, descending, label)[0]

    def sort_indices(
        self, a: Approx, dim: int, descending: bool = False, label: str = "sort"
    ) -> tuple[Approx, Tensor]:
        """``sort`` with the sorting permutation (index work, free): values[i] = a[indices[i]]
        along ``dim``. Charged as ``sort``."""
        n = a.mid.shape[dim]
        out = a.mid.sort(dim=dim, descending=descending, stable=True)
        self.ledger.add((out.values.numel() // max(n, 1)) * max(n - 1, 0), label=label)
        return Approx(out.values, a.rad, a.mag), out.indices

    def amax_excluding(self, a: Approx, dim: int, exclude: Tensor, label: str = "max") -> Approx:
        """Max along ``dim`` over every index except the ``e`` indices in ``exclude``.

        ``exclude`` is an int64 tensor broadcastable to ``(*kept, e)`` where ``kept`` is ``a``'s
        shape without ``dim``. The result is the float max of a subset of ``mid`` entries, hence
        within ``rad`` of the exact max over the same subset. Cost: writing the e excluded
        entries plus a reduction over the n - e others: kept (n - 1), as ``amax``. Requires
        n > e (a non-empty subset).
        """
        n = a.mid.shape[dim]
        dim = dim % a.mid.ndim
        kept_shape = a.mid.shape[:dim] + a.mid.shape[dim + 1 :]
        e = exclude.shape[-1]
        if n <= e:
            raise ValueError("amax_excluding needs more entries than exclusions along dim")
        idx = exclude.to(torch.int64).expand(*kept_shape, e).movedim(-1, dim)
        mid = a.mid.scatter(dim, idx, -_INF).amax(dim)
        self.ledger.add(mid.numel() * (n - 1), label=label)
        return Approx(mid, a.rad, a.mag)

    def amax_leave_one_out(
        self, a: Approx, dim: int, exclude: Tensor | None = None, label: str = "max"
    ) -> Approx:
        """``out[..., j] = max_{i != j, i != e} a[..., i]`` along ``dim`` (same shape as ``a``),
        where the optional ``exclude`` gives one more excluded index e per kept entry
        (broadcastable to the kept shape); ``out[..., e]`` is then the max over i != e.

        Computed from the top two entries of each row (after writing -inf at e): ``out_j`` is
        the second-largest if ``a_j`` equals the largest, else the largest (ties at the top make
        both equal), i.e. exactly the float max over the same index set, so within ``rad`` of
        the exact one. Cost: kept (2n - 3) + 2 numel (top-two search, one comparison and one
        selection per entry); with ``exclude``, kept (1 + 2(n - 1) - 3) + 2 numel. Requires at
        least two remaining entries.
        """
        n = a.mid.shape[dim]
        dim = dim % a.mid.ndim
        mid_in = a.mid
        extra = 0
        if exclude is not None:
            kept_shape = a.mid.shape[:dim] + a.mid.shape[dim + 1 :]
            idx = exclude.to(torch.int64).expand(kept_shape).unsqueeze(dim)
            mid_in = a.mid.scatter(dim, idx, -_INF)
            extra = 1
        if n - extra < 2:
            raise ValueError("amax_leave_one_out needs at least two remaining entries along dim")
        top2 = mid_in.topk(2, dim=dim).values
        first = top2.narrow(dim, 0, 1)
        second = top2.narrow(dim, 1, 1)
        mid = torch.where(mid_in == first, second, first)
        kept = mid.numel() // n
        if exclude is None:
            self.ledger.add(kept * (2 * n - 3) + 2 * mid.numel(), label=label)
        else:
            self.ledger.add(kept * (2 * n - 4) + 2 * mid.numel(), label=label)
        return Approx(mid, a.rad, a.mag)

    def top_k(
        self, a: Approx, k: int, exclude: Tensor | None = None, label: str = "max"
    ) -> tuple[Approx, Tensor]:
        """The ``k`` largest entries of each row (last dim) in descending order, and their indices.

        The optional ``exclude`` (one index per row, broadcastable to the kept shape) is left
        out. The values are ``mid`` entries permuted, so the uniform bounds are unchanged; use
        ``first_not_excluded`` to turn them into maxima over index subsets. Cost: k passes of a
        max search, kept (k (n' - 1) - k (k - 1) / 2) with n' = n minus the exclusion. Requires
        n' >= k.
        """
        n = a.mid.shape[-1]
        mid = a.mid
        if exclude is not None:
            idx = exclude.to(torch.int64).expand(mid.shape[:-1]).unsqueeze(-1)
            mid = mid.scatter(-1, idx, -_INF)
            n -= 1
        if n < k:
            raise ValueError("top_k needs at least k remaining entries per row")
        top = mid.topk(k, dim=-1)
        kept = mid.numel() // max(a.mid.shape[-1], 1)
        self.ledger.add(kept * (k * (n - 1) - k * (k - 1) // 2), label=label)
        return Approx(top.values, a.rad, a.mag), top.indices

    def first_not_excluded(
        self, top: Approx, indices: Tensor, exclude: Tensor, label: str = "max"
    ) -> Approx:
        """Per row, the max over the indices not in ``exclude``, from ``top_k``'s output.

        ``top``/``indices`` are ``[..., k]`` (descending), ``exclude`` is ``[..., e]`` with
        e < k. The first candidate whose index is not excluded is that max: every earlier
        candidate is excluded, and every later candidate and every entry outside the top k is no
        larger. It is a float ``mid`` entry of the same index set, hence within ``rad`` of the
        exact max. Cost: one selection per row (FLOP) and k e index comparisons (integer ops).
        """
        k, e = top.mid.shape[-1], exclude.shape[-1]
        if e >= k:
            raise ValueError("first_not_excluded needs more candidates than exclusions")
        hit = (indices[..., :, None] == exclude[..., None, :]).any(-1)  # [..., k]
        first = (~hit).to(torch.int8).argmax(-1, keepdim=True)  # a free candidate exists
        mid = top.mid.gather(-1, first).squeeze(-1)
        self.ledger.add(mid.numel(), int_op=mid.numel() * k * e, label=label)
        return Approx(mid, top.rad, top.mag)

    def where(self, cond: Tensor, a: Approx, b: Approx, label: str = "where") -> Approx:
        """Elementwise selection by a boolean tensor fixed by the checker's control flow.

        Selection copies values, so the result is within max(rad_a, rad_b) of the exact selection.
        Cost: one per output element (the paper's ``__setitem__`` rule).
        """
        mid = torch.where(cond, a.mid, b.mid)
        self.ledger.add(mid.numel(), label=label)
        return Approx(mid, max(a.rad, b.rad), max(a.mag, b.mag))

    @staticmethod
    def stack(parts: list[Approx], dim: int) -> Approx:
        """Stack along a new ``dim``; pure layout, free. Bounds: the maxima over the parts."""
        mid = torch.stack([p.mid for p in parts], dim=dim)
        return Approx(mid, max(p.rad for p in parts), max(p.mag for p in parts))

    @staticmethod
    def cat(parts: list[Approx], dim: int) -> Approx:
        """Concatenate along ``dim``; pure layout, free. Bounds: the maxima over the parts."""
        mid = torch.cat([p.mid for p in parts], dim=dim)
        return Approx(mid, max(p.rad for p in parts), max(p.mag for p in parts))

    def logsumexp(self, a: Approx, dim: int, label: str = "logsumexp") -> Approx:
        """``log sum_j exp(a_j)`` along ``dim``, with a rigorous absolute radius.

        Claim: |out - lse(a_ex)| <= rad whenever |a_mid - a_ex| <= r entrywise.
        Proof: (1) lse is 1-Lipschitz in the sup norm, so |lse(a_ex) - lse(a_mid)| <= r.
        (2) lse(a_mid) = M + log S with M = max a_mid (exact) and S = sum exp(a_j - M) in [1, n].
        The float computation: d_j = fl(a_j - M), |d_j - (a_j - M)| <= 2 u mag =: eps;
        e_j = exp(d_j)(1 + x_j) + t_j (|x_j| <= 4u, |t_j| <= TAU); S^ = fl(sum e) with
        |th_i| <= gamma_n. As S >= 1, S^ / S lies in [1/R, R] with
        R = e^eps (1 + 4u)(1 + gamma_n) / ((1 - 4u)(1 - gamma_n)(1 - u)) (the last factor absorbing
        n TAU <= u), so |log S^ - log S| <= log R. (3) L^ = fl(log S^) has relative error
        <= 4u and |log S^| <= log n + log R. (4) out = fl(M + L^) adds u (mag + log n + log R + 1).
        Sum (1)-(4).                                                                      QED
        Cost (paper rules): max-reduce, subtract, exp, sum, log, add: 2 kept (n - 1) + 2 numel +
        2 kept.
        """
        n = a.mid.shape[dim]
        top = a.mid.amax(dim, keepdim=True)
        total = torch.exp(a.mid - top).sum(dim, keepdim=True)
        mid = (torch.log(total) + top).squeeze(dim)
        kept = mid.numel()
        self.ledger.add(2 * kept * (n - 1) + 2 * a.mid.numel() + 2 * kept, label=label)
        eps = up_mul(2.0, U, a.mag)
        g = gamma(max(n, 1))
        ratio = up_mul(
            _exp_up(eps),
            1.0 + EXP_REL_ERR,
            1.0 + g,
            _inv_one_minus(EXP_REL_ERR),
            _inv_one_minus(g),
            _inv_one_minus(U),
        )
        log_ratio = _up(ratio - 1.0)  # log R <= R - 1
        log_n = up_mul(math.log(n), 1.0 + LOG_REL_ERR) if n > 1 else 0.0
        log_s = up_sum(log_n, log_ratio)  # >= |log S^|
        out_mag = up_sum(a.mag, log_s)
        rad = up_sum(
            a.rad,
            log_ratio,
            up_mul(LOG_REL_ERR, log_s),
            up_mul(U, up_sum(out_mag, up_mul(LOG_REL_ERR, log_s))),
        )
        return Approx(mid, rad, up_sum(out_mag, rad))

    def softmax(self, scores: Approx, dim: int, label: str = "softmax") -> Approx:
        """Softmax along ``dim`` with a rigorous absolute radius on the probabilities.

        Claim: if |s_mid - s_ex| <= r entrywise, the result p has |p - softmax(s_ex)| <= rad.
        Proof: (1) softmax(s_ex)_j = q_j rho_j with q = softmax(s_mid) (exact) and
        rho_j in [e^{-2r}, e^{2r}] (numerator and denominator each move by a factor in
        [e^{-r}, e^{r}]), so the exact-input error is <= q_j (e^{2r} - 1).
        (2) The float computation is explicit: M = max s_mid (exact), d_j = fl(s_j - M) with
        |d_j - (s_j - M)| <= u |s_j - M| <= 2 u mag =: eps; e_j = exp(d_j)(1 + x_j) + t_j with
        |x_j| <= 4u, |t_j| <= TAU (underflow); S = fl(sum e) = sum e_i (1 + th_i) with
        |th_i| <= gamma_n; p_j = fl(e_j / S) = e_j / S (1 + y), |y| <= u. The exact sum of
        exp(s_i - M) is >= 1 (its largest term is exp(0)), so each t_i perturbs S by a relative
        n TAU <= u, and p_j / q_j lies
        in [1/R, R] up to the absolute t_j / S <= 2 TAU, with
        R = e^{2 eps} (1 + 4u)(1 + u) / ((1 - 4u)(1 - gamma_n)(1 - u)); since 1 - 1/R <= R - 1,
        |p_j - q_j| <= q_j (R - 1) + 2 TAU. (3) Sum (1) and (2) with q_j <= 1.             QED
        Cost (paper rules): max-reduce, subtract, exp, sum, divide.
        """
        n = scores.mid.shape[dim]
        top = scores.mid.amax(dim, keepdim=True)
        e = torch.exp(scores.mid - top)
        mid = e / e.sum(dim, keepdim=True)
        kept = mid.numel() // max(n, 1)
        self.ledger.add(kept * (n - 1) * 2 + 3 * mid.numel(), label=label)
        eps = up_mul(2.0, U, scores.mag)
        ratio = up_mul(
            _exp_up(up_mul(2.0, eps)),
            1.0 + EXP_REL_ERR,
            1.0 + U,
            _inv_one_minus(EXP_REL_ERR),
            _inv_one_minus(gamma(max(n, 1))),
            _inv_one_minus(U),
        )
        rel_fp = _up(ratio - 1.0)
        rel_in = _expm1_up(up_mul(2.0, scores.rad))
        rad = up_sum(rel_in, rel_fp, up_mul(2.0, TAU))
        return Approx(mid, rad, _grow(1.0, rad))

    def exp_shifted(self, scores: Approx, dim: int, label: str = "softmax") -> Approx:
        """``w_j = exp(s_j - M)`` along ``dim``, M = max_j of the float ``mid`` (a fixed float):
        ``exp_nonpositive(shift_by_max(scores))``.

        The exact target is exp(s_ex_j - M) = exp(s_ex_j) / exp(M): softmax weights without the
        division, up to a positive factor per row, so the sign of sum_j w_j v_j is the sign of
        sum_j exp(s_j) v_j. Values lie in (0, 1] (up to rad), so products with them keep small
        radii. Radius expm1(r + eps) + 4u + TAU (the two steps' claims).
        Cost (paper rules): max-reduce, subtract, exp: kept (n - 1) + 2 numel.
        """
        return self.exp_nonpositive(self.shift_by_max(scores, dim, label=label)[0], label=label)

    def shift_by_max(
        self, scores: Approx, dim: int, label: str = "softmax"
    ) -> tuple[Approx, Tensor]:
        """``d_j = fl(s_j - M)`` along ``dim`` and M (keepdim), the max of the float ``mid``
        along ``dim`` (exact floats).
        Claim: d_j <= 0 and |d_j - (s_ex_j - M)| <= r + eps, eps = 2 u mag, if
        |s_mid - s_ex| <= r entrywise.
        Proof: the float difference s_j - M is <= 0 and rounding keeps the sign;
        |d_j - (s_j - M)| <= u |s_j - M| <= 2 u mag.                                          QED
        Cost: kept (n - 1) + numel (max-reduce, subtract)."""
        n = scores.mid.shape[dim]
        top = scores.mid.amax(dim, keepdim=True)
        d = scores.mid - top
        self.ledger.add(d.numel() // max(n, 1) * (n - 1) + d.numel(), label=label)
        rad = up_sum(scores.rad, up_mul(2.0, U, scores.mag))
        return Approx(d, rad, up_sum(_grow(up_mul(2.0, scores.mag), U), rad)), top

    def exp_nonpositive(self, d: Approx, label: str = "softmax") -> Approx:
        """``exp(d)`` for ``d.mid <= 0`` (as from ``shift_by_max``, or a max / min of it).
        Claim: |w - exp(d_ex)| <= expm1(r) + 4u + TAU =: rad, and both are <= 1 + rad.
        Proof: w = exp(d)(1 + x) + t with |x| <= 4u, |t| <= TAU. With d_ex = d + delta,
        |delta| <= r: |w - exp(d + delta)| <= exp(d) |1 + x - e^delta| + TAU
        <= expm1(r) + 4u + TAU, using exp(d) <= 1 and 1 - e^-y <= e^y - 1.                  QED
        Cost: numel."""
        if bool((d.mid > 0).any()):
            raise ValueError("exp_nonpositive needs mid <= 0")
        self.ledger.add(d.mid.numel(), label=label)
        rad = up_sum(_expm1_up(d.rad), EXP_REL_ERR, TAU)
        return Approx(torch.exp(d.mid), rad, _grow(1.0, rad))

    # -- decisions ------------------------------------------------------------------------------
    def upper(self, a: Approx, label: str = "decide") -> Tensor:
        """Rigorous upper bounds on the exact values: nextafter(mid + rad, +inf). NaN stays NaN."""
        self.ledger.add(a.mid.numel(), label=label)
        return torch.nextafter(a.mid + a.rad, torch.tensor(_INF, dtype=torch.float64))

    def upper_exact(self, a: Approx, label: str = "decide") -> Approx:
        """``upper(a)`` as an exactly known Approx (rad 0): floats that bound the exact values
        from above, to be used where an upper bound suffices (e.g. a positive weight times a
        value). |upper| <= (mag + rad)(1 + 2u) + ETA covers the rounding of mid + rad and the
        one-ulp step. Cost: as ``upper``."""
        up = self.upper(a, label=label)
        return Approx(up, 0.0, up_sum(_grow(up_sum(a.mag, a.rad), 2 * U), ETA))

    def lower(self, a: Approx, label: str = "decide") -> Tensor:
        self.ledger.add(a.mid.numel(), label=label)
        return torch.nextafter(a.mid - a.rad, torch.tensor(-_INF, dtype=torch.float64))

    def proven_negative(self, a: Approx, label: str = "decide") -> Tensor:
        """Boolean tensor: the exact value is certainly < 0 (NaN is never proven).

        Claim: mid < -rad implies exact < 0. Proof: -rad is an exact float and the comparison
        of two floats is exact, so mid + rad < 0 as reals, and exact <= mid + rad. NaN (mid or
        rad) compares false.                                                             QED
        Cost: one comparison per entry."""
        self.ledger.add(a.mid.numel(), label=label)
        return a.mid < -a.rad

    def proven_positive(self, a: Approx, label: str = "decide") -> Tensor:
        """Boolean tensor: the exact value is certainly > 0: mid > rad (as ``proven_negative``,
        mirrored). Cost: one comparison per entry."""
        self.ledger.add(a.mid.numel(), label=label)
        return a.mid > a.rad
