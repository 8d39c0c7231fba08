"""The near tier: a subcubic proof's keys extended by one non-max token close to the max.

A subcubic key (q, m, c) with gap g covers the inputs whose non-max tokens are all <= m - g
("far"). On a trained Max-of-4 model about 8% of the inputs are correct but outside every
covered key, and 95% of those have exactly one non-max token in the band (m - g, m): the gap is
chosen for the worst case of every non-max token close to m. The near tier covers, for a key and
a second gap h with 1 <= h < g (the certificate's ``near[q, m, c]``; 0 for none), the inputs of
the key's (q, m, c) with EXACTLY ONE non-query non-max token in the band m - g < k <= m - h and
all other non-max tokens (the query too when q < m) <= m - g.

Notation as in ``bounds``: A_s, pmax, pmin, eps_s, POS_s = pos_s (scores / s); L, R, R+-, W_pref,
gap_eu of ``bounds.LogitTables``; avg, base of the mean_query+diff attention handling. c' is the
number of non-query non-max tokens (c' = c for q = m, c - 1 for q < m), n_max = n - 1 - c' the
number of non-query slots holding m, n_far = c' - 1.

Claim: for a key (q, m, c) with valid gap g (``bounds.valid``), c' >= 1 and 1 <= h < g, let
    D^far in [A_s[q,m] - pmax[q, m-g] - eps_s[q],  A_s[q,m] - pmin[q, m-g] + eps_s[q]],
    D^near in [A_s[q,m] - pmax[q, m-h] - eps_s[q],  A_s[q,m] - pmin[q, m-h] + eps_s[q]],
and the three log-weights range over the intervals (``asc`` the non-query POS_s[q] sorted
ascending, lse = log-sum-exp, ``+ POS_s[q, n-1]`` for the query slot where it belongs):
    lS (max slots):  lse(asc[:n_max] (+ query if q = m)) .. lse(asc[-n_max:] (+ query if q = m)),
    lF (far slots):  lse(asc[:n_far] (+ query if q < m)) - D^far_hi .. lse(asc[-n_far:] (+ query
                     if q < m)) - D^far_lo   (no far group when n_far = 0 and q = m),
    lN (near slot):  asc[0] - D^near_hi .. asc[-1] - D^near_lo.
For a vertex of that box (each log-weight at an end of its interval) let w = (w_S, w_F, w_N) =
exp(l - M) (any common shift M; w_F = 0 without a far group), Z = w_S + w_F + w_N and
    T_r = (gap_eu[q,m] + base_r) Z + max(d R+[m], d R-[m]) + w_F W_f + w_N W_n,
    d = w_S - avg_r Z,  W_f = W_pref[m, m-g],  W_n = W_pref[m, m-h],
with (avg_r, base_r) the reference attention of endpoint r and its base (``bounds``). If for some
r every one of the 8 vertices has T_r < 0, every input of the tier is correct.
Proof: take an input of the tier and divide every attention weight by exp(EQKE[q, m] / s): a
max slot p weighs exp(POS_s[q,p]) (the query slot too when q = m), a non-max
slot holding k weighs exp(POS_s[q,p] - delta_p) with delta_p = (EQKE[q,m] - EQKE[q,k]) / s. By
the eqke claim (*) (``bounds``, attention claim), delta_p lies in the D^far range for k <= m - g
(the query q < m included: q <= m - g by validity) and in the D^near range for k <= m - h. So the
group sums S, F, N (max, far, near) lie in the exponentials of the intervals above (the sums of
exp(POS_s) over any n_max, or n_far, of the non-query slots lie between the sums over the lowest
and highest ones; exp is increasing). With a = S / Z*, a_F = F / Z*, a_N = N / Z* (Z* = S + F + N)
the attention to the max, far and near groups, by the path decomposition and sum_p alpha_p = 1,
for x != m:
    logit(x) - logit(m) = EUPU[q,x] - EUPU[q,m] + sum_p alpha_p (PVOU[p,x] - PVOU[p,m])
                          + a R[m,x] + sum_{p non-max} alpha_p (EVOU[t_p,x] - EVOU[t_p,m])
                       <= gap_eu + L[m,x] + a R[m,x] + a_F W_pref[m,m-g] + a_N W_pref[m,m-h]
(the direct claim (*) and PV* as in ``bounds``; EVOU[k,x] - EVOU[k,m] <= max_{x' != m} (...)
<= W_pref[m, j] for k <= j), and max_x (L + a R) <= base_r + max((a - avg_r) R+, (a - avg_r) R-)
(the mean_query+diff step of ``bounds``). The resulting bound B_r(S, F, N) is the larger of two
linear-fractional functions of (S, F, N) over the positive denominator Z*, each quasiconvex, so
its maximum over the box is attained at a vertex; at a vertex, T_r = Z B_r (times the positive
exp(-M)), so T_r < 0 at all 8 vertices gives B_r < 0 on the whole box, hence on the input.  QED
Count: the tier of (q, m, c) holds C(n-1, c') c' (g - h) (m - g + 1)^(c'-1) inputs (the
non-query non-max positions, the near one among them, its g - h values, m - g + 1 values for
each far one); tiers of different keys, and a tier and its key's far set, are disjoint (q, m, c
and the number of non-max tokens above m - g are functions of the input).
Cost: ``tier_flops``: the position sums once (O(d_vocab n_ctx^2)), then ``KEY_FLOPS`` per tier
key (rigorous ``Ops``, counted as they run; tests/test_near_tier.py asserts the closed form).
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
# Per tier key: two score ranges (8), the far and near log-weight ends (4), the 8 vertices'
# exp-shifted weights (64), the empty far group (8), Z (16), the far and near terms (24), and per
# endpoint r: d (16), the R term (24), the level (9), T (16), the max over vertices (7) and the
# decision (2).
KEY_FLOPS = 8 + 4 + 64 + 8 + 16 + 24 + 2 * (16 + 24 + 9 + 16 + 7 + 2)


def tier_flops(V: int, n: int, n_keys: int) -> int:
    """Ledger total of the label ``subcubic:tier``: ``position_logs`` (the sort, V (n - 2); per c'
    and isq, both ends of log-sum-exps over n - 1 scores in all, 4 V each per score) and
    ``KEY_FLOPS`` per tier key."""
    return V * max(n - 2, 0) + 16 * V * (n - 1) ** 2 + KEY_FLOPS * n_keys


@dataclass(frozen=True)
class Keys:
    """Tier keys, one entry each: query, max, c - 1 (the key's index), gap g and near gap h."""

    q: Int[Tensor, " keys"]
    m: Int[Tensor, " keys"]
    ci: Int[Tensor, " keys"]
    g: Int[Tensor, " keys"]
    h: Int[Tensor, " keys"]

    def non_query_nonmax(self) -> Tensor:
        """c' = c for q = m, c - 1 for q < m."""
        return torch.where(self.q == self.m, self.ci + 1, self.ci)


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
    """The tier keys of a certificate's ``near`` [V, V, n-1] (0: no tier); a nonzero entry must
    lie in [1, g - 1] on an eligible key."""
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
    return Keys(q, m, ci, g, h)


def proven(
    k: Keys,
    at: bounds.AttnTables,
    lt: bounds.LogitTables,
    avg: Approx,
    base: Approx,
    pl: PositionLogs,
    ops: Ops,
) -> Bool[Tensor, " keys"]:
    """The claim's test for each tier key (``avg``, ``base`` [m, n-1, 1, r] as in the check)."""
    if k.q.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    q, m, ci = k.q, k.m, k.ci
    isq = (q == m).long()
    cp = k.non_query_nonmax()
    eps = at.eps_s.map_layout(lambda t: t.reshape(-1).expand(at.A_s.shape[0])[q])
    Am = at.A_s[q, m]

    def score_range(j: Tensor) -> tuple[Approx, Approx]:
        lo = ops.sub(ops.sub(Am, at.pmax[q, j], label=LT), eps, label=LT)
        hi = ops.add(ops.sub(Am, at.pmin[q, j], label=LT), eps, label=LT)
        return lo, hi

    far_lo, far_hi = score_range(m - k.g)
    near_lo, near_hi = score_range(m - k.h)
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
    wS, wN = w[:, :, 0], w[:, :, 2]
    none = Approx(torch.zeros_like(wS.mid), 0.0, 0.0)
    wF = ops.where(has_far[:, None].expand_as(wS.mid), w[:, :, 1], none, label=LT)  # empty: 0
    Z = ops.add(ops.add(wS, wF, label=LT), wN, label=LT)  # [K, 8]
    col = lambda a: a.map_layout(lambda t: t[:, None])  # noqa: E731
    spread = ops.add(
        ops.mul(wF, col(lt.W_pref[m, m - k.g]), label=LT),
        ops.mul(wN, col(lt.W_pref[m, m - k.h]), label=LT),
        label=LT,
    )
    eu = lt.gap_eu.map_layout(lambda t: t.expand(at.A_s.shape)[q, m])
    out = torch.zeros(q.numel(), dtype=torch.bool)
    for r in (0, 1):
        av, bs = col(avg[m, ci, 0, r]), col(base[m, ci, 0, r])
        d = ops.sub(wS, ops.mul(av, Z, label=LT), label=LT)
        term = ops.maximum(
            ops.mul(d, col(lt.R_plus[m]), label=LT), ops.mul(d, col(lt.R_minus[m]), label=LT), LT
        )
        level = ops.mul(ops.add(col(eu), bs, label=LT), Z, label=LT)
        T = ops.add(ops.add(level, term, label=LT), spread, label=LT)
        out |= ops.proven_negative(ops.amax(T, dim=1, label=LT), label=LT)
    return out


def count(k: Keys, ok: Tensor, n: int) -> int:
    """Inputs of the proven tiers: C(n-1, c') c' (g - h) (m - g + 1)^(c'-1) each (exact ints)."""
    cp = k.non_query_nonmax()
    total = 0
    rows = zip(cp[ok].tolist(), k.m[ok].tolist(), k.g[ok].tolist(), k.h[ok].tolist(), strict=True)
    for c_, m_, g_, h_ in rows:
        total += math.comb(n - 1, c_) * c_ * (g_ - h_) * (m_ - g_ + 1) ** (c_ - 1)
    return total


def covered(tokens: Tensor, k: Keys, ok: Tensor, V: int) -> Bool[Tensor, " inputs"]:
    """Which of ``tokens`` [N, n] (query last) lie in a proven tier."""
    n = tokens.shape[1]
    near = torch.zeros(V, V, n - 1, dtype=torch.int64)
    gap = torch.zeros(V, V, n - 1, dtype=torch.int64)
    near[k.q[ok], k.m[ok], k.ci[ok]] = k.h[ok]
    gap[k.q[ok], k.m[ok], k.ci[ok]] = k.g[ok]
    q, m = tokens[:, -1], tokens.max(dim=1).values
    nonmax = tokens < m[:, None]
    ci = (nonmax.sum(dim=1) - 1).clamp(min=0)
    g, h = gap[q, m, ci], near[q, m, ci]
    slots = tokens[:, :-1]
    in_band = (slots > (m - g)[:, None]) & (slots <= (m - h)[:, None]) & (slots < m[:, None])
    far_ok = (torch.where(nonmax, tokens, -1) <= (m - g)[:, None]) | in_band_full(in_band, n)
    return (h > 0) & (in_band.sum(dim=1) == 1) & far_ok.all(dim=1)


def in_band_full(in_band: Tensor, n: int) -> Tensor:
    """``in_band`` [N, n-1] padded with False for the query slot [N, n]."""
    return torch.cat([in_band, torch.zeros(in_band.shape[0], 1, dtype=torch.bool)], dim=1)
