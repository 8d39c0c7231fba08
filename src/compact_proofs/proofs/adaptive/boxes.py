"""Adaptive proof, stage 4: product boxes of inputs with exact positions.

Shape glossary (``core/circuits.py``): ``d_vocab_k`` key token, ``d_vocab_out`` output x,
``slots`` = n_ctx - 1 non-query positions, ``boxes`` a batch of boxes, ``queries`` the query
tokens of one max-token group.

A BOX is (q, m, S_0, ..., S_{n-2}): the inputs with query t[n-1] = q and t_p in S_p for every
non-query position p, where every S_p is either {m} (a max slot) or a subset of [0, m) (a
non-max slot), and some S_p = {m} when q < m. All its inputs have max m and query q.

Claim (box bound): write w_p(k) = exp((EQKE[q, k] + EQKP[q, p]) / s) and
A_p(k, x) = EUPU[q, x] + PVOU[p, x] + EVOU[k, x]. With any common factor Z > 0,
    F[p, k, x] = w_p(k) (A_p(k, x) - A_p(k, m)) / Z,   Fq[x] = (same for the query slot).
For an input t of the box and x != m, Z (sum_p w_p) (logit(x) - logit(m)) = Z Fq[x] + Z sum_p
F[p, t_p, x]... precisely, logit(x) - logit(m) has the sign of G_x(t) = Fq[x] + sum_p F[p, t_p, x].
  (a) If UB = max_{x != m} (Fq[x] + sum_p max_{k in S_p} F[p, k, x]) < 0, every input of the box is
      correct.
  (b) If for some x* != m, LB = Fq[x*] + sum_p min_{k in S_p} F[p, k, x*] > 0, every input of the
      box is incorrect (logit(x*) > logit(m)).
Proof: (1) path decomposition (exact, core/circuits.py): logit(x) = sum_p alpha_p A_p(t_p, x)
with alpha = softmax of the scores, so logit(x) - logit(m) = sum_p alpha_p (A_p(t_p, x) -
A_p(t_p, m)) = G_x(t) Z / sum_p w_p(t_p), a positive multiple of G_x(t). (2) G_x(t) is a sum of
one term per position, each depending only on that position's token, so over a product box its
maximum is the sum of the per-position maxima (and likewise for the minimum). (a) G_x(t) <= UB_x
< 0 for every x != m; (b) G_x*(t) >= LB > 0.                                            QED
  (c) Key-level outputs: with M[p, x] = max_{k <= m} F[p, k, x], every input of the key (q, m)
      (some non-query slot holds m when q < m) has G_x(t) <= KB_x := Fq[x] + sum_p M[p, x]
      + max_p (F[p, m, x] - M[p, x]) (for q = m without the last term). If KB_x < 0, output x
      is below m on every box of the key, so (a) need only take its max over the other
      ("live") outputs.
      Proof: the slot p* holding m contributes F[p*, m, x], every other slot at most M[p, x].
The common factor: the weights are a softmax over all (p, k <= m) scores of the key (q, m) and
the query score (entries for k > m are replaced by a copy of the score of k = m: they only change
Z), so they are well scaled for every input of the key.
Cost: ``table_flops`` per max-token group (tables and live outputs); per box, the reductions over
S_p count (|S_p| - 1) per live output (paper rule), ``prove_flops`` / ``refute_flops``.
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops

LABEL = "adaptive:boxes"
# float64 elements gathered per evaluation chunk (boxes x slots x tokens x outputs): 32 MB
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Tables:
    """F and Fq (module docstring) for the keys (q, m) of one max token m, q in ``qs``."""

    m: int
    qs: Int[Tensor, " queries"]
    F: Approx  # [queries, slots, m + 1 (key token k <= m), d_vocab_out]
    Fq: Approx  # [queries, d_vocab_out]


def tables(
    m: int,
    qs: Int[Tensor, " queries"],
    EQKE_s: Approx,
    EQKP_s: Approx,
    z: Approx,
    EUPU: Approx,
    EVOU: Approx,
    PVOU: Approx,
    ops: Ops,
) -> Tables:
    """F and Fq for the keys (q, m), q in ``qs`` (all q <= m). Cost: ``table_flops``."""
    Q, n = qs.numel(), PVOU.shape[0]
    s1 = n - 1
    ks = torch.arange(m + 1)
    # Scores of every (slot p, token k <= m), then the query's: a softmax row per query.
    sc = ops.add(
        EQKE_s[qs[:, None, None], ks[None, None, :]].map_layout(lambda t: t.expand(Q, s1, m + 1)),
        EQKP_s[qs[:, None], torch.arange(s1)[None, :]].map_layout(
            lambda t: t[:, :, None].expand(Q, s1, m + 1)
        ),
        label=LABEL,
    )  # [Q, slots, m + 1]
    row = Ops.cat(
        [sc.map_layout(lambda t: t.reshape(Q, -1)), z[qs].map_layout(lambda t: t[:, None])], 1
    )
    a = ops.softmax(row, dim=1, label=LABEL)  # common factor Z per query
    a_slots = a[:, :-1].map_layout(lambda t: t.reshape(Q, s1, m + 1, 1))
    a_q = a[:, -1:]  # [Q, 1]
    # Centred value rows: A_p(k, x) - A_p(k, m) = eu[q, x] + pv[p, x] + ev[k, x].
    eu = ops.sub(EUPU[qs], EUPU[qs, m].map_layout(lambda t: t[:, None]), label=LABEL)  # [Q, x]
    pv = ops.sub(PVOU, PVOU[:, m : m + 1], label=LABEL)  # [n, x]
    ev = ops.sub(EVOU[: m + 1], EVOU[: m + 1, m : m + 1], label=LABEL)  # [m + 1, x]
    b = ops.add(
        eu.map_layout(lambda t: t[:, None, :]), pv.map_layout(lambda t: t[None]), label=LABEL
    )  # [Q, n, x]
    delta = ops.add(
        b[:, :s1].map_layout(lambda t: t[:, :, None, :]),
        ev.map_layout(lambda t: t[None, None]),
        label=LABEL,
    )  # [Q, slots, m + 1, x]
    F = ops.mul(a_slots, delta, label=LABEL)
    dq = ops.add(b[:, s1], ev[qs], label=LABEL)  # query slot (token q <= m)
    Fq = ops.mul(a_q, dq, label=LABEL)
    return Tables(m=m, qs=qs, F=F, Fq=Fq)


def table_flops(m: int, Q: int, n: int, V: int) -> int:
    """Ledger total of ``tables`` for max token m and Q queries."""
    s1, K = n - 1, m + 1
    L = s1 * K + 1
    return (
        Q * s1 * K  # scores
        + Q * (2 * (L - 1) + 3 * L)  # softmax
        + Q * V  # eu
        + n * V  # pv
        + K * V  # ev
        + Q * n * V  # b
        + 2 * Q * s1 * K * V  # delta, F
        + 2 * Q * V  # dq, Fq
    )


def live_outputs(
    t: Tables, rows: Int[Tensor, " boxes"], sizes: Int[Tensor, "boxes slots"], ops: Ops
) -> Bool[Tensor, "queries d_vocab_out"]:
    """Claim (c): per query of ``t``, the outputs x != m whose key-level bound KB_x is not proven
    negative. The bound is computed only for the queries whose prove claims (boxes ``rows``,
    slot set sizes ``sizes``) would cost more at every output than the bound itself
    (``use_key_bound``); for the others every x != m is live. Cost: ``live_flops`` per query
    with the bound."""
    Q, V = t.Fq.shape
    live = torch.ones(Q, V, dtype=torch.bool)
    use = use_key_bound(t.m, t.F.shape[1] + 1, V, rows, sizes, Q)
    if bool(use.any()):
        sub = Tables(m=t.m, qs=t.qs[use], F=t.F[use], Fq=t.Fq[use])
        live[use] = key_bound_live(sub, ops)
    live[:, t.m] = False
    return live


def use_key_bound(
    m: int, n: int, V: int, rows: Int[Tensor, " boxes"], sizes: Int[Tensor, "boxes slots"], Q: int
) -> Bool[Tensor, " queries"]:
    """Whether the key-level bound pays off for each query: its prove claims at every output
    x != m cost more than ``live_flops`` for one query (a rule the search can predict)."""
    full = torch.zeros(Q, dtype=torch.int64)
    full.index_add_(0, rows, _prove_box_flops(sizes, torch.full_like(rows, V - 1)))
    return full > live_flops(m, 1, n, V)


def key_bound_live(t: Tables, ops: Ops) -> Bool[Tensor, "queries d_vocab_out"]:
    """Claim (c) for every query of ``t``: the outputs x != m whose KB_x is not proven negative.
    Cost: ``live_flops``."""
    Q, s1, K, V = t.F.shape
    M = ops.amax(t.F, dim=2, label=LABEL)  # [Q, slots, x]: max over k <= m
    kb = ops.add(t.Fq, ops.sum(M, dim=1, label=LABEL), label=LABEL)  # [Q, x]
    gap = ops.sub(t.F[:, :, t.m], M, label=LABEL)  # [Q, slots, x]: F[p, m, x] - M[p, x]
    with_max = ops.add(kb, ops.amax(gap, dim=1, label=LABEL), label=LABEL)
    kb = ops.where((t.qs < t.m)[:, None].expand(Q, V), with_max, kb, label=LABEL)
    live = ~ops.proven_negative(kb, label=LABEL)
    live[:, t.m] = False
    return live


def live_flops(m: int, Q: int, n: int, V: int) -> int:
    """Ledger total of ``key_bound_live`` for max token m and Q queries (``live_outputs``
    charges it for the queries where ``use_key_bound``)."""
    s1, K = n - 1, m + 1
    return Q * (s1 * V * (K - 1) + V * (s1 - 1) + V + s1 * V + V * (s1 - 1) + V + V + 2 * V)


def _extreme(
    F: Approx, rows: Tensor, masks: Bool[Tensor, "boxes slots k"], largest: bool, ops: Ops
) -> Approx:
    """Per box and slot, max (or min) over k in S_p of ``F[rows, p, k, ...]``.

    Claim: each output is within F.rad of the exact max (min) over the same subset.
    Proof: a float max of a subset of entries is one of them, each within F.rad of its exact
    value, and max is monotone and 1-Lipschitz in the sup norm.                          QED
    Masks must be non-empty in every slot. Cost: (|S_p| - 1) per output per slot.
    """
    B, s1 = masks.shape[:2]
    size = masks.sum(dim=2)
    # Singleton sets (every max slot) are read directly; larger ones reduced over their mask.
    one = size == 1
    b1, p1 = torch.nonzero(one, as_tuple=True)
    mid = torch.empty((B, s1) + F.shape[3:], dtype=F.mid.dtype)
    mid[b1, p1] = F.mid[rows[b1], p1, masks[b1, p1].to(torch.int64).argmax(dim=1)]
    bm, pm = torch.nonzero(~one, as_tuple=True)
    if bm.numel():
        vals = F.mid[rows[bm], pm]  # [P, k, (x)]
        mask = masks[bm, pm].reshape(masks[bm, pm].shape + (1,) * (vals.ndim - 2))
        vals.masked_fill_(~mask, -torch.inf if largest else torch.inf)
        mid[bm, pm] = vals.amax(1) if largest else vals.amin(1)
    per_out = math.prod(F.shape[3:])
    reduced = (size - 1).clamp(min=0)
    ops.ledger.add(int(reduced.sum()) * per_out, label=LABEL)
    return Approx(mid, F.rad, F.mag)


def prove(
    t: Tables,
    rows: Int[Tensor, " boxes"],
    masks: Bool[Tensor, "boxes slots k"],
    live: Bool[Tensor, "queries d_vocab_out"],
    ops: Ops,
) -> Bool[Tensor, " boxes"]:
    """Claims (a) and (c) for each box (rows index ``t.qs``; masks over k <= m): UB_x < 0 for
    every live output x of the box's key (``live_outputs``); the other outputs are below m on
    the whole key. Boxes are evaluated in groups with the same number of live outputs.
    Cost: ``prove_flops``."""
    B = rows.numel()
    out = torch.zeros(B, dtype=torch.bool)
    n_live = live[rows].sum(dim=1)
    out[n_live == 0] = True  # every output is below m on the whole key
    s1, K = t.F.shape[1], t.F.shape[2]
    for L in n_live[n_live > 0].unique().tolist():
        group = torch.nonzero(n_live == L, as_tuple=True)[0]
        step = max(1, CHUNK_ELEMENTS // (s1 * K * L))
        for b0 in range(0, group.numel(), step):
            idx = group[b0 : b0 + step]
            r = rows[idx]
            # The L live outputs of each box's key.
            xs = live[r].to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :L]
            # Gathering keeps the uniform bounds (as Approx indexing does).
            Fx = Approx(t.F.mid[r[:, None], :, :, xs].permute(0, 2, 3, 1), t.F.rad, t.F.mag)
            per_slot = _extreme(Fx, torch.arange(idx.numel()), masks[idx], True, ops)
            fq = Approx(t.Fq.mid[r[:, None], xs], t.Fq.rad, t.Fq.mag)  # [b, L]
            ub = ops.add(fq, ops.sum(per_slot, dim=1, label=LABEL), label=LABEL)
            worst = ops.amax(ub, dim=1, label=LABEL)
            out[idx] = ops.proven_negative(worst, label=LABEL)
    return out


def prove_flops(sizes: Int[Tensor, "boxes slots"], n_live: Int[Tensor, " boxes"]) -> int:
    """Ledger total of ``prove`` for boxes with slot set sizes ``sizes`` whose keys have
    ``n_live`` live outputs."""
    return int(_prove_box_flops(sizes, n_live).sum())


def _prove_box_flops(sizes: Int[Tensor, "boxes slots"], n_live: Int[Tensor, " boxes"]) -> Tensor:
    """Per box: (|S_p| - 1) L per slot (reductions), (s1 - 1) L (slot sum), L (query slot),
    L - 1 (max), 2 (decision); nothing when L = 0."""
    s1 = sizes.shape[1]
    L = n_live.to(torch.int64)
    reduce = (sizes - 1).clamp(min=0).sum(dim=1) * L
    per_box = (s1 - 1) * L + L + (L - 1) + 2
    return torch.where(L > 0, reduce + per_box, 0)


def refute(
    t: Tables,
    rows: Int[Tensor, " boxes"],
    masks: Bool[Tensor, "boxes slots k"],
    witness: Int[Tensor, " boxes"],
    ops: Ops,
) -> Bool[Tensor, " boxes"]:
    """Claim (b) with x* = ``witness`` (must differ from m). Cost: ``refute_flops``."""
    B = rows.numel()
    if B == 0:
        return torch.zeros(0, dtype=torch.bool)
    Fx = t.F.map_layout(lambda f: f[rows[:, None], :, :, witness[:, None]].squeeze(1))
    per_slot = _extreme(Fx, torch.arange(B), masks, False, ops)  # [B, slots]
    lb = ops.add(t.Fq[rows, witness], ops.sum(per_slot, dim=1, label=LABEL), label=LABEL)
    low = ops.lower(lb, label=LABEL)
    ops.ledger.add(B, label=LABEL)  # the comparison with 0
    return low > 0


def refute_flops(sizes: Int[Tensor, "boxes slots"]) -> int:
    """Ledger total of ``refute``."""
    B, s1 = sizes.shape
    return int((sizes - 1).clamp(min=0).sum()) + B * ((s1 - 1) + 1 + 2)
