"""The near tier: a subcubic proof's keys extended by one non-max token close to the max.

A subcubic key (q, m, c) with gap g covers the inputs whose non-max tokens are all <= m - g
("far"). On a trained Max-of-4 model about 11% of the inputs are correct but outside every
covered key, and most of those lie in a proven key with exactly one non-max token in the band
(m - g, m): the gap is chosen for the worst case of every non-max token close to m. The near
tier covers, for a key and a second gap h with 1 <= h < g (the certificate's ``near[q, m, c]``;
0 for none), the inputs of the key's (q, m, c) with EXACTLY ONE non-query non-max token k in the
band m - g < k <= m - h and all other non-max tokens (the query too when q < m) <= m - g; each
band token k is its own CLAIM, counted if proven.

Notation as in ``bounds``: A_s, pmax, pmin, eps_s, POS_s = pos_s (scores / s); L, R, R+-, W_pref,
gap_eu of ``bounds.LogitTables``; avg, base of the mean_query+diff attention handling. c' is the
number of non-query non-max tokens (c' = c for q = m, c - 1 for q < m), n_max = n - 1 - c' the
number of non-query slots holding m, n_far = c' - 1. For the near token k:
E_k = EVOU[k, k] - EVOU[k, m] (its OV row at its own output) and
E2_k = max_{x != m, k} EVOU[k, x] - EVOU[k, m] (at every other output).

Claim: for a key (q, m, c) with valid gap g (``bounds.valid``), c' >= 1, and a token k with
m - g < k < m, let
    D^far in [A_s[q,m] - pmax[q, m-g] - eps_s[q],  A_s[q,m] - pmin[q, m-g] + eps_s[q]],
    D^k   in [A_s[q,m] - A_s[q,k] - eps_s[q],      A_s[q,m] - A_s[q,k] + eps_s[q]],
and the three log-weights range over the intervals (``asc`` the non-query POS_s[q] sorted
ascending, lse = log-sum-exp, ``+ POS_s[q, n-1]`` for the query slot where it belongs):
    lS (max slots):  lse(asc[:n_max] (+ query if q = m)) .. lse(asc[-n_max:] (+ query if q = m)),
    lF (far slots):  lse(asc[:n_far] (+ query if q < m)) - D^far_hi .. lse(asc[-n_far:] (+ query
                     if q < m)) - D^far_lo   (no far group when n_far = 0 and q = m),
    lN (near slot):  asc[0] - D^k_hi .. asc[-1] - D^k_lo.
For a vertex of that box (each log-weight at an end of its interval) let w = (w_S, w_F, w_N) =
exp(l - M) (any common shift M; w_F = 0 without a far group), Z = w_S + w_F + w_N, d = w_S -
avg_r Z and
    T_r = gap_eu[q,m] Z + w_F W_pref[m, m-g] + max(U, U_k),
    U   = base_r Z + max(d R+[m], d R-[m]) + w_N E2_k            (the outputs x != m, k),
    U_k = L[m, k] Z + w_S R[m, k] + w_N E_k                        (the output x = k),
with (avg_r, base_r) the reference attention of endpoint r and its base (``bounds``). If for some
r every one of the 8 vertices has T_r < 0, every input of the tier with near token k is correct.
Proof: take such an input and divide every attention weight by exp(EQKE[q, m] / s): a max slot
p weighs exp(POS_s[q,p]) (the query slot too when q = m), a non-max slot holding t weighs
exp(POS_s[q,p] - delta) with delta = (EQKE[q,m] - EQKE[q,t]) / s. By the eqke claim (*)
(``bounds``, attention claim), delta lies in the D^far range for t <= m - g (the query q < m
included: q <= m - g by validity) and in the D^k range for t = k. So the group sums S, F, N (max,
far, near) lie in the exponentials of the intervals above (the sums of exp(POS_s) over any n_max,
or n_far, of the non-query slots lie between the sums over the lowest and highest ones; exp is
increasing). With a = S / Z*, a_F = F / Z*, a_N = N / Z* (Z* = S + F + N) the attention to the
max, far and near groups, by the path decomposition and sum_p alpha_p = 1, for x != m:
    logit(x) - logit(m) = EUPU[q,x] - EUPU[q,m] + sum_p alpha_p (PVOU[p,x] - PVOU[p,m])
                          + a R[m,x] + a_N e_k(x) + sum_{p far} alpha_p e_{t_p}(x)
                       <= gap_eu + a_F W_pref[m,m-g] + L[m,x] + a R[m,x] + a_N e_k(x),
with e_t(x) = EVOU[t,x] - EVOU[t,m] (the direct claim (*) and PV* as in ``bounds``; a far
token's e_t(x) <= max_{x' != m} e_t(x') <= W_pref[m, m-g]). At x = k the last three terms are
U_k / Z exactly (e_k(k) = E_k); at x != m, k they are at most max_x (L + a R) + a_N E2_k <=
base_r + max((a - avg_r) R+, (a - avg_r) R-) + a_N E2_k (the mean_query+diff step of
``bounds``), i.e. U / Z. The resulting
bound B_r(S, F, N) = max over three linear-fractional functions of (S, F, N) with the positive
denominator Z*, each quasiconvex, so its maximum over the box is attained at a vertex; at a
vertex, T_r = Z B_r (times the positive exp(-M)), so T_r < 0 at all 8 vertices gives B_r < 0 on
the whole box, hence on the input.                                                           QED
Count: the claim (q, m, c, k) holds C(n-1, c') c' (m - g + 1)^(c'-1) inputs (the non-query
non-max positions, the near one among them, m - g + 1 values for each far one); claims of
different keys or tokens, and a claim and its key's far set, are disjoint (q, m, c, the number
of non-max tokens above m - g and the one such token are functions of the input).
Cost: ``tier_flops``: the position sums and the top three entries of each EVOU row once
(O(d_vocab n_ctx^2 + d_vocab^2)), then ``CLAIM_FLOPS`` per claim (rigorous ``Ops``, counted as
they run; tests/test_near_tier.py asserts the closed form).
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.subcubic import bounds

LT = "subcubic:tier"
# The variant whose keys the near tier extends: the best of the 100 on every paper seed.
BASE_NAME = "EUPUMaxDiffExactAttnMeanQueryDiffAttnErrExactEqkeMaxDiffExact"
TOP = 3  # top entries kept per EVOU row: E2_k excludes two outputs (m and k)
CHUNK = 1 << 16  # claims evaluated at once ([claims, 8, 3] float64 tensors: about 12 MB each)
# Per claim: the far score range (4) and the near token's (3), the far and near log-weight ends
# (4), the 8 vertices' exp-shifted weights (64), the empty far group (8), Z (16), the direct and
# far terms (24), E_k and E2_k (3), U_k (40); per endpoint r: d (16), the R term (24), U (32),
# the max with U_k (8), T (8), the max over vertices (7) and the decision (1).
CLAIM_FLOPS = 4 + 3 + 4 + 64 + 8 + 16 + 24 + 3 + 40 + 2 * (16 + 24 + 32 + 8 + 8 + 7 + 1)


def tier_flops(V: int, n: int, n_claims: int) -> int:
    """Ledger total of the label ``subcubic:tier``: ``position_logs`` (the sort, V (n - 2); per c'
    and isq, both ends of log-sum-exps over n - 1 scores in all, 4 V each per score), the top
    ``TOP`` entries of each EVOU row, and ``CLAIM_FLOPS`` per claim."""
    top = V * (TOP * (V - 1) - TOP * (TOP - 1) // 2) if V >= TOP else 0
    return V * max(n - 2, 0) + 16 * V * (n - 1) ** 2 + top + CLAIM_FLOPS * n_claims


@dataclass(frozen=True)
class Keys:
    """Tier claims, one entry each: query, max, c - 1 (the key's index), gap g and the near
    token k (m - g < k < m)."""

    q: Int[Tensor, " claims"]
    m: Int[Tensor, " claims"]
    ci: Int[Tensor, " claims"]
    g: Int[Tensor, " claims"]
    k: Int[Tensor, " claims"]

    def non_query_nonmax(self) -> Tensor:
        """c' = c for q = m, c - 1 for q < m."""
        return torch.where(self.q == self.m, self.ci + 1, self.ci)


@dataclass(frozen=True)
class Tables:
    """What every claim reads: the base variant's attention and logit tables, its reference
    attention ``avg`` and ``base`` ([m, n-1, 1, r], as in the check), the position log-sums and
    the top of each EVOU row."""

    at: bounds.AttnTables
    lt: bounds.LogitTables
    avg: Approx
    base: Approx
    pl: "PositionLogs"
    EVOU: Approx
    top: Approx  # [k, TOP] the largest EVOU[k, x], descending
    top_x: Int[Tensor, "k top"] | None  # ... and their outputs x


def tables(
    at: bounds.AttnTables,
    lt: bounds.LogitTables,
    avg: Approx,
    base: Approx,
    pos_s: Approx,
    EVOU: Approx,
    ops: Ops,
) -> Tables:
    """The ``Tables`` (no EVOU top below d_vocab 3: no key has a band token there)."""
    V = EVOU.shape[1]
    if V >= TOP:
        top, top_x = ops.top_k(EVOU, TOP, label=LT)
    else:
        top, top_x = Approx(torch.zeros(V, 0, dtype=torch.float64), 0.0, 0.0), None
    return Tables(at, lt, avg, base, position_logs(pos_s, ops), EVOU, top, top_x)


@dataclass(frozen=True)
class PositionLogs:
    """Per query q, c' - 1 (c' = 1 .. n-1) and isq (q = m): the log-weight ends of the max
    group (lS), of the far group without its score shift (lF; ``no_far`` where it is empty), and
    the lowest / highest non-query positional score (the near slot's)."""

    lS: Approx  # [q, n-1, isq, end]
    lF: Approx  # [q, n-1, isq, end]
    no_far: Bool[Tensor, "n_c isq"]
    near: Approx  # [q, end]


def position_logs(pos_s: Approx, ops: Ops) -> PositionLogs:
    """The ``PositionLogs`` of ``pos_s`` [q, n]. Cost: a sort of the n-1 non-query scores per
    query, then log-sum-exps over the slices (``Ops.logsumexp``)."""
    V, n = pos_s.shape
    asc = ops.sort(pos_s[:, : n - 1], dim=1, label=LT)  # [q, n-1]
    qp = pos_s[:, n - 1 :]  # [q, 1]
    zero = Approx(torch.zeros(V, dtype=torch.float64), 0.0, 0.0)

    def lse(lo_or_hi: str, count: int, query: bool) -> Approx:
        part = asc[:, :count] if lo_or_hi == "lo" else asc[:, n - 1 - count :]
        parts = ([part] if count else []) + ([qp] if query else [])
        if not parts:
            return zero  # an empty group: a placeholder, masked by the caller
        return ops.logsumexp(Ops.cat(parts, dim=1), dim=1, label=LT)

    lS, lF = [], []
    no_far = torch.zeros(n - 1, 2, dtype=torch.bool)
    for cp in range(1, n):
        n_max, n_far = n - 1 - cp, cp - 1
        s_row, f_row = [], []
        for isq in (False, True):
            s_row.append(Ops.stack([lse(e, n_max, isq) for e in ("lo", "hi")], dim=1))
            f_row.append(Ops.stack([lse(e, n_far, not isq) for e in ("lo", "hi")], dim=1))
            no_far[cp - 1, int(isq)] = n_far == 0 and isq
        lS.append(Ops.stack(s_row, dim=1))
        lF.append(Ops.stack(f_row, dim=1))
    near = Ops.stack([asc[:, 0], asc[:, n - 2]], dim=1)  # [q, end]
    return PositionLogs(Ops.stack(lS, dim=1), Ops.stack(lF, dim=1), no_far, near)


def eligible(q: Tensor, m: Tensor, ci: Tensor, g: Tensor) -> Tensor:
    """Keys that can carry a tier: a valid gap (``bounds.valid``) of at least 2 and c' >= 1."""
    ok_gap = ((q == m) & (m - g >= 0)) | ((q < m) & (q <= m - g))
    cp = torch.where(q == m, ci + 1, ci)
    return ok_gap & (g >= 2) & (cp >= 1)


def keys_of(near: Tensor, gaps: Tensor) -> Keys:
    """The tier claims of a certificate's ``near`` [V, V, n-1] (h; 0: no tier): one per key and
    band token m - g < k <= m - h. A nonzero h must lie in [1, g - 1] on an eligible key."""
    if not isinstance(near, Tensor) or near.shape != gaps.shape or near.dtype != torch.int64:
        raise ProofPreconditionError(
            f"certificate 'near' must be an int64 tensor {list(gaps.shape)}"
        )
    q, m, ci = torch.nonzero(near != 0, as_tuple=True)
    g, h = gaps[q, m, ci], near[q, m, ci]
    if bool((h < 1).any()) or bool((h >= g).any()):
        raise ProofPreconditionError("certificate 'near' entries must be 0 or in [1, gap - 1]")
    if not bool(eligible(q, m, ci, g).all()):
        raise ProofPreconditionError(
            "a 'near' entry is on a key without a tier (invalid gap, or no non-query non-max slot)"
        )
    return band_claims(q, m, ci, g, h)


def band_claims(q: Tensor, m: Tensor, ci: Tensor, g: Tensor, h: Tensor) -> Keys:
    """One claim per key and band token k = m - g + 1 .. m - h."""
    width = g - h
    rep = torch.repeat_interleave(torch.arange(q.numel()), width)
    offset = torch.arange(rep.numel()) - (torch.cumsum(width, 0) - width)[rep]
    return Keys(q[rep], m[rep], ci[rep], g[rep], m[rep] - g[rep] + 1 + offset)


def proven(k: Keys, tb: Tables, ops: Ops) -> Bool[Tensor, " claims"]:
    """The claim's test for each tier claim, ``CHUNK`` claims at a time (the uniform error
    bounds come from the tables, so chunks decide and cost exactly what one pass would)."""
    out = torch.zeros(k.q.numel(), dtype=torch.bool)
    for lo in range(0, k.q.numel(), CHUNK):
        part = Keys(*(x[lo : lo + CHUNK] for x in (k.q, k.m, k.ci, k.g, k.k)))
        out[lo : lo + CHUNK] = _proven(part, tb, ops)
    return out


def _proven(k: Keys, tb: Tables, ops: Ops) -> Bool[Tensor, " claims"]:
    q, m, t = k.q, k.m, k.k
    pl, at = tb.pl, tb.at
    isq = (q == m).long()
    cp = k.non_query_nonmax()
    eps = at.eps_s.map_layout(lambda x: x.reshape(-1).expand(at.A_s.shape[0])[q])
    Am = at.A_s[q, m]
    far_lo = ops.sub(ops.sub(Am, at.pmax[q, m - k.g], label=LT), eps, label=LT)
    far_hi = ops.add(ops.sub(Am, at.pmin[q, m - k.g], label=LT), eps, label=LT)
    gap = ops.sub(Am, at.A_s[q, t], label=LT)
    near_lo, near_hi = ops.sub(gap, eps, label=LT), ops.add(gap, eps, label=LT)
    lS = pl.lS[q, cp - 1, isq]  # [K, end]
    lFp = pl.lF[q, cp - 1, isq]
    lF = Ops.stack(
        [ops.sub(lFp[:, 0], far_hi, label=LT), ops.sub(lFp[:, 1], far_lo, label=LT)], dim=1
    )
    lN = Ops.stack(
        [ops.sub(pl.near[q, 0], near_hi, label=LT), ops.sub(pl.near[q, 1], near_lo, label=LT)],
        dim=1,
    )
    # The 8 vertices (S end, F end, N end), groups last: [K, 8, 3].
    ends = torch.tensor([[i, j, l] for i in (0, 1) for j in (0, 1) for l in (0, 1)])
    logs = Ops.stack([lS[:, ends[:, 0]], lF[:, ends[:, 1]], lN[:, ends[:, 2]]], dim=2)
    w = ops.exp_shifted(logs, dim=2, label=LT)
    has_far = ~pl.no_far[cp - 1, isq]  # [K]
    none = Approx(torch.zeros_like(w.mid[:, :, 0]), 0.0, 0.0)
    wF = ops.where(has_far[:, None].expand_as(none.mid), w[:, :, 1], none, label=LT)  # empty: 0
    out = torch.zeros(q.numel(), dtype=torch.bool)
    for T in bound_times_z(k, tb, w[:, :, 0], wF, w[:, :, 2], ops):
        out |= ops.proven_negative(ops.amax(T, dim=1, label=LT), label=LT)
    return out


def bound_times_z(
    k: Keys, tb: Tables, wS: Approx, wF: Approx, wN: Approx, ops: Ops
) -> list[Approx]:
    """T_r (claim) for r = 0, 1 at group weights wS, wF, wN [claims, points] (the vertices, or
    any weights: T_r / Z bounds max_{x != m} logit(x) - logit(m) for every input whose weights,
    relative to exp(EQKE[q, m] / s), they are)."""
    q, m, ci, t = k.q, k.m, k.ci, k.k
    at, lt, avg, base = tb.at, tb.lt, tb.avg, tb.base
    Z = ops.add(ops.add(wS, wF, label=LT), wN, label=LT)  # [K, points]
    col = lambda a: a.map_layout(lambda x: x[:, None])  # noqa: E731
    eu = lt.gap_eu.map_layout(lambda x: x.expand(at.A_s.shape)[q, m])
    head = ops.add(
        ops.mul(col(eu), Z, label=LT), ops.mul(wF, col(lt.W_pref[m, m - k.g]), label=LT), LT
    )
    # The near token's OV row: at its own output (E_k) and at every other (E2_k).
    at_m = tb.EVOU[t, m]
    E_k = ops.sub(tb.EVOU[t, t], at_m, label=LT)
    others = ops.first_not_excluded(tb.top[t], tb.top_x[t], torch.stack([m, t], dim=1), label=LT)
    E2_k = ops.sub(others, at_m, label=LT)
    U_k = ops.add(
        ops.add(ops.mul(col(lt.L[m, t]), Z, label=LT), ops.mul(wS, col(lt.R[m, t]), label=LT), LT),
        ops.mul(wN, col(E_k), label=LT),
        label=LT,
    )
    out = []
    for r in (0, 1):
        av, bs = col(avg[m, ci, 0, r]), col(base[m, ci, 0, r])
        d = ops.sub(wS, ops.mul(av, Z, label=LT), label=LT)
        term = ops.maximum(
            ops.mul(d, col(lt.R_plus[m]), label=LT), ops.mul(d, col(lt.R_minus[m]), label=LT), LT
        )
        U = ops.add(
            ops.add(ops.mul(bs, Z, label=LT), term, label=LT),
            ops.mul(wN, col(E2_k), label=LT),
            label=LT,
        )
        out.append(ops.add(head, ops.maximum(U, U_k, label=LT), label=LT))
    return out


def count(k: Keys, ok: Tensor, n: int) -> int:
    """Inputs of the proven claims: C(n-1, c') c' (m - g + 1)^(c'-1) each (exact ints)."""
    cp = k.non_query_nonmax()[ok]
    far_values = (k.m - k.g + 1)[ok]
    pairs, mult = torch.unique(torch.stack([cp, far_values], dim=1), dim=0, return_counts=True)
    total = 0  # one term per distinct (c', m - g + 1): at most n d_vocab of them
    for (c_, b), times in zip(pairs.tolist(), mult.tolist(), strict=True):
        total += times * math.comb(n - 1, c_) * c_ * b ** (c_ - 1)
    return total


def covered(tokens: Tensor, k: Keys, ok: Tensor, V: int) -> Bool[Tensor, " inputs"]:
    """Which of ``tokens`` [N, n] (query last) lie in a proven claim."""
    n = tokens.shape[1]
    gap = torch.zeros(V, V, n - 1, dtype=torch.int64)
    claim = torch.zeros(V, V, n - 1, V, dtype=torch.bool)  # [q, m, c - 1, near token]
    gap[k.q, k.m, k.ci] = k.g
    claim[k.q[ok], k.m[ok], k.ci[ok], k.k[ok]] = True
    q, m = tokens[:, -1], tokens.max(dim=1).values
    nonmax = tokens < m[:, None]
    ci = (nonmax.sum(dim=1) - 1).clamp(min=0)
    g = gap[q, m, ci]
    slots = tokens[:, :-1]
    in_band = (slots > (m - g)[:, None]) & (slots < m[:, None])
    far_ok = (torch.where(nonmax, tokens, -1) <= (m - g)[:, None]) | in_band_full(in_band, n)
    near = torch.where(in_band, slots, 0).amax(dim=1)  # the band token, if exactly one
    return (g > 0) & (in_band.sum(dim=1) == 1) & far_ok.all(dim=1) & claim[q, m, ci, near]


def in_band_full(in_band: Tensor, n: int) -> Tensor:
    """``in_band`` [N, n-1] padded with False for the query slot [N, n]."""
    return torch.cat([in_band, torch.zeros(in_band.shape[0], 1, dtype=torch.bool)], dim=1)
