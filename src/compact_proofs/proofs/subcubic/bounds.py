"""Attention bounds (§8.5), the largest-wrong-logit bound with its two attention-handling
components (§8.6, with the §13.2 and §13.3 fixes), and the single all-max input.

Keys: (q, m, c) with q <= m the query and max tokens and c >= 1 the number of non-max tokens
INCLUDING the query when q != m (the paper's subcubic convention); the gap g = gaps[q, m, c]
restricts the key to inputs whose non-max tokens (the query too if q != m) are all <= m - g.
Scores are divided by s = sqrt(d_head) up front: A_s = A / s, eps_s = eps / s, POS_s = POS / s.

Claim (attention): for every input of a valid key (q, m, c) with gap g and every such input's
arrangement, the total attention a to the copies of m satisfies a_lo <= a <= a_hi with
    a_r = sigmoid(D_r + lam_r[q, c, q == m]),
    D_lo = A_s[q,m] - max_{k <= m-g} A_s[q,k] - eps_s[q],
    D_hi = A_s[q,m] - min_{k <= m-g} A_s[q,k] + eps_s[q],
    lam_r = log S_r - log N_r,
where S_r / N_r are the sums of exp(POS_s[q, p]) over the max / non-max slots of the extreme
arrangement r (lo: max tokens on the lowest non-query positional scores, hi: on the highest; the
query slot is a max slot iff q = m).
Proof: with delta_p = (EQKE[q,m] - EQKE[q,t_p]) / s for the non-max slots,
a = S / (S + sum_{p non-max} exp(POS_s[q,p] - delta_p)) where S sums over the max slots.
By the eqke claim (*) with i = m, j = t_p <= m - g: D_lo <= delta_p <= D_hi (A's row difference
is bracketed by the prefix max/min, Res's by eps). a is increasing in every delta_p, so it lies
between the values with all delta_p = D_lo and all = D_hi, i.e. S / (S + e^{-D} (T - S)) with
T the sum over all n slots; that is increasing in S, whose extremes over arrangements (the query
slot fixed) are the sorted placements, giving sigmoid(D + log S_r - log(T - S_r)).        QED

Claim (logits): for every input of the key and every x != m,
    logit(x) - logit(m) <= LW[q, m, c] := max_{r in lo, hi} B_r,
    B_r = gap_eu[q, m] + base + term_r + (1 - a_r) W[q, m, c],
with W = max_{k <= m-g} (max_{x' != m} EVOU[k, x'] - EVOU[k, m]), L[m, x] = Ldir[m, x] + PV*[m, x],
PV*[m, x] = max_p (PVOU[p, x] - PVOU[p, m]), R[m, x] = EVOU[m, x] - EVOU[m, m], and
  * mean_query+diff: for a certified reference attention avg (any number; the search sends the
    mean over queries): base = max_{x != m} (L[m,x] + avg R[m,x]),
    term_r = max(delta_r R+, delta_r R-), delta_r = a_r - avg, R+/- = max/min_{x != m} R[m, x];
  * drop_average...: base = max_{x != m} L[m, x], term_r = a_r R+.
Proof: by the path decomposition and sum_p alpha_p = 1, logit(x) - logit(m) =
EUPU[q,x] - EUPU[q,m] + sum_p alpha_p (PVOU[p,x] - PVOU[p,m]) + a R[m,x]
+ sum_{p non-max} alpha_p (EVOU[t_p,x] - EVOU[t_p,m]) <= Ldir + gap_eu + PV* + a R[m,x] + (1-a) W
(direct claim (*); all non-max tokens are <= m - g). For fixed x this is affine in a, so over
a in [a_lo, a_hi] it is maximal at an endpoint: both endpoints are evaluated (the §13.3 fix).
At an endpoint, max_x (L + a R) <= max_x (L + avg R) + max_x ((a - avg) R) and
max_x (delta R[x]) <= max(delta R+, delta R-) for either sign of delta (the §13.2 fix); with
avg = 0, a > 0 gives a R+.                                                                 QED

Claim (c = 0): the single input (m, ..., m) has exact attention softmax_p(POS_s[m, p]) and is
proven iff max_{x != m} logit(x) - logit(m) < 0 computed exactly along the path decomposition.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.proofs.subcubic.eupu import Direct
from compact_proofs.proofs.subcubic.prims import cummax, cummin, neg, tighten, transpose

LA, LL, L0 = "subcubic:attn", "subcubic:logit", "subcubic:c0"


@dataclass(frozen=True)
class AttnTables:
    A_s: Approx  # [d_vocab_q, d_vocab_k]
    pmax: Approx  # [d_vocab_q, d_vocab_k] prefix max over k
    pmin: Approx  # [d_vocab_q, d_vocab_k] prefix min over k
    eps_s: Approx  # [d_vocab_q] or [1]
    lam: Approx  # [d_vocab_q, n_c, r, isq]


def placement_log_ratios(pos_s: Approx, ops: Ops) -> Approx:
    """lam[q, c-1, r, isq] = log S_r - log N_r (see the module docstring), c = 1 .. n-1.
    Cost: V (n - 2) (sort) + per c: eight log-sum-exps of total length 4n (4 L V each) and
    4 V subtractions, i.e. (n - 1)(16 n V + 4 V)."""
    n = pos_s.shape[1]
    asc = ops.sort(pos_s[:, : n - 1], dim=1, label=LA)  # [q, n-1]
    qp = pos_s[:, n - 1 :]  # [q, 1]

    def lse(*parts: Approx) -> Approx:
        return ops.logsumexp(Ops.cat([p for p in parts], dim=1), dim=1, label=LA)

    per_c = []
    for c in range(1, n):
        j = n - c  # q != m: max slots among the non-query slots
        nq_lo = ops.sub(lse(asc[:, :j]), lse(asc[:, j:], qp), label=LA)
        nq_hi = ops.sub(lse(asc[:, n - 1 - j :]), lse(asc[:, : n - 1 - j], qp), label=LA)
        j = n - 1 - c  # q = m: non-query max slots (plus the query slot)
        eq_lo = ops.sub(lse(asc[:, :j], qp), lse(asc[:, j:]), label=LA)
        eq_hi = ops.sub(lse(asc[:, n - 1 - j :], qp), lse(asc[:, : n - 1 - j]), label=LA)
        per_c.append(Ops.stack([Ops.stack([nq_lo, eq_lo], 1), Ops.stack([nq_hi, eq_hi], 1)], 1))
    return Ops.stack(per_c, dim=1)  # [q, n_c, r, isq]


def attention_tables(A_s: Approx, eps_s: Approx, pos_s: Approx, ops: Ops) -> AttnTables:
    """Cost: 2 V (V - 1) prefix scans + ``placement_log_ratios``."""
    return AttnTables(
        A_s=A_s,
        pmax=cummax(A_s, 1, ops, LA),
        pmin=cummin(A_s, 1, ops, LA),
        eps_s=eps_s,
        lam=placement_log_ratios(pos_s, ops),
    )


@dataclass(frozen=True)
class LogitTables:
    L: Approx  # [d_vocab_max, d_vocab_out]
    R: Approx  # [d_vocab_max, d_vocab_out]
    R_plus: Approx  # [d_vocab_max]
    R_minus: Approx  # [d_vocab_max]
    W_pref: Approx  # [d_vocab_max, d_vocab_k]: max_{k' <= k} (max_{x != m} EVOU[k',x] - EVOU[k',m])
    gap_eu: Approx  # broadcastable to [d_vocab_q, d_vocab_max]
    base_drop: Approx | None  # [d_vocab_max]: max_{x != m} L[m, x] (drop-average mode)


def logit_tables(EVOU: Approx, PVOU: Approx, dr: Direct, drop: bool, ops: Ops) -> LogitTables:
    """Cost: V^2 n + V^2 (n-1) (PV*), [V^2 (Ldir)], V^2 (R), 2 V (V-1) (R+-),
    V (2V - 3) + 2 V^2 (leave-one-out), V^2 + V (V-1) (W), [V (V-1) (drop base)],
    3 (2 V^2 - 1) + 2 (2 V - 1) [+ 2 V - 1] (tight magnitudes)."""
    V = EVOU.shape[0]
    idx = torch.arange(V)
    centred = ops.sub(
        PVOU.map_layout(lambda t: t[None, :, :]),  # [1, p, x]
        PVOU.map_layout(lambda t: t.T[:, :, None]),  # [m, p, 1]
        label=LL,
    )
    L = ops.amax(centred, 1, label=LL)  # PV* [m, x]
    if dr.Ldir is not None:
        L = ops.add(L, dr.Ldir, label=LL)
    R = ops.sub(EVOU, EVOU[idx, idx].map_layout(lambda t: t[:, None]), label=LL)
    ex = idx[:, None]
    R_plus = ops.amax_excluding(R, 1, ex, label=LL)
    R_minus = neg(ops.amax_excluding(neg(R), 1, ex, label=LL))
    loo = ops.amax_leave_one_out(EVOU, dim=1, label=LL)  # [k, j] = max_{x != j} EVOU[k, x]
    W_km = ops.sub(loo, EVOU, label=LL)  # [k, m]
    W_pref = cummax(transpose(W_km), 1, ops, LL)  # [m, k]
    base_drop = ops.amax_excluding(L, 1, ex, label=LL) if drop else None
    # Tight magnitudes (``tighten``): the a-priori ones are orders of magnitude too large and
    # would multiply the attention's rounding radius in the logit bound.
    L, R, R_plus, R_minus, W_pref = (tighten(t, ops, LL) for t in (L, R, R_plus, R_minus, W_pref))
    if base_drop is not None:
        base_drop = tighten(base_drop, ops, LL)
    return LogitTables(L, R, R_plus, R_minus, W_pref, dr.gap, base_drop)


def single_max(pos_s: Approx, EUPU: Approx, EVOU: Approx, PVOU: Approx, ops: Ops) -> Tensor:
    """proven0[m] for the input (m, ..., m). Cost: 2 V (n-1) + 3 V n + V^2 (2n - 1) + 2 V^2
    + V (V - 1) + V + V."""
    V = EVOU.shape[0]
    idx = torch.arange(V)
    alpha = ops.softmax(pos_s, 1, label=L0)  # [m, n]
    lp = ops.matmul(alpha, PVOU, label=L0)  # [m, x]
    logits = ops.add(ops.add(EUPU, EVOU, label=L0), lp, label=L0)
    worst = ops.amax_excluding(logits, 1, idx[:, None], label=L0)
    diff = ops.sub(worst, logits[idx, idx], label=L0)
    return ops.proven_negative(diff, label=L0)


# ------------------------------------------------------------------------------ evaluation
def gap_index(gaps: Tensor, V: int) -> Tensor:
    """j = m - g clamped into [0, V-1] (invalid keys are masked by ``valid``)."""
    m = torch.arange(V).view(1, V, *([1] * (gaps.ndim - 2)))
    return (m - gaps).clamp(0, V - 1)


def valid(gaps: Tensor) -> Tensor:
    """Keys (q, m, c >= 1) the gap admits: q <= m, and m - g >= 0 (q = m) or q <= m - g."""
    V = gaps.shape[0]
    q = torch.arange(V).view(V, 1, *([1] * (gaps.ndim - 2)))
    m = torch.arange(V).view(1, V, *([1] * (gaps.ndim - 2)))
    return ((q == m) & (m - gaps >= 0)) | ((q < m) & (q <= m - gaps))


def attention(at: AttnTables, gaps: Tensor, ops: Ops) -> tuple[Approx, Approx]:
    """(a, 1 - a) bounds [q, m, c, G, r] for gaps [q, m, c, G].
    Cost per key and candidate (N = V^2 (n-1) G): 2 N (D) + 2 N (eps) + 2 N (lam) + 8 N (sigmoid
    via a 2-way softmax)."""
    V = gaps.shape[0]
    j = gap_index(gaps, V)
    qi = torch.arange(V).view(V, 1, 1, 1)
    Am = at.A_s.map_layout(lambda t: t[:, :, None, None])  # [q, m, 1, 1]
    eps = at.eps_s.map_layout(lambda t: t.view(-1, 1, 1, 1))
    d_lo = ops.sub(ops.sub(Am, at.pmax[qi, j], label=LA), eps, label=LA)
    d_hi = ops.add(ops.sub(Am, at.pmin[qi, j], label=LA), eps, label=LA)
    D = Ops.stack([d_lo, d_hi], dim=-1)  # [q, m, c, G, r]
    isq = (torch.arange(V)[:, None] == torch.arange(V)[None, :]).long()  # [q, m]
    lam = at.lam.map_layout(lambda t: t[torch.arange(V)[:, None], :, :, isq][:, :, :, None, :])
    z = ops.add(D, lam, label=LA)
    two = Ops.stack([z, Approx(torch.zeros_like(z.mid), 0.0, 0.0)], dim=-1)
    sm = ops.softmax(two, -1, label=LA)
    return sm[..., 0], sm[..., 1]


def base_mean(lt: LogitTables, avg: Approx, ops: Ops) -> Approx:
    """max_{x != m} (L[m, x] + avg[m, ...] R[m, x]) for avg [m, c, G', r]. Cost 3 numel(avg) V
    - numel(avg) (mul, add, max over V - 1 ... charged as amax over V)."""
    V = lt.L.shape[0]
    Lb = lt.L.map_layout(lambda t: t[:, None, None, None, :])
    Rb = lt.R.map_layout(lambda t: t[:, None, None, None, :])
    comb = ops.add(Lb, ops.mul(avg.map_layout(lambda t: t[..., None]), Rb, label=LL), label=LL)
    ex = torch.arange(V).view(V, 1, 1, 1, 1)
    return ops.amax_excluding(comb, -1, ex, label=LL)


def largest_wrong_logit(
    lt: LogitTables,
    a: Approx,
    na: Approx,
    gaps: Tensor,
    avg: Approx | None,
    base: Approx | None,
    ops: Ops,
) -> Approx:
    """LW [q, m, c, G] (module docstring). ``avg``/``base`` [m, c, G', r] for mean_query+diff,
    None for drop-average. Cost (N as in ``attention``, x2 for r): mean: 2N (delta) + 4N
    (products) + 2N (max); drop: 2N; then 2N (W) + 6N (sums) + N (max over r)."""
    V = gaps.shape[0]
    j = gap_index(gaps, V)
    mi = torch.arange(V).view(1, V, 1, 1)
    W = lt.W_pref[mi, j].map_layout(lambda t: t[..., None])  # [q, m, c, G, 1]
    Rp = lt.R_plus.map_layout(lambda t: t.view(1, V, 1, 1, 1))
    if avg is not None:
        assert base is not None
        delta = ops.sub(a, avg.map_layout(lambda t: t[None]), label=LL)
        Rm = lt.R_minus.map_layout(lambda t: t.view(1, V, 1, 1, 1))
        term = ops.maximum(ops.mul(delta, Rp, label=LL), ops.mul(delta, Rm, label=LL), label=LL)
        b = base.map_layout(lambda t: t[None])
    else:
        assert lt.base_drop is not None
        term = ops.mul(a, Rp, label=LL)
        b = lt.base_drop.map_layout(lambda t: t.view(1, V, 1, 1, 1))
    eu = lt.gap_eu.map_layout(lambda t: t[:, :, None, None, None])
    lw = ops.add(ops.add(ops.add(b, term, label=LL), ops.mul(na, W, label=LL), label=LL), eu, LL)
    return ops.amax(lw, -1, label=LL)
