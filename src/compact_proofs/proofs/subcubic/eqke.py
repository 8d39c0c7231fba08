"""Attention-error handling (reference-algorithms §8.4): one component per mode, each producing a
dense approximation A of the token part of the attention score and a bound eps on the row
differences of the residual, valid whatever directions the (untrusted) search supplied.

Notation: E_q = W_E + W_pos[n-1] (query side), Pbar = fl(sum_p W_pos[p]) * fl(1/n) (any fixed
vector works), Ebar = W_E + Pbar (key side), Phat = W_pos - Pbar. Exactly (zero biases)
    score(p) = EQKE[q, t_p] + POS[q, p],  EQKE = E_q Q K^T Ebar^T,  POS = E_q Q K^T Phat^T.

Claim (every mode): the returned ``A`` [d_vocab_q, d_vocab_k] and ``eps`` ([d_vocab_q] or [1])
satisfy, for the residual Res = EQKE - A (exact reals), for every row q and columns i, j:
    |Res[q, i] - Res[q, j]| <= eps[q]                                                   (*)
Proof, per family:
  (a) factored modes (svd, max_diff, mean+max_diff, max_diff_exact): EQKE = Af Bf with
      Af = E_q (Q K^T) [V, d], Bf = Ebar^T [d, V]. For ANY vectors u, v (the search's singular
      directions, never assumed exact) put y = u^T Af, z = Bf v, A0 = u y^T, B0 = z v^T,
      Ar = Af - A0, Br = Bf - B0. Then EQKE = A0 Bf + Af B0 - A0 B0 + Ar Br identically, and
      A0 Bf = u (y^T Bf), Af B0 = (Af z) v^T, A0 B0 = (y.z) u v^T = (u^T Af z) u v^T. We set
      A = u (y^T Bf - sigma v)^T + (Af z) v^T with sigma = u^T (Af z): the rank-1 main term AND
      both cross terms are in A, so Res = Ar Br exactly and only Ar Br is bounded.
  (b) exact_EQKE: A = (E_q Q)(K^T Ebar^T) densely, Res = 0, eps = 0.
  (c) subproduct modes: for any vectors qd1, qd2, kd1, kd2 in R^V and uQ, uK in R^d, peel
      E_q = qd1 r1^T + qd2 r2^T + a2 (r1 = E_q^T qd1, r2 = a1^T qd2 with a1 = E_q - qd1 r1^T),
      Ebar = kd1 s1^T + kd2 s2^T + b2 likewise, Q = uQ wQ^T + Q2 (wQ = Q^T uQ), K = uK wK^T + K2.
      Telescoping, E_q Q K^T Ebar^T - a2 Q2 K2^T b2^T =
        (E_q - a2) Q K^T Ebar^T + a2 (Q - Q2) K^T Ebar^T + a2 Q2 (K - K2)^T Ebar^T
        + a2 Q2 K2^T (Ebar - b2)^T,
      and each term is a sum of <= 2 outer products of cheap vectors; A is their dense sum and
      Res = m0 m1 m2 m3 with (m0, m1, m2, m3) = (a2, Q2, K2^T, b2^T).
  Row-difference bounds (``rr_bound``): for a product X Y, (XY)[q,i] - (XY)[q,j] =
  sum_t X[q,t] (Y[t,i] - Y[t,j]) <= sum_t |X[q,t]| rr(Y)_t with rr(Y)_t >= max_i Y[t,i] -
  min_j Y[t,j] bounded recursively (rr of a single matrix is exact). The mean trick: for any
  vector abar, XY = 1 (abar^T Y) + (X - 1 abar^T) Y, so the bound is
  range(abar^T Y) + sum_t |X[q,t] - abar_t| rr(Y)_t. Subproduct: the min over the three splits
  (m0)(m1 m2 m3), (m0 m1)(m2 m3), (m0 m1 m2)(m3) of the two-factor bound. svd: e_q^T Res (e_i - e_j)
  <= sqrt(2) sigma_1(Res) and sigma_1(Ar Br)^2 = lambda_max(G) with G = (Ar^T Ar)(Br Br^T)
  (same nonzero spectrum as Res^T Res), which is similar to a PSD matrix, so for c > 0
  lambda_max(G) <= (tr((c G)^32))^(1/32) / c (the trace is the sum of the 32nd powers of the
  non-negative eigenvalues). max_diff_exact: Res materialised, exact row ranges.
  (d) recursive modes: eps = min(recursive rr bound, Cauchy-Schwarz bound). For Res = m0 M m3
  with M = m1 m2 and any abar in R^d, kbar in R^d: Res[q,i] - Res[q,j] =
  abar^T M (m3_i - m3_j) + (m0[q] - abar)^T M ((m3_i - kbar) - (m3_j - kbar))
  <= range(abar^T M m3) + ||m0[q] - abar||_2 sigma_1(M) 2 max_i ||m3_i - kbar||_2, with
  sigma_1(M)^2 bounded as for svd on the d_head x d_head Gram matrices of m1, m2 (cost
  O(V d + d^3): no product of a vocabulary-sized factor with a d x d one).               QED
All arithmetic is counted rounding-sound ``Ops``; ``eps`` is an ``Approx`` like everything else.
"""

import math
from dataclasses import dataclass

import torch

from compact_proofs.core.circuits import Leaves
from compact_proofs.core.rigorous import Approx, Ops, U, up_mul
from compact_proofs.proofs.subcubic.prims import (
    absolute,
    matvec,
    outer,
    rowrange,
    sqrt,
    tighten,
    transpose,
    vecmat,
)
from compact_proofs.proofs.subcubic.variants import RECURSIVE_MEANS

LBL = "subcubic:eqke"


@dataclass(frozen=True)
class Embeds:
    """Key-side embeddings with the mean position folded in."""

    E_bar: Approx  # [d_vocab, d_model]
    P_hat: Approx  # [n_ctx, d_model]


def embeds(lv: Leaves, ops: Ops) -> Embeds:
    """Cost: d (n - 1) + d + V d + n d."""
    n = lv.P.shape[0]
    p_bar = ops.scale(ops.sum(lv.P, 0, label=LBL), 1.0 / n, label=LBL)  # [d]
    row = p_bar.map_layout(lambda t: t[None, :])
    return Embeds(E_bar=ops.add(lv.E, row, label=LBL), P_hat=ops.sub(lv.P, row, label=LBL))


def positional(lv: Leaves, em: Embeds, ops: Ops) -> Approx:
    """POS = E_q (Q (K^T Phat^T)) [d_vocab_q, n_ctx].
    Cost: dh n (2d-1) + d n (2dh-1) + V n (2d-1)."""
    kp = ops.matmul(transpose(lv.K), transpose(em.P_hat), label=LBL)  # [dh, n]
    qkp = ops.matmul(lv.Q, kp, label=LBL)  # [d, n]
    return ops.matmul(lv.E_q, qkp, label=LBL)


@dataclass(frozen=True)
class Approximation:
    A: Approx  # [d_vocab_q, d_vocab_k]
    eps: Approx  # [d_vocab_q] or [1]


def _vec(cert: dict, key: str, size: int, ops: Ops) -> Approx:
    t = torch.as_tensor(cert[key], dtype=torch.float64)
    if t.shape != (size,) or not bool(torch.isfinite(t).all()):
        from compact_proofs.errors import ProofPreconditionError

        raise ProofPreconditionError(f"certificate entry {key!r}: need a finite vector of {size}")
    return ops.exact(t, label=LBL)


# -------------------------------------------------------------------------- row-range bounds
def rr_bound(fs: list[Approx], means: list[bool], ops: Ops) -> Approx:
    """Upper bounds on the row ranges of the product fs[0] @ ... @ fs[-1] (see the module
    docstring); ``means[i]`` applies the mean trick at level i. Returns [rows of fs[0]]."""
    if len(fs) == 1:
        return rowrange(fs[0], ops, LBL)
    inner = rr_bound(fs[1:], means[1:], ops)
    X = fs[0]
    if not means[0]:
        return matvec(absolute(X, ops, LBL), inner, ops, LBL)
    rows = X.shape[0]
    abar = ops.scale(ops.sum(X, 0, label=LBL), 1.0 / rows, label=LBL)
    v = abar
    for F in fs[1:]:
        v = vecmat(v, F, ops, LBL)
    head = rowrange(v.map_layout(lambda t: t[None, :]), ops, LBL)  # [1]
    dev = absolute(ops.sub(X, abar.map_layout(lambda t: t[None, :]), label=LBL), ops, LBL)
    return ops.add(matvec(dev, inner, ops, LBL), head, label=LBL)


def _sigma_sq_up(Ar: Approx, Br: Approx, ops: Ops) -> float:
    """An upper bound on sigma_1(Ar Br)^2 = lambda_max((Ar^T Ar)(Br Br^T)) via the trace of the
    32nd power (module docstring). Cost, k = inner size, r, c = outer sizes:
    k^2 (2r - 1) + k^2 (2c - 1) + k^2 (2k - 1) + (2k^2 - 1) + (k - 1) + 1 + k^2 + (2k^2 - 1)
    + 4 (k^2 (2k - 1) + 2k^2 - 1) + k^2 + (k^2 - 1) + 1 + 10."""
    GA = ops.matmul(transpose(Ar), Ar, label=LBL)  # [k, k]
    GB = ops.matmul(Br, transpose(Br), label=LBL)  # [k, k]
    G = tighten(ops.matmul(GA, GB, label=LBL), ops, LBL)
    d = G.shape[0]
    diag = G.map_layout(lambda m: torch.diagonal(m))
    tr_up = float(ops.upper(ops.sum(diag, 0, label=LBL).map_layout(lambda m: m.reshape(1)), LBL)[0])
    # c keeps the scaled rounding radius small: lambda_max(G) <= tr(G) in any case.
    scale_ref = max(float(torch.diagonal(G.mid).sum()), 16.0 * d * G.rad)
    c = 1.0 / scale_ref if scale_ref > 0 and math.isfinite(scale_ref) else 1.0
    X = tighten(ops.scale(G, c, label=LBL), ops, LBL)
    for _ in range(4):  # X^2, X^4, X^8, X^16
        X = tighten(ops.matmul(X, X, label=LBL), ops, LBL)
    prod = ops.mul(X, transpose(X), label=LBL)  # tr(X^32) = sum_ij X16[i,j] X16[j,i]
    t = ops.sum(prod.map_layout(lambda m: m.reshape(-1)), 0, label=LBL)
    t_up = float(ops.upper(t.map_layout(lambda m: m.reshape(1)), label=LBL)[0])
    t_up = max(t_up, 0.0)
    # Scalar work (10 flops charged): r^32 >= t_up, lam <= min(r / c, tr G).
    ops.ledger.add(10, label=LBL)
    lam = max(tr_up, 0.0)
    if math.isfinite(t_up):
        r = t_up ** (1.0 / 32.0) if t_up > 0 else 0.0
        while down_pow(r, 32) < t_up:  # a LOWER bound on r^32 must reach t_up
            r = math.nextafter(r, math.inf)
        lam = min(lam, up_mul(r, math.nextafter(1.0 / c, math.inf)))
    return lam


def _svd_eps(Ar: Approx, Br: Approx, ops: Ops) -> Approx:
    """sqrt(2) sigma_1(Ar Br) (``_sigma_sq_up``)."""
    eps = math.nextafter(math.sqrt(up_mul(2.0, _sigma_sq_up(Ar, Br, ops))), math.inf)
    return _bound_value(eps)


def _bound_value(x: float) -> Approx:
    """An upper bound ``x`` >= 0 as an exact value; when it is infinite, a finite stand-in
    with an infinite radius (vacuous: nothing is proven with it, and later tensors stay free of
    inf - inf)."""
    if math.isfinite(x):
        return Approx(torch.tensor([x], dtype=torch.float64), 0.0, x)
    return Approx(torch.tensor([1e300], dtype=torch.float64), math.inf, math.inf)


def down_pow(x: float, k: int) -> float:
    """Lower bound on x^k for x >= 0 (k a power of two) by repeated downward squaring."""
    out = x
    while k > 1:
        out = math.nextafter(out * out, -math.inf)
        k //= 2
    return max(out, 0.0)


def _cs_eps(fs: list[Approx], mean_q: bool, mean_k: bool, ops: Ops) -> Approx:
    """Cauchy-Schwarz row-difference bound for Res = m0 m1 m2 m3 (module docstring, (d)):
    eps[q] = head + 2 sigma beta ||m0[q] - abar||_2 with sigma >= sigma_1(m1 m2),
    beta >= max_i ||m3[:, i] - kbar||_2, abar = mean row of m0 (0 unless mean_q), head =
    rowrange(abar m1 m2 m3) (0 unless mean_q), kbar = mean column of m3 (0 unless mean_k).
    Never forms a product of a d_vocab-sized factor with a d_model^2 one."""
    m0, m1, m2, m3 = fs
    rows, k = m0.shape
    lam = _sigma_sq_up(m1, m2, ops)
    X = transpose(m3)  # [V_k, d]
    if mean_k:
        kbar = ops.scale(ops.sum(X, 0, label=LBL), 1.0 / X.shape[0], label=LBL)
        X = ops.sub(X, kbar.map_layout(lambda t: t[None, :]), label=LBL)
    bsq = ops.sum(ops.mul(X, X, label=LBL), 1, label=LBL)  # [V_k]
    bsq_up = float(ops.upper(ops.amax(bsq, 0, label=LBL).map_layout(lambda t: t.reshape(1)))[0])
    ops.ledger.add(4, label=LBL)  # scalar: 4 sigma^2 beta^2, then its square root
    factor = math.nextafter(math.sqrt(up_mul(4.0, lam, max(bsq_up, 0.0))), math.inf)
    head = None
    if mean_q:
        abar = ops.scale(ops.sum(m0, 0, label=LBL), 1.0 / rows, label=LBL)
        v = abar
        for F in fs[1:]:
            v = vecmat(v, F, ops, LBL)
        head = rowrange(v.map_layout(lambda t: t[None, :]), ops, LBL)  # [1]
        m0 = ops.sub(m0, abar.map_layout(lambda t: t[None, :]), label=LBL)
    norms = sqrt(ops.sum(ops.mul(m0, m0, label=LBL), 1, label=LBL), ops, LBL)  # [rows]
    eps = ops.mul(norms, _bound_value(factor), label=LBL)
    return eps if head is None else ops.add(eps, head, label=LBL)


def _two_factor_eps(mode: str, L: Approx, R: Approx, ops: Ops) -> Approx:
    if mode in ("max_diff", "max_diff_subproduct"):
        return rr_bound([L, R], [False], ops)
    if mode in ("mean+max_diff", "mean+max_diff_subproduct"):
        return rr_bound([L, R], [True], ops)
    raise AssertionError(mode)


# ----------------------------------------------------------------------------------- modes
def factored(mode: str, lv: Leaves, em: Embeds, cert: dict, ops: Ops) -> Approximation:
    """Family (a): rank-1 main term plus both cross terms in A; Res = Ar Br."""
    V = lv.E.shape[0]
    qkt = ops.matmul(lv.Q, transpose(lv.K), label=LBL)  # [d, d]
    Af = ops.matmul(lv.E_q, qkt, label=LBL)  # [V, d]
    Bf = transpose(em.E_bar)  # [d, V]
    u, v = _vec(cert, "u", V, ops), _vec(cert, "v", V, ops)
    y = vecmat(u, Af, ops, LBL)  # [d]
    r = vecmat(y, Bf, ops, LBL)  # [V] = u^T EQKE
    z = matvec(Bf, v, ops, LBL)  # [d]
    col = matvec(Af, z, ops, LBL)  # [V] = EQKE v
    sigma = vecmat(u, col.map_layout(lambda t: t[:, None]), ops, LBL)  # [1]
    rr = ops.sub(r, ops.mul(sigma, v, label=LBL), label=LBL)
    A = ops.add(outer(u, rr, ops, LBL), outer(col, v, ops, LBL), label=LBL)
    Ar = ops.sub(Af, outer(u, y, ops, LBL), label=LBL)
    Br = ops.sub(Bf, outer(z, v, ops, LBL), label=LBL)
    if mode == "svd":
        eps = _svd_eps(Ar, Br, ops)
    elif mode == "max_diff_exact":
        eps = rowrange(ops.matmul(Ar, Br, label=LBL), ops, LBL)
    else:
        eps = _two_factor_eps(mode, Ar, Br, ops)
    return Approximation(A=A, eps=eps)


def exact(lv: Leaves, em: Embeds, ops: Ops) -> Approximation:
    """Family (b): A = EQKE densely, eps = 0."""
    eqq = ops.matmul(lv.E_q, lv.Q, label=LBL)  # [V, dh]
    kte = ops.matmul(transpose(lv.K), transpose(em.E_bar), label=LBL)  # [dh, V]
    A = ops.matmul(eqq, kte, label=LBL)
    return Approximation(A=A, eps=Approx(torch.zeros(1, dtype=torch.float64), 0.0, 0.0))


def _peel(x: Approx, d1: Approx, d2: Approx, ops: Ops) -> tuple[Approx, Approx]:
    """x = d1 r1^T + d2 r2^T + x2; returns (stacked rows [2, d], x2). Cost 2 (d (2V-1) + 2 V d)."""
    r1 = vecmat(d1, x, ops, LBL)
    x1 = ops.sub(x, outer(d1, r1, ops, LBL), label=LBL)
    r2 = vecmat(d2, x1, ops, LBL)
    x2 = ops.sub(x1, outer(d2, r2, ops, LBL), label=LBL)
    return Ops.stack([r1, r2], dim=0), x2


def subproduct(mode: str, lv: Leaves, em: Embeds, cert: dict, ops: Ops) -> Approximation:
    """Family (c): four peeled factors; A = the telescoped low-rank terms."""
    V, d = lv.E.shape
    dh = lv.Q.shape[1]
    qd1, qd2 = _vec(cert, "qd1", V, ops), _vec(cert, "qd2", V, ops)
    kd1, kd2 = _vec(cert, "kd1", V, ops), _vec(cert, "kd2", V, ops)
    uQ, uK = _vec(cert, "uQ", d, ops), _vec(cert, "uK", d, ops)
    a_rows, a2 = _peel(lv.E_q, qd1, qd2, ops)  # [2, d], [V, d]
    b_rows, b2 = _peel(em.E_bar, kd1, kd2, ops)
    wQ = vecmat(uQ, lv.Q, ops, LBL)  # [dh]
    Q2 = ops.sub(lv.Q, outer(uQ, wQ, ops, LBL), label=LBL)  # [d, dh]
    wK = vecmat(uK, lv.K, ops, LBL)
    K2 = ops.sub(lv.K, outer(uK, wK, ops, LBL), label=LBL)
    Kt, bT = transpose(lv.K), transpose(em.E_bar)
    # term 1: (E_q - a2) Q K^T Ebar^T = qd1 (r1 Q K^T Ebar^T) + qd2 (r2 ...)
    rows1 = ops.matmul(ops.matmul(ops.matmul(a_rows, lv.Q, label=LBL), Kt, label=LBL), bT, LBL)
    # term 2: a2 (uQ wQ^T) K^T Ebar^T = (a2 uQ) (wQ^T K^T Ebar^T)
    col2 = matvec(a2, uQ, ops, LBL)
    row2 = vecmat(vecmat(wQ, Kt, ops, LBL), bT, ops, LBL)
    # term 3: a2 Q2 (wK uK^T) Ebar^T = (a2 Q2 wK) (Ebar uK)^T
    col3 = matvec(a2, matvec(Q2, wK, ops, LBL), ops, LBL)
    row3 = matvec(em.E_bar, uK, ops, LBL)
    # term 4: a2 Q2 K2^T (kd1 s1^T + kd2 s2^T)^T = (a2 Q2 K2^T s_i) kd_i^T
    k2s = ops.matmul(transpose(K2), transpose(b_rows), label=LBL)  # [dh, 2]
    cols4 = ops.matmul(a2, ops.matmul(Q2, k2s, label=LBL), label=LBL)  # [V, 2]
    parts = [
        outer(qd1, rows1[0], ops, LBL),
        outer(qd2, rows1[1], ops, LBL),
        outer(col2, row2, ops, LBL),
        outer(col3, row3, ops, LBL),
        outer(cols4[:, 0], kd1, ops, LBL),
        outer(cols4[:, 1], kd2, ops, LBL),
    ]
    A = parts[0]
    for p in parts[1:]:
        A = ops.add(A, p, label=LBL)
    m0, m1, m2, m3 = a2, Q2, transpose(K2), transpose(b2)
    if mode.endswith("_recursive"):
        means = RECURSIVE_MEANS[mode]
        eps = ops.minimum(
            rr_bound([m0, m1, m2, m3], means, ops),
            _cs_eps([m0, m1, m2, m3], means[0], means[-1], ops),
            label=LBL,
        )
    else:
        m23 = ops.matmul(m2, m3, label=LBL)  # [dh, V]
        m123 = ops.matmul(m1, m23, label=LBL)  # [d, V]
        m01 = ops.matmul(m0, m1, label=LBL)  # [V, dh]
        m012 = ops.matmul(m01, m2, label=LBL)  # [V, d]
        e0 = _two_factor_eps(mode, m0, m123, ops)
        e1 = _two_factor_eps(mode, m01, m23, ops)
        e2 = _two_factor_eps(mode, m012, m3, ops)
        eps = ops.minimum(ops.minimum(e0, e1, label=LBL), e2, label=LBL)
    del dh
    return Approximation(A=A, eps=eps)


def approximate(mode: str, lv: Leaves, em: Embeds, cert: dict, ops: Ops) -> Approximation:
    """Dispatch to the component of attention-error mode ``mode``."""
    if mode == "exact_EQKE+max_diff_exact":
        return exact(lv, em, ops)
    if "subproduct" in mode:
        return subproduct(mode, lv, em, cert, ops)
    return factored(mode, lv, em, cert, ops)


__all__ = ["Approximation", "Embeds", "approximate", "embeds", "positional", "rr_bound", "U"]
