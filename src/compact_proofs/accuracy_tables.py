"""Factorised float64 tables of the exact forward pass and their rigorous rounding-error constants,
shared by the exact accuracy (``accuracy``) and the sampled estimate (``accuracy_sampled``).

Shape glossary: ``d_vocab`` (V) tokens; ``n_ctx`` (n) positions (the last one holds the query
token q); ``batch`` inputs. Exact model (zero biases, reference-algorithms §4), with
``s = sqrt(d_head)`` and ``A[q, p, k, x] = EUPU[q, x] + PVOU[p, x] + EVOU[k, x]``:

    S[q, p, k] = (EQKE[q, k] + EQKP[q, p]) / s                (score of key token k at position p)
    logit(x)   = sum_p alpha_p A[q, p, t_p, x],   alpha = softmax_p(S[q, p, t_p])

so for any constant c, ``Z (logit(m) - logit(x)) = sum_p w_p (A_p[m] - A_p[x])`` with
``w_p = exp(S[q, p, t_p] - c)`` and ``Z = sum_p w_p``: every quantity is a sum of per-position
terms, which the exact enumeration exploits.

Arithmetic model (as in ``core.rigorous``): IEEE binary64/binary32 round-to-nearest with unit
roundoffs v = 2^-53 and u = 2^-24; a dot product or sum of n terms in any order (FMA or not) is
within ``gamma_n sum |terms|`` of the exact value, gamma_n = n u / (1 - n u). ``torch.exp`` in
float64 is assumed accurate to 4 ulp (relative error <= 4 v) for normal results: torch's CPU
kernel is SLEEF ``Sleef_expd*_u10`` (documented max error 1.0 ulp) on the vectorised path and
glibc ``exp`` (< 1 ulp) otherwise; Python's ``math.exp``/``math.expm1`` (glibc) likewise.
Underflow and flush-to-zero are covered by an absolute error of at most ``TAU`` (2^-125 in float32,
``TAU64`` in float64) per rounded operation.
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from compact_proofs.core import circuits as circuits_mod
from compact_proofs.core.rigorous import EXP_MAX_ARG, EXP_REL_ERR, Ops, U, gamma, up_mul, up_sum
from compact_proofs.errors import UnsupportedModelError
from compact_proofs.weights import Weights

V64 = U  # float64 unit roundoff, 2^-53
U32 = 2.0**-24  # float32 unit roundoff
TAU = 2.0**-125  # absolute error of one float32 operation under underflow / flush-to-zero
TAU64 = 2.0**-1000  # same for float64 (far above 2^-1022, so it also covers flush-to-zero)
NEG_INF = float("-inf")


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


def _down(x: float) -> float:
    return math.nextafter(x, -math.inf)


def gamma32(n: int) -> float:
    """Upper bound on gamma_n for float32 arithmetic (u = 2^-24)."""
    if n * U32 >= 0.5:
        raise ValueError("float32 summation too long for the gamma_n bound")
    return _up(_up(n * U32) / _down(1.0 - n * U32))


def _recip_up(denom: float) -> float:
    """Upper bound on 1 / denom for a lower bound ``denom`` of a positive number; +inf when
    ``denom <= 0`` (the weight error rho >= 1: the float tests built on it then decide nothing,
    see ``screen_constants``)."""
    return _up(1.0 / denom) if denom > 0 else math.inf


def exp_up(x: float) -> float:
    """Upper bound on e^x (math.exp assumed accurate to 4 ulp)."""
    return up_mul(math.exp(x), 1.0 + 8 * V64)


def f32_up(x: float) -> float:
    """The smallest float32 value >= x (as a Python float)."""
    f = float(torch.tensor(x, dtype=torch.float32))
    if f < x:
        f = float(torch.nextafter(torch.tensor(f, dtype=torch.float32), torch.tensor(math.inf)))
    return f


@dataclass(frozen=True)
class Tables:
    """Float64 tables of the exact model with uniform rigorous error radii.

    ``S`` is the computed score ``fl(fl(EQKE + EQKP) / s)``; ``A~`` (never stored whole) is
    ``fl(fl(EU[q, x] + PVOU[p, x]) + EVOU[k, x])`` in exactly that order, everywhere.
    """

    S: Float[Tensor, "d_vocab n_ctx d_vocab"]  # [q, p, k]
    EU: Float[Tensor, "d_vocab d_vocab"]  # [q, x]
    EVOU: Float[Tensor, "d_vocab d_vocab"]  # [k, x]
    PVOU: Float[Tensor, "n_ctx d_vocab"]  # [p, x]
    dS: float  # |S~ - S_exact| <= dS entrywise
    magS: float  # >= max |S~|
    dA: float  # |A~ - A_exact| <= dA entrywise
    magA: float  # >= max(|A~|, |A_exact|) entrywise

    @property
    def d_vocab(self) -> int:
        return int(self.EU.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.PVOU.shape[0])

    def A_rows(self, q: Int[Tensor, " batch"], p: Int[Tensor, " batch"], k: Int[Tensor, " batch"]):
        """``A~[q, p, k, :]`` for index tensors of equal shape (float64, ``[*shape, d_vocab]``)."""
        return (self.EU[q] + self.PVOU[p]) + self.EVOU[k]


def tables_flops(V: int, n: int, d: int, dh: int) -> int:
    """Closed form of the ledger total of ``build_tables``."""
    return circuits_mod.circuits_flops(V, n, d, dh) + (
        2 * V * n * V  # S: add, divide
        + (2 * V * n * V - 1)  # max |S|: abs, reduce
        + (2 * V * V - 1)  # max |EU|
        + (2 * V * V - 1)  # max |EVOU|
        + (2 * n * V - 1)  # max |PVOU|
    )


def build_tables(weights: Weights, ops: Ops) -> Tables:
    """Compute the tables through counted rigorous ops (costs go to ``ops.ledger``)."""
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    c = circuits_mod.circuits(weights, ops)
    summed = ops.add(
        c.EQKE.map_layout(lambda t: t[:, None, :].expand(V, n, V)),
        c.EQKP.map_layout(lambda t: t[:, :, None].expand(V, n, V)),
        label="accuracy-tables",
    )
    scale = math.sqrt(cfg.d_head)  # correctly rounded: relative error <= v (0 if exact)
    scale_err = 0.0 if scale * scale == cfg.d_head and scale == int(scale) else V64
    S = ops.divide_by_real(summed, scale, scale_err, label="accuracy-tables")

    def maxabs(t: Tensor) -> float:
        ops.ledger.add(2 * t.numel() - 1, label="accuracy-tables")
        return float(t.abs().max())

    magS = maxabs(S.mid)
    mEU, mEV, mPV = maxabs(c.EUPU.mid), maxabs(c.EVOU.mid), maxabs(c.PVOU.mid)
    total = up_sum(mEU, mEV, mPV)
    dA = up_sum(c.EUPU.rad, c.EVOU.rad, c.PVOU.rad, up_mul(gamma(2), total))
    magA = up_sum(up_mul(total, 1.0 + gamma(2)), dA)
    return Tables(
        S=S.mid.contiguous(),
        EU=c.EUPU.mid.contiguous(),
        EVOU=c.EVOU.mid.contiguous(),
        PVOU=c.PVOU.mid.contiguous(),
        dS=S.rad,
        magS=_up(magS),
        dA=dA,
        magA=magA,
    )


def _weight_rel_err(t: Tables) -> tuple[float, float]:
    """(delta_e, rho): |fl64(S~ - c) - (S - c)| <= delta_e for a float constant c with
    |S~ - c| <= 2 magS + 64 (true for c = max S~ and for the shifts of ``shift_headroom``), and
    the float64 weight w~ = exp(fl64(S~ - c)) satisfies |w~ - w| <= rho w + TAU64 for
    w = exp(S - c): (1 + 4v) e^delta_e - 1 <= rho."""
    delta_e = up_sum(t.dS, up_mul(V64, up_sum(2.0 * t.magS, 64.0)))
    if delta_e >= EXP_MAX_ARG:  # no float64 bound: rho = +inf makes every float test vacuous
        return delta_e, math.inf
    rho = up_sum(
        _up(math.expm1(delta_e) * (1 + 8 * V64)), EXP_REL_ERR, up_mul(EXP_REL_ERR, exp_up(delta_e))
    )
    return delta_e, rho


def shift_headroom(t: Tables) -> float:
    """Largest allowed exp(S - c) exponent in the float32 screen: every |B32| and every float32
    sum of n of them stays below 2^126 (no overflow), and |S~ - c| <= 2 magS + 64."""
    return max(0.0, min(60.0, 80.0 - math.log(4.0 * t.n_ctx * max(t.magA, 1.0))))


@dataclass(frozen=True)
class ScreenConstants:
    """Float32-representable constants of the screening test (see ``screen_constants``)."""

    K1: float
    K0: float


def screen_constants(t: Tables) -> ScreenConstants:
    """Constants of the float32 screening test used by the exact enumeration.

    Claim: fix a query q and a float shift c_q with |S~[q] - c_q| <= 2 magS + 64; let
    w64 = fl64(exp(fl64(S~ - c_q))), B32_p[k, x] = fl32(fl64(w64[p, k] A~_p[k, x])) and
    w32 = fl32(w64). For an input with max m let N~[x] be ANY float32 summation (any order) of
    the n terms B32_p[t_p, x], R~ the max of N~[x] over x != m, marg~ = fl32(N~[m] - R~), Zp~ a
    float32 summation of n - 1 of the w32_p, Zc~ the remaining one, and
    thr~ = fl32(fl32(fl32(Zp~ K1) + K0) + fl32(Zc~ K1)). Then marg~ > thr~ implies the input is
    correct (logit(m) > logit(x) for all x != m, exactly) and marg~ < -thr~ that it is not.

    Proof: with w_p = exp(S_p - c_q) (exact) and Z = sum_p w_p:
      (1) |w64 - w| <= rho w + TAU64 (``_weight_rel_err``); |A~ - A| <= dA; |A~|, |A| <= magA.
      (2) |B32 - wA| <= |w64 A~ - wA| + |B32 - w64 A~| <= w eta + 2 TAU with
          eta = rho magA + dA + (u + v + uv)(1 + rho) magA, and |B32| <= w beta + TAU with
          beta = (1 + rho)(1 + v)(1 + u) magA (TAU64 magA and float64 underflow are < TAU as
          magA < 2^100).
      (3) The float32 summation adds <= gamma32_{n-1} sum|B32| + (n - 1) TAU, so
          |N~[x] - N[x]| <= Z E1 + E0 with E1 = eta + gamma32_{n-1} beta and E0 = 3 n TAU.
      (4) A max is exact, so |(N~[m] - R~) - (N[m] - R)| <= 2 (Z E1 + E0); the float32
          subtraction gives |marg~ - (N~[m] - R~)| <= u |marg~| / (1 - u) (exact if subnormal).
      (5) w32 >= w (1 - rho)(1 - u) - 2 TAU and Zp~ + Zc~ >= (1 - gamma32_{n-1}) sum w32
          - (n - 1) TAU, so Z <= zeta1 (Zp~ + Zc~ + 3 n TAU), zeta1 = 1/((1-gamma)(1-rho)(1-u)).
      (6) Hence N[m] - R >= marg~ (1 - 2u) - need (and <= marg~ (1 - 2u)... + need for marg~ < 0)
          with need = 2 E1 zeta1 (Zp~ + Zc~) + (6 n TAU E1 zeta1 + 2 E0).
      (7) K1 and K0 are twice the coefficients of need / (1 - 2u), rounded up to float32; the
          three float32 roundings in thr~ lose at most a factor (1 - u)^3 and 4 TAU, which the
          factor 2 covers as need >= 12 TAU. So marg~ > thr~ gives N[m] - R > 0, i.e.
          Z (logit(m) - max_{x != m} logit(x)) > 0 with Z > 0; symmetrically for < -thr~.  QED
    Step (5) needs rho < 1. Otherwise (scores too large for float64 to resolve their softmax)
    K1 = K0 = +inf: thr~ is +inf or NaN (0 inf), both tests are false for every input, and the
    enumeration decides every input exactly. That relies on every caller testing strictly
    (``marg > thr``, ``marg < -thr``): never write such a test as the negation of ``<=``.
    """
    n = t.n_ctx
    if t.magA > 2.0**100 or t.magS > 2.0**100:
        raise UnsupportedModelError(
            "the model's attention scores or logit terms exceed 2^100 in magnitude: the exact"
            " enumeration's error bounds do not cover them (the cubic, subcubic and adaptive proofs"
            " may still bound the accuracy)"
        )
    _, rho = _weight_rel_err(t)
    g = gamma32(max(n - 1, 1))
    uvw = up_sum(U32, V64, up_mul(U32, V64))
    eta = up_sum(up_mul(rho, t.magA), t.dA, up_mul(uvw, 1.0 + rho, t.magA))
    beta = up_mul(1.0 + rho, 1.0 + V64, 1.0 + U32, t.magA)
    E1 = up_sum(eta, up_mul(g, beta))
    E0 = up_mul(3 * n, TAU)
    denom = _down(_down(_down(1.0 - g) * _down(1.0 - rho)) * (1.0 - U32))
    zeta1 = _recip_up(denom)
    if math.isinf(zeta1):  # (5) fails: no threshold is rigorous, so none decides anything
        return ScreenConstants(K1=math.inf, K0=math.inf)
    h = 1.0 - 2 * U32  # exact
    k1 = _up(up_mul(2.0, E1, zeta1) / h)
    k0 = _up(up_sum(up_mul(6 * n, TAU, E1, zeta1), up_mul(2.0, E0)) / h)
    return ScreenConstants(K1=f32_up(2 * k1), K0=f32_up(2 * k0))


@dataclass(frozen=True)
class F64Constants:
    """Constants of the per-input float64 test (see ``eval_batch``)."""

    E1: float
    E0: float
    zeta1: float
    n: int


def f64_constants(t: Tables) -> F64Constants:
    """Per-input float64 error constants (proof as in ``screen_constants``, float64 throughout).

    With the per-input shift c = max_p S~_p, w~ = exp(fl(S~ - c)) and N~[x] = fl(sum_p w~_p A~_p[x])
    (any order, FMA or not): |N~[x] - N[x]| <= Z E1 + E0, E1 = rho magA + dA + gamma_n (1+rho) magA,
    E0 = 3 n TAU64 (magA + 1); and Z <= zeta1 (Z~ + 2 n TAU64) for Z~ = fl(sum_p w~_p),
    zeta1 = 1/((1 - gamma_{n-1})(1 - rho)), or +inf when rho >= 1 (the bound on Z fails: then
    ``need`` is +inf or NaN, and neither test of ``BatchEval`` holds, as both are strict).
    """
    n = t.n_ctx
    _, rho = _weight_rel_err(t)
    E1 = up_sum(up_mul(rho, t.magA), t.dA, up_mul(gamma(n), 1.0 + rho, t.magA))
    E0 = up_mul(3 * n, TAU64, t.magA + 1.0)
    denom = _down(_down(1.0 - gamma(max(n - 1, 1))) * _down(1.0 - rho))
    return F64Constants(E1=E1, E0=E0, zeta1=_recip_up(denom), n=n)


@dataclass(frozen=True)
class BatchEval:
    """Float64 evaluation of a batch of inputs (per-input shift, so Z~ >= 1 - 4v)."""

    diff: Float[Tensor, "batch d_vocab"]  # fl(N~[m] - N~[x]); +inf at x = m
    need: Float[Tensor, " batch"]  # |diff - exact| < need, scaled so the test below is rigorous
    Z: Float[Tensor, " batch"]  # Z~ = fl(sum_p w~_p)
    m: Int[Tensor, " batch"]

    def positive(self) -> Tensor:
        """Entries whose exact value is certainly > 0 (x = m counts as positive, whatever
        ``need``: it may be +inf or NaN, see ``f64_constants``)."""
        at_m = torch.arange(self.diff.shape[1])[None, :] == self.m[:, None]
        return (self.diff * (1 - 2 * V64) > self.need[:, None]) | at_m

    def negative(self) -> Tensor:
        return self.diff * (1 - 2 * V64) < -self.need[:, None]


def eval_batch(t: Tables, consts: F64Constants, tokens: Int[Tensor, "batch n_ctx"]) -> BatchEval:
    """Float64 per-input evaluation with a rigorous per-input error bound.

    Claim: for every input b and x != m, the exact N[m] - N[x] (per-input shift c_b) is > 0 where
    ``positive()`` holds and < 0 where ``negative()`` holds.
    Proof: |diff~ - (N~[m] - N~[x])| <= v |diff~| / (1 - v) and |N~ - N| <= Z E1 + E0 with
    Z <= zeta1 (Z~ + 2 n TAU64) (``f64_constants``); ``need`` is twice 2 (zeta1 (Z~ + 2n TAU64) E1
    + E0), the factor 2 covering the float64 rounding of its own computation (relative 4v), and
    diff~ (1 - 2v) > need then gives exact > 0.                                          QED
    Cost: about 3 n V per input (not used on the hot path of the enumeration).
    """
    n = t.n_ctx
    tokens = tokens.to(torch.int64)
    B = tokens.shape[0]
    q = tokens[:, -1]
    m = tokens.max(dim=1).values
    pos = torch.arange(n).expand(B, n)
    s = t.S[q[:, None], pos, tokens]  # [B, n]
    w = torch.exp(s - s.max(dim=1, keepdim=True).values)
    # A~ = fl(fl(EU[q] + PVOU[p]) + EVOU[t_p]), the order of ``Tables.A_rows``, via row gathers
    A = t.EU.index_select(0, q)[:, None, :] + t.PVOU[None, :, :]
    A += t.EVOU.index_select(0, tokens.reshape(-1)).view(B, n, -1)  # [B, n, V]
    N = torch.einsum("bp,bpx->bx", w, A)
    Nm = N.gather(1, m[:, None])
    diff = Nm - N
    diff.scatter_(1, m[:, None], math.inf)
    Z = w.sum(dim=1)
    c = consts
    need = ((Z + 2 * n * TAU64) * (2 * c.zeta1 * c.E1) + 2 * c.E0) * 2.0
    return BatchEval(diff=diff, need=need, Z=Z, m=m)


def eval_flops(batch: int, n: int, V: int) -> int:
    """Ledger cost of ``eval_batch`` plus the sign tests, charged to the re-check label."""
    per = (
        (n - 1)  # max of scores
        + 2 * n  # subtract, exp
        + 2 * n * V  # two adds for A rows
        + V * (2 * n - 1)  # N = w . A
        + V  # diff
        + (n - 1)  # Z
        + 4  # need
        + 4 * V  # positive / negative tests
    )
    return batch * per
