"""Cubic proof, step (2): pessimal ablation of the output logits per slot group and per class of
output logits, and step (5a): the positional log-weights of the two extreme placements. See the
package docstring for the proof.

Shape glossary (core/circuits.py): ``d_vocab_q`` query token, ``d_vocab_max`` max token,
``d_vocab_k`` (key/non-max) token, ``d_vocab_out`` output logit x, ``n_ctx`` positions; ``n_c`` =
n_ctx - 2 counts c = 1 .. n_ctx - 2; ``placement`` is r in {0: max tokens on the lowest
positional scores, 1: on the highest}; ``cls`` is the class of output logits, 0: x = k,
1: x not in {m, k}; ``group`` is the slot group (0: max, 1: non-max, 2: query).

Per-slot terms (centred on the max token m; all exact real functions of the weights):
    Dmax[q, m, x] = EUPU[q, x] - EUPU[q, m] + EVOU[m, x] - EVOU[m, m] + PVnq[m, x]
    Dk[q, m, k, x] = EUPU[q, x] - EUPU[q, m] + EVOU[k, x] - EVOU[k, m] + PVnq[m, x]
    Dz[q, m, x]   = W[q, x] - W[q, m],  W = EUPU + EVOU + PVOU[n-1]  (query slot, token q)
with PVnq[m, x] = max_{p < n-1} (PVOU[p, x] - PVOU[p, m]).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core import maxplus
from compact_proofs.core.rigorous import Approx, Ops


@dataclass(frozen=True)
class SlotTables:
    """Tables shared by every key (V^2 work, computed once)."""

    EUPU: Approx  # [d_vocab_q, d_vocab_out]
    EVOU: Approx  # [d_vocab_k, d_vocab_out]
    pv: Approx  # [d_vocab_max, d_vocab_out]: PVnq
    own: Approx  # [d_vocab_max, d_vocab_out]: EVOU[m, x] + PVnq[m, x]
    base: Approx  # [d_vocab_q, d_vocab_max]: EUPU[q, m] + EVOU[m, m]
    W: Approx  # [d_vocab_q, d_vocab_out]
    Ck: Approx  # [d_vocab_max, d_vocab_k]: EVOU[k, k] - EVOU[k, m] + PVnq[m, k]


def slot_tables(EUPU: Approx, EVOU: Approx, PVOU: Approx, ops: Ops) -> SlotTables:
    """Cost: ``slot_tables_flops``."""
    V, n = EVOU.shape[0], PVOU.shape[0]
    idx = torch.arange(V)
    centred = ops.sub(
        PVOU[: n - 1].map_layout(lambda t: t.unsqueeze(0)),  # [1, p, x]
        PVOU[: n - 1].map_layout(lambda t: t.T.unsqueeze(2)),  # [m, p, 1]
        label="cubic:ov",
    )  # [m, p, x]
    pv = ops.amax(centred, dim=1, label="cubic:ov")  # PVnq [m, x]
    own = ops.add(EVOU, pv, label="cubic:ov")
    base = ops.add(EUPU, EVOU[idx, idx][None, :], label="cubic:ov")
    W = ops.add(ops.add(EUPU, EVOU, label="cubic:ov"), PVOU[n - 1 :], label="cubic:ov")
    EVOU_t = EVOU.map_layout(lambda t: t.T)  # [m, k] = EVOU[k, m]
    Ck = ops.add(ops.sub(EVOU[idx, idx][None, :], EVOU_t, label="cubic:ov"), pv, label="cubic:ov")
    return SlotTables(EUPU=EUPU, EVOU=EVOU, pv=pv, own=own, base=base, W=W, Ck=Ck)


def slot_tables_flops(V: int, n: int) -> int:
    """PVnq (n-1) V^2 + V^2 (n-2); own V^2; base V^2; W 2 V^2; Ck 2 V^2."""
    return (n - 1) * V * V + V * V * (n - 2) + 6 * V * V


# Index comparisons per triple of ``triple_values`` (``first_not_excluded``: 2 x 1 + 3 x 2 x 2).
TRIPLE_INT_OPS = 14


@dataclass(frozen=True)
class RowTops:
    """Top entries of the rows the maxima over output logits are read from.

    ``W``/``direct``: the min(3, V) largest of W[q, :] and EUPU[q, :] per query q (two
    exclusions m, k leave at least one when V >= 3). Built once.
    """

    W: Approx  # [d_vocab_q, 3]
    W_idx: Tensor  # [d_vocab_q, 3]
    direct: Approx  # [d_vocab_q, 3]
    direct_idx: Tensor  # [d_vocab_q, 3]


def row_top_count(V: int) -> int:
    return min(3, V)


def row_tops(st: SlotTables, ops: Ops) -> RowTops:
    """Cost: ``row_tops_flops``."""
    k = row_top_count(st.EUPU.shape[0])
    W, W_idx = ops.top_k(st.W, k, label="cubic:ov")
    direct, direct_idx = ops.top_k(st.EUPU, k, label="cubic:ov")
    return RowTops(W=W, W_idx=W_idx, direct=direct, direct_idx=direct_idx)


def row_tops_flops(V: int) -> int:
    k = row_top_count(V)
    return 2 * V * (k * (V - 1) - k * (k - 1) // 2)


@dataclass(frozen=True)
class LeftoverTables:
    """The d_vocab^3-type maxima, computed only for the (q, m) and (m, k) pairs of the triples
    the screen leaves to the per-triple tests (``leftover_tables``); V >= 3.

    ``top``/``idx`` ``[pairs, 2]``: for the pair ``pair_of[t]`` of triple t, the largest over
    x != m of EUPU[q, x] + own[m, x] (at x = idx[:, 0]), then the largest over x not in
    {m, idx[:, 0]} (index -1), computed only where a leftover triple of the pair has
    k = idx[:, 0] (elsewhere -inf, never read: ``first_not_excluded`` with x = k excluded
    stops at the first entry). So for every leftover triple, ``first_not_excluded`` with k
    excluded gives the max over x not in {m, k}.
    ``ev_nk`` ``[mk]``: max_{x not in {m, k}} EVOU[k, x] - EVOU[k, m] + PVnq[m, x], for the
    (m, k) pair ``mk_of[t]`` of triple t (full rows: the sorted rows of EVOU and PVnq settle
    only about half of these from their 8 largest entries, on Max-of-4 seed 123).
    """

    top: Approx
    idx: Tensor
    pairs: Int[Tensor, " pairs"]  # q * d_vocab + m, ascending
    has_second: Bool[Tensor, " pairs"]  # the runner-up was computed
    pair_of: Int[Tensor, " triples"]
    ev_nk: Approx
    mk_of: Int[Tensor, " triples"]
    sorted_rows: int  # rows of EUPU and own sorted for the pairs' maxima
    tries: list[int]  # the maxima tried at each depth, then in full (``maxplus.max_of_sums``)
    # those sorted rows, for later stages: EUPU[q] of the queries ``eu_of`` >= 0 (row
    # eu_of[q]), own[m] of the max tokens ``own_of`` >= 0 (each [d_vocab], -1: not sorted)
    eu: maxplus.SortedRows
    eu_of: Int[Tensor, " d_vocab"]
    own: maxplus.SortedRows
    own_of: Int[Tensor, " d_vocab"]


def leftover_tables(
    st: SlotTables,
    q: Int[Tensor, " triples"],
    m: Int[Tensor, " triples"],
    k: Int[Tensor, " triples"],
    ops: Ops,
    chunk: int,
) -> LeftoverTables:
    """Cost: ``leftover_tables_flops`` with the recorded ``sorted_rows`` and ``tries``. The
    pairs' maxima of EUPU[q, x] + own[m, x] come from the sorted rows of EUPU (per q) and own
    (per m) (``maxplus.max_of_sums``; the same floats as the full rows); per distinct (m, k),
    2V; independent of ``chunk`` (rows per working tensor)."""
    V = st.EUPU.shape[0]
    pairs, pair_of = torch.unique(q * V + m, return_inverse=True)
    mks, mk_of = torch.unique(m * V + k, return_inverse=True)
    pq, pm = pairs // V, pairs % V
    qs, q_row = torch.unique(pq, return_inverse=True)
    ms, m_row = torch.unique(pm, return_inverse=True)
    eu, own = st.EUPU[qs], st.own[ms]
    s_eu = maxplus.sort_rows(eu, ops, label="cubic:ov")
    s_own = maxplus.sort_rows(own, ops, label="cubic:ov")

    def maxima(sel: Tensor, exclude: Tensor) -> tuple[Approx, Tensor, Tensor]:
        return maxplus.max_of_sums(
            eu, s_eu, q_row[sel], own, s_own, m_row[sel], exclude, ops, label="cubic:ov"
        )

    every = torch.arange(pairs.numel())
    first, first_idx, stages = maxima(every, pm[:, None])
    second = torch.full_like(first.mid, -torch.inf)
    need = torch.unique(pair_of[k == first_idx[pair_of]])  # pairs whose first is some k
    if need.numel():
        runner, _, more = maxima(need, torch.stack([pm[need], first_idx[need]], -1))
        second[need] = runner.mid
        stages = torch.cat([stages, more])
        first = Approx(first.mid, max(first.rad, runner.rad), max(first.mag, runner.mag))
    evs = []
    for s in range(0, max(mks.numel(), 1), chunk):  # at least once: empty tables
        mm, kk = mks[s : s + chunk] // V, mks[s : s + chunk] % V
        r = ops.add(st.pv[mm], st.EVOU[kk], label="cubic:ov")  # [Q, x]
        best = ops.amax_excluding(r, dim=1, exclude=torch.stack([mm, kk], -1), label="cubic:ov")
        evs.append(ops.sub(best, st.EVOU[kk, mm], label="cubic:ov"))
    return LeftoverTables(
        top=Approx(torch.stack([first.mid, second], 1), first.rad, first.mag),
        idx=torch.stack([first_idx, torch.full_like(first_idx, -1)], 1),
        pairs=pairs,
        has_second=torch.zeros(pairs.numel(), dtype=torch.bool).index_fill_(0, need, True),
        pair_of=pair_of,
        ev_nk=Ops.cat(evs, dim=0),
        mk_of=mk_of,
        sorted_rows=qs.numel() + ms.numel(),
        tries=maxplus.tries(stages, V),
        eu=s_eu,
        eu_of=_row_of(qs, V),
        own=s_own,
        own_of=_row_of(ms, V),
    )


def _row_of(tokens: Int[Tensor, " rows"], V: int) -> Int[Tensor, " d_vocab"]:
    """Row index of each token in ``tokens`` (-1 for the others)."""
    out = torch.full((V,), -1, dtype=torch.int64)
    out[tokens] = torch.arange(tokens.numel())
    return out


def leftover_rows(
    lt: LeftoverTables, q: Tensor, m: Tensor, k: Tensor, V: int
) -> tuple[Int[Tensor, " keys"], Bool[Tensor, " keys"]]:
    """Row of the pair (q, m) in ``lt`` per triple (q, m, k), and whether it is usable:
    the pair is there, and ``first_not_excluded`` of its row with k excluded is the max over
    x not in {m, k} (its second maximum is computed when k is its first). Every leftover
    triple is usable (index work only)."""
    code = q * V + m
    row = torch.searchsorted(lt.pairs, code).clamp(max=max(lt.pairs.numel() - 1, 0))
    if lt.pairs.numel() == 0:
        return row, torch.zeros_like(code, dtype=torch.bool)
    usable = (lt.pairs[row] == code) & ((lt.idx[row, 0] != k) | lt.has_second[row])
    return row, usable


def leftover_tables_flops(V: int, sorted_rows: int, tries: list[int], mks: int) -> int:
    """``sorted_rows`` rows sorted (V - 1 each), the pairs' maxima tried ``tries`` times per
    depth and in full (``maxplus.max_of_sums_flops``), ``mks`` distinct (m, k) (2V each)."""
    return sorted_rows * (V - 1) + maxplus.max_of_sums_flops(V, tries) + mks * (V + (V - 1) + 1)


def triple_values(
    st: SlotTables,
    rows: RowTops,
    lt: LeftoverTables | None,
    sel: Int[Tensor, " triples"],
    q: Int[Tensor, " triples"],
    m: Int[Tensor, " triples"],
    k: Int[Tensor, " triples"],
    ops: Ops,
) -> Approx:
    """``vals[t, cls, group]``: upper bounds on max_{x in cls} of each slot group's term, for
    the leftover triples ``sel`` (indices into ``lt``'s triples) = (q, m, k).

    cls 0 (x = k): Dmax[q,m,k], Dk[q,m,k,k], Dz[q,m,k] (exact values).
    cls 1 (x not in {m, k}): max_x Dmax, max_x EUPU-part + max_x EVOU/PVnq-part (>= max_x Dk),
    max_x Dz, each max read from the row tops or ``lt`` (``first_not_excluded``). ``lt`` is None
    when d_vocab = 2 (class 1 is empty; class 0 is repeated).
    Cost per triple: 5 (class 0) + 4 + 3 selections (class 1), and 14 integer comparisons.
    """
    eu_q_m = st.EUPU[q, m]
    d_max = ops.sub(
        ops.add(st.EUPU[q, k], st.own[m, k], label="cubic:lw"), st.base[q, m], label="cubic:lw"
    )
    d_k = ops.add(ops.sub(st.EUPU[q, k], eu_q_m, label="cubic:lw"), st.Ck[m, k], label="cubic:lw")
    d_z = ops.sub(st.W[q, k], st.W[q, m], label="cubic:lw")
    cls0 = Ops.stack([d_max, d_k, d_z], dim=-1)
    if lt is None:
        return Ops.stack([cls0, cls0], dim=1)
    p = lt.pair_of[sel]
    mk = torch.stack([m, k], dim=-1)  # [T, 2]
    max_slot = ops.first_not_excluded(lt.top[p], lt.idx[p], k[:, None], label="cubic:ov")
    query_slot = ops.first_not_excluded(rows.W[q], rows.W_idx[q], mk, label="cubic:ov")
    direct = ops.first_not_excluded(rows.direct[q], rows.direct_idx[q], mk, label="cubic:ov")
    v_max = ops.sub(max_slot, st.base[q, m], label="cubic:lw")
    eu_nk = ops.sub(direct, eu_q_m, label="cubic:lw")
    v_k = ops.add(eu_nk, lt.ev_nk[lt.mk_of[sel]], label="cubic:lw")
    v_z = ops.sub(query_slot, st.W[q, m], label="cubic:lw")
    return Ops.stack([cls0, Ops.stack([v_max, v_k, v_z], dim=-1)], dim=1)  # [T, 2, 3]


def query_scores(EQKE_s: Approx, EQKP_s: Approx, ops: Ops) -> Approx:
    """``z[q] = (EQKE[q, q] + EQKP[q, n-1]) / s``: the query slot's score. Cost: V."""
    V = EQKE_s.shape[0]
    idx = torch.arange(V)
    return ops.add(EQKE_s[idx, idx], EQKP_s[:, -1], label="cubic:attn")


def placement_log_weights(EQKP_s: Approx, ops: Ops) -> Approx | None:
    """Log-weights of the max and non-max slot groups in the two extreme placements.

    ``G[q, c-1, r, 0] = log sum_{p in max slots} exp(EQKP_s[q, p])`` and ``G[q, c-1, r, 1]`` the
    same over the c non-max slots, for c = 1 .. n-2 (the cases with both groups non-empty); in
    placement r = 0 the n-1-c max slots are the lowest positional scores, in r = 1 the highest.
    Returns None when n_ctx = 2 (no such c).
    Cost: sorting V (n - 2); per c four log-sum-exps over V rows of total length 2 (n - 1),
    i.e. 8 V (n - 1) per c (a log-sum-exp of length L costs 4 V L).
    """
    n = EQKP_s.shape[1]
    if n < 3:
        return None
    asc = ops.sort(EQKP_s[:, : n - 1], dim=1, label="cubic:attn")  # [q, n-1] ascending
    per_c = []
    for c in range(1, n - 1):
        n_max = n - 1 - c
        lo = [  # r = 0: max tokens on the n_max lowest scores
            ops.logsumexp(asc[:, :n_max], dim=1, label="cubic:attn"),
            ops.logsumexp(asc[:, n_max:], dim=1, label="cubic:attn"),
        ]
        hi = [  # r = 1: max tokens on the n_max highest scores
            ops.logsumexp(asc[:, c:], dim=1, label="cubic:attn"),
            ops.logsumexp(asc[:, :c], dim=1, label="cubic:attn"),
        ]
        per_c.append(Ops.stack([Ops.stack(lo, dim=1), Ops.stack(hi, dim=1)], dim=1))
    return Ops.stack(per_c, dim=1)  # [q, n_c, 2, 2]


def every_c_ranges(groups: Approx | None, ops: Ops) -> Approx | None:
    """``R[q, lo/hi, group]``: the min and max over every c = 1 .. n-2 and both extreme
    placements of the group log-weights ``groups[q, c-1, r, group]``. Every placement's
    log S(pi) and log(T - S(pi)) lie between the extremes of its c, hence in these ranges.
    None when n_ctx = 2 (no such c). Cost: 4 V (2 (n - 2) - 1)."""
    if groups is None:
        return None
    flat = groups.map_layout(lambda t: t.flatten(1, 2))  # [q, (c, r), group]
    lo = ops.amin(flat, dim=1, label="cubic:attn")
    hi = ops.amax(flat, dim=1, label="cubic:attn")
    return Ops.stack([lo, hi], dim=1)


def pessimize_flops(V: int, n: int) -> int:
    """Closed form of the ledger total of ``slot_tables``, ``row_tops``, ``query_scores``,
    ``placement_log_weights`` and ``every_c_ranges``."""
    z = V
    groups = 0 if n < 3 else V * (n - 2) + (n - 2) * 8 * V * (n - 1)
    ranges = 0 if n < 3 else 4 * V * (2 * (n - 2) - 1)
    return slot_tables_flops(V, n) + row_tops_flops(V) + z + groups + ranges
