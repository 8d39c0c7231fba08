"""Adaptive proof, stage 2b: COUNT KEYS (q, m, c, i), the inputs of key (q, m, c) with exactly i
non-max tokens outside the proven set, every placement at once.

Shape glossary (``core/circuits.py``): ``keys`` count keys, ``placement`` r in {0, 1},
``d_vocab_k`` (k < m) non-max token, ``d_vocab_out`` output x, ``queries`` query tokens.

Let K = K(q, m, c) be the tokens k < m whose homogeneous key is proven after stages 1-2 (N = |K|)
and U = [0, m) minus K (u = |U|). Count key (q, m, c, i), 1 <= i <= c, N >= 1: the
C(n-1, c) C(c, i) u^i N^(c-i) inputs with query q, max m, c non-max non-query tokens of which
exactly i lie in U.

Claim: if ``evaluate`` proves the count key, all its inputs are correct.
Proof: (notation of the cubic package docstring: Dmax, Dk, Dz use the pessimal non-query position
PVnq for non-query slots, the true position for the query slot; w_p = e^{EQKP[q,p]/s},
T = sum_{p < n-1} w_p, S = sum of the max slots' w_p, g_x(k) = e^{EQKE[q,k]/s} Dk[q,m,k,x].)
  (1) As in the cubic's steps (2)-(3), logit(x) < logit(m) once
      F_x = e^{EQKE[q,m]/s} S Dmax_x + sum_{p non-max} w_p g_x(t_p) + w_query Dz_x < 0.
  (2) Let I be the i positions holding U tokens and P_I = sum_{p in I} w_p. Each g_x(t_p) is at
      most gK_x = max_{k in K} g_x(k) (p not in I) or gU_x = max_{k in U} g_x(k) (p in I), so
      sum_{p non-max} w_p g_x(t_p) <= (T - S) gK_x + P_I (gU_x - gK_x)
                                    <= (T - S) gK_x + P_i (gU_x - gK_x)^+,
      with P_i = the sum of the i largest w_p over all non-query positions (P_I <= P_i).
  (3) The result is affine in S, which lies between its values at the two extreme placements
      (the cubic's step (5)): F_x < 0 for every input once the bound is < 0 at both, for every
      x != m. For c = n-1 (q = m) there is no max slot outside the query (S = 0).
  (4) Computation: every term is a positive weight times a value; one softmax over the
      log-weights (EQKE[q,m]/s + log S, EQKE[q,k]/s + log(T - S) and EQKE[q,k]/s + log P_i for
      every k < m, the query's score) gives all weights up to one common positive factor, which
      does not change the sign; maxima over K and U are maxima of exact subsets (within the
      radius), and (.)^+ is a max with 0.                                                QED
Counting (``checker``): the count keys of (q, m, c) are disjoint from each other (different i),
from K^c (i = 0) and from other keys; only a contiguous prefix i = 1 .. i* of proven count keys
is counted, and the root boxes of (q, m, c) then cover the inputs with more than i* U tokens.
Cost: ``count_flops``.
"""

import math

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.proofs.adaptive import keys

LABEL = "adaptive:counts"
CHUNK_ELEMENTS = 1 << 21


def valid(ck_keys: Int[Tensor, "keys 4"], V: int, n: int) -> Bool[Tensor, " keys"]:
    """(q, m, c, i) with q <= m < V, 1 <= c <= n-1 (c <= n-2 unless q = m), 1 <= i <= c."""
    q, m, c, i = ck_keys.unbind(1)
    ok = (q >= 0) & (q <= m) & (m < V) & (c >= 1) & (c <= n - 1) & (i >= 1) & (i <= c)
    return ok & ((c <= n - 2) | (q == m))


def position_tops(EQKP_s: Approx, ops: Ops) -> Approx:
    """``tops[q, i-1] = log sum of the i largest exp(EQKP_s[q, p]), p < n-1``, i = 1 .. n-1.

    Cost: sorting V (n - 2); a log-sum-exp of length i costs 4 V i, so 2 V (n - 1) n in all."""
    n = EQKP_s.shape[1]
    desc = ops.sort(EQKP_s[:, : n - 1], dim=1, descending=True, label=LABEL)
    return Ops.stack([ops.logsumexp(desc[:, :i], dim=1, label=LABEL) for i in range(1, n)], dim=1)


def tops_flops(V: int, n: int) -> int:
    return V * (n - 2) + sum(4 * V * i for i in range(1, n))


def evaluate(
    ck: keys.CubicKeys,
    tops: Approx,
    proven: Bool[Tensor, "d_vocab_q d_vocab_max d_vocab_k n_ctx"],
    ckeys: Int[Tensor, "keys 4"],
    ops: Ops,
) -> Bool[Tensor, " keys"]:
    """Decide valid count keys (module docstring). Keys without inputs (N = 0 or u = 0) are not
    evaluated (no cost) and not proven. Cost: ``count_flops``."""
    n = ck.circ.PVOU.shape[0]
    out = torch.zeros(ckeys.shape[0], dtype=torch.bool)
    if ckeys.shape[0] == 0:
        return out
    q, m, c, _ = ckeys.unbind(1)
    N = proven[q, m, :, c].sum(dim=1)
    live = (N > 0) & (N < m)
    for mv in m[live].unique().tolist():
        for last in (False, True):
            sel = live & (m == mv) & ((c == n - 1) if last else (c < n - 1))
            idx = torch.nonzero(sel, as_tuple=True)[0]
            if idx.numel():
                out[idx] = _evaluate_m(ck, tops, proven, ckeys[idx], mv, last, ops)
    return out


def _evaluate_m(ck, tops, proven, ckeys, m: int, last: bool, ops: Ops) -> Tensor:
    """Count keys of one max token m, all with c <= n-2 (``last`` False) or all c = n-1."""
    circ = ck.circ
    EU, EV, PV = circ.EUPU, circ.EVOU, circ.PVOU
    V = EV.shape[1]
    pvnq = ck.slots.pv  # PVnq [m, x]
    qs, row = ckeys[:, 0].unique(return_inverse=True)

    def col(a: Approx) -> Approx:
        return a.map_layout(lambda t: t[:, None])

    # Per query: Dk[k, x] for k < m, Dz[x] and (c <= n-2) Dmax[x] (cubic package docstring).
    eu = ops.sub(EU[qs], col(EU[qs, m]), label=LABEL)  # [Q, x]
    evp = ops.add(ops.sub(EV[:m], EV[:m, m : m + 1], label=LABEL), pvnq[m : m + 1], label=LABEL)
    dk = ops.add(
        eu.map_layout(lambda t: t[:, None]), evp.map_layout(lambda t: t[None]), label=LABEL
    )  # [Q, k, x]
    ev_q = ops.sub(EV[qs], col(EV[qs, m]), label=LABEL)
    pv_q = ops.sub(PV[-1:], PV[-1:, m : m + 1], label=LABEL)  # [1, x]
    dz = ops.add(ops.add(eu, ev_q, label=LABEL), pv_q, label=LABEL)  # [Q, x]
    dmax = None
    if not last:
        own = ops.add(
            ops.sub(EV[m : m + 1], EV[m : m + 1, m : m + 1], label=LABEL),
            pvnq[m : m + 1],
            label=LABEL,
        )
        dmax = ops.add(eu, own, label=LABEL)  # [Q, x]
    out = torch.zeros(ckeys.shape[0], dtype=torch.bool)
    R = 1 if last else 2
    step = max(1, CHUNK_ELEMENTS // (2 * R * m * V))
    for s in range(0, ckeys.shape[0], step):
        rr = row[s : s + step]
        vals = (dk[rr], dz[rr], None if dmax is None else dmax[rr])
        out[s : s + step] = _chunk(ck, tops, proven, ckeys[s : s + step], m, vals, ops)
    return out


def _chunk(ck, tops, proven, kk, m: int, vals, ops: Ops) -> Tensor:
    """Bounds (2)-(4) of the module docstring for a chunk of count keys of max token m;
    ``vals`` = (Dk [L, k, x], Dz [L, x], Dmax [L, x] or None when c = n-1)."""
    dk, dz, dmax = vals
    q, _, c, i = kk.unbind(1)
    L = q.numel()
    last = dmax is None
    R = 1 if last else 2
    ks = torch.arange(m)
    Kmask = proven[q, m, :m, c]  # [L, k]

    def grid(a: Approx, width: int) -> Approx:  # [L, R or 1, width or 1] -> [L, R, width]
        return a.map_layout(lambda t: t.expand(L, R, width))

    eqk = ck.EQKE_s[q[:, None], ks[None, :]].map_layout(lambda t: t[:, None, :])  # [L, 1, k]
    if last:
        log_rest = ck.lse_all[q].map_layout(lambda t: t[:, None, None])  # log T
    else:
        log_rest = ck.groups[q, c - 1][..., 1].map_layout(lambda t: t[..., None])  # log(T - S)
    p_i = tops[q, i - 1].map_layout(lambda t: t[:, None, None])
    parts = []
    if not last:  # the max slots: EQKE[q, m]/s + log S
        eqm = ck.EQKE_s[q, m].map_layout(lambda t: t[:, None, None])
        g0 = ck.groups[q, c - 1][..., 0].map_layout(lambda t: t[..., None])
        parts.append(ops.add(grid(eqm, 1), g0, label=LABEL))
    parts.append(ops.add(grid(eqk, m), grid(log_rest, m), label=LABEL))
    parts.append(ops.add(grid(eqk, m), grid(p_i, m), label=LABEL))
    parts.append(grid(ck.z[q].map_layout(lambda t: t[:, None, None]), 1))
    alpha = ops.softmax(Ops.cat(parts, dim=2), dim=2, label=LABEL)  # [L, R, groups]
    a0 = 0 if last else 1
    dkl = dk.map_layout(lambda t: t[:, None])  # [L, 1, k, x]

    def times(a: Approx, d: Approx) -> Approx:
        return ops.mul(a.map_layout(lambda t: t[..., None]), d, label=LABEL)

    t_rest = times(alpha[..., a0 : a0 + m], dkl)  # [L, R, k, x]
    t_p = times(alpha[..., a0 + m : a0 + 2 * m], dkl)
    g_k = _masked_max(t_rest, Kmask, ops)[0]  # (T - S) gK      (2)
    p_k, p_u = _masked_max(t_p, Kmask, ops, both=True)
    excess = ops.maximum(
        ops.sub(p_u, p_k, label=LABEL),
        ops.constant(torch.zeros(1, 1, 1)),
        label=LABEL,
    )  # P_i (gU - gK)^+
    bound = ops.add(g_k, excess, label=LABEL)
    bound = ops.add(bound, times(alpha[..., -1], dz.map_layout(lambda t: t[:, None])), label=LABEL)
    if not last:
        bound = ops.add(
            bound, times(alpha[..., 0], dmax.map_layout(lambda t: t[:, None])), label=LABEL
        )
    excl = torch.full((L, R, 1), m, dtype=torch.int64)
    worst = ops.amax_excluding(bound, dim=2, exclude=excl, label=LABEL)  # (3)
    return ops.proven_negative(worst, label=LABEL).all(dim=1)


def _masked_max(
    a: Approx, mask: Bool[Tensor, "keys k"], ops: Ops, both: bool = False
) -> tuple[Approx, ...]:
    """Max over the tokens k in ``mask`` of ``a[l, r, k, x]`` (and, with ``both``, over those not
    in it; each set non-empty): within a.rad of the exact max over the same subset (a float max
    is one of the entries). One pass, scattering each token to its set. Cost: (|set| - 1) per
    output and set (paper rule)."""
    L, R, K, V = a.shape
    group = mask.to(torch.int64)[:, None, :, None].expand(L, R, K, V)  # 1: in mask
    out = torch.full((L, R, 2, V), -torch.inf, dtype=a.mid.dtype)
    out.scatter_reduce_(2, group, a.mid, reduce="amax", include_self=True)
    sizes = mask.sum(dim=1)
    sets = [(1, sizes)] + ([(0, K - sizes)] if both else [])
    for _, n_set in sets:
        ops.ledger.add(int((n_set - 1).clamp(min=0).sum()) * R * V, label=LABEL)
    return tuple(Approx(out[:, :, g], a.rad, a.mag) for g, _ in sets)


def count_flops(V: int, n: int, m: int, Q: int, sizes: Int[Tensor, "keys 3"]) -> int:
    """Ledger total of ``_evaluate_m`` for one max token m, Q distinct queries and keys with
    (c, i, N) rows ``sizes`` (all c <= n-2 or all c = n-1)."""
    if sizes.shape[0] == 0:
        return 0
    last = bool(sizes[0, 0] == n - 1)
    R = 1 if last else 2
    L = sizes.shape[0]
    N = sizes[:, 2]
    fixed = 2 * m * V + V + (0 if last else 2 * V)  # evp, pv_q, own
    per_q = V + m * V + V + 2 * V + (0 if last else V)  # eu, dk, ev_q, dz, dmax
    G = (0 if last else 1) + 2 * m + 1  # softmax entries
    per_key_r = (
        (0 if last else 1)
        + 2 * m  # log-weights
        + 2 * (G - 1)
        + 3 * G  # softmax
        + 2 * m * V  # the two products
        + 3 * V  # difference, (.)^+, sum
        + 2 * V  # query term: product, sum
        + (0 if last else 2 * V)  # max-slot term: product, sum
        + (V - 1)
        + 1  # decision
    )
    reduce = int((N - 1).clamp(min=0).sum()) * 2 + int((m - N - 1).clamp(min=0).sum())
    return fixed + Q * per_q + L * R * per_key_r + R * V * reduce


def prefix(
    ckeys: Int[Tensor, "keys 4"], ok: Bool[Tensor, " keys"], V: int, n: int
) -> Int[Tensor, "d_vocab_q d_vocab_max n_ctx"]:
    """``istar[q, m, c]``: the largest i* with every count key (q, m, c, 1 .. i*) proven."""
    flags = torch.zeros(V, V, n, n, dtype=torch.bool)  # [q, m, c, i - 1]
    good = ckeys[ok]
    flags[good[:, 0], good[:, 1], good[:, 2], good[:, 3] - 1] = True
    return flags.to(torch.int64).cumprod(dim=3).sum(dim=3)


def covered(istar: Tensor, N: Tensor) -> int:
    """Inputs of the counted count keys: sum over (q, m, c) of
    C(n-1, c) sum_{i = 1 .. i*} C(c, i) u^i N^(c-i), u = m - N (exact ints)."""
    n = N.shape[-1]
    return sum(
        covered_one(n, m, c, int(N[q, m, c]), int(istar[q, m, c]))
        for q, m, c in torch.nonzero(istar > 0).tolist()
    )


def covered_one(n: int, m: int, c: int, N: int, istar: int) -> int:
    """C(n-1, c) sum_{i = 1 .. istar} C(c, i) (m - N)^i N^(c-i)."""
    inner = sum(math.comb(c, i) * (m - N) ** i * N ** (c - i) for i in range(1, istar + 1))
    return math.comb(n - 1, c) * inner
