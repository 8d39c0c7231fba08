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
For an input t of the box and x != m, logit(x) - logit(m) has the sign of
G_x(t) = Fq[x] + sum_p F[p, t_p, x].
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
  (c) Key-level outputs. The weights factor: w_p(k) / Z = a_p b_k with a_p = exp(EQKP_s[q, p] -
      M_a) (the query slot as p = n-1 with score z[q] - M_b) and b_k = exp(EQKE_s[q, k] - M_b),
      so F[p, k, x] = a_p b_k (c[p, x] + e[k, x]) with c[p, x] = EUPU[q, x] - EUPU[q, m] +
      PVOU[p, x] - PVOU[p, m] and e[k, x] = EVOU[k, x] - EVOU[k, m]. Let
          N[p, x] = max(b_hi c[p, x], b_lo c[p, x]) + E[x],  E[x] >= max_{k <= m} b_k e[k, x],
      with b_lo, b_hi the min and max of b_k over k <= m, and T[p, x] = b_m (c[p, x] + e[m, x]);
      E is shared by every query q' <= m (``_shared_E``).
      Every input of the key (q, m) (some non-query slot holds m when q < m) has
          G_x(t) <= KB_x := Fq[x] + sum_p a_p N[p, x] + max_p a_p (T[p, x] - N[p, x])
      (for q = m without the last term). If KB_x < 0, output x is below m on every box of the
      key, so (a) need only take its max over the other ("live") outputs, and (b) can only
      hold for a live x*: the tables are built at the live outputs only.
      Proof: b_k c <= max(b_hi c, b_lo c) for b_k in [b_lo, b_hi], and b_k e[k, x] <= E[x],
      so a non-max slot p contributes at most a_p N[p, x]; the slot p* holding m contributes
      exactly a_p* T[p*, x] = a_p* N[p*, x] + a_p* (T - N)[p*, x].                           QED
The common factor: every weight is at most 1 (exp-shifted scores), so the tables are well scaled
for every input of the key.
Cost: ``table_flops`` per max-token group (weights, live outputs, tables at the live outputs);
per box, the reductions over S_p count (|S_p| - 1) per live output (paper rule),
``prove_flops`` / ``refute_flops``.
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
    """F and Fq (module docstring) for the keys (q, m) of one max token m, q in ``qs``, at each
    key's live outputs ``xs[i, :n_live[i]]`` (claim (c); padding entries are -inf)."""

    m: int
    qs: Int[Tensor, " queries"]
    live: Bool[Tensor, "queries d_vocab_out"]
    n_live: Int[Tensor, " queries"]
    xs: Int[Tensor, "queries live"]
    F: Approx  # [queries, live, slots, m + 1 (key token k <= m)]
    Fq: Approx  # [queries, live]


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
    """Live outputs (claim (c)) and F, Fq at them for the keys (q, m), q in ``qs`` (all q <= m).
    Cost: ``table_flops`` with the total number of live outputs."""
    Q, n = qs.numel(), PVOU.shape[0]
    s1, K = n - 1, m + 1
    # Weights a_p b_k (slots) and a_{n-1} (query), exp-shifted: claim (c). E[x] takes the range
    # of b_k over every query q' <= m (the same for every group of queries of this m).
    # exp is increasing, so the range of b_k is that of the shifted scores: 2 exps per k.
    d, top = ops.shift_by_max(EQKE_s[:K, :K], dim=1, label=LABEL)  # [q' <= m, K], M_b [q', 1]
    b_hi = ops.exp_nonpositive(ops.amax(d, dim=0, label=LABEL), label=LABEL)  # [K]
    b_lo = ops.exp_nonpositive(ops.amin(d, dim=0, label=LABEL), label=LABEL)
    bk = ops.exp_nonpositive(d[qs], label=LABEL)  # exp(EQKE_s - M_b), [Q, K]
    shift = Approx(top[qs, 0], 0.0, EQKE_s.mag)  # M_b: exact floats
    zq = ops.sub(z[qs], shift, label=LABEL)
    pos = Ops.cat([EQKP_s[qs][:, :s1], zq.map_layout(lambda t: t[:, None])], 1)  # [Q, n]
    a = ops.exp_shifted(pos, dim=1, label=LABEL)  # [Q, n]
    # Centred value rows: c[q, p, x] and e[k, x].
    eu = ops.sub(EUPU[qs], EUPU[qs, m].map_layout(lambda t: t[:, None]), label=LABEL)  # [Q, x]
    pv = ops.sub(PVOU, PVOU[:, m : m + 1], label=LABEL)  # [n, x]
    e = ops.sub(EVOU[:K], EVOU[:K, m : m + 1], label=LABEL)  # [K, x]
    c = ops.add(
        eu.map_layout(lambda t: t[:, None, :]), pv.map_layout(lambda t: t[None]), label=LABEL
    )  # [Q, n, x]
    dq = ops.add(c[:, s1], e[qs], label=LABEL)  # query slot (token q <= m)
    Fq = ops.mul(a[:, s1:], dq, label=LABEL)  # [Q, x]
    live = _live(m, qs, a, bk, _shared_E(b_hi, b_lo, e, ops), c, e, Fq, ops)
    ab = ops.mul(
        a[:, :s1].map_layout(lambda t: t[:, :, None]),
        bk.map_layout(lambda t: t[:, None, :]),
        label=LABEL,
    )  # [Q, slots, K]
    n_live = live.sum(dim=1)
    width = max(int(n_live.max()) if Q else 0, 1)
    xs = live.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :width]
    # F at the outputs xs, padded to ``width``: rigorous Ops on the padded tensors (uncounted),
    # charged for the real entries only (2 per entry: the sum, then the product).
    scratch = Ops()
    cx = c[:, :s1].map_layout(
        lambda t: t.gather(2, xs[:, None, :].expand(Q, s1, width)).transpose(1, 2)[..., None]
    )  # [Q, W, slots, 1]
    ex = e.map_layout(lambda t: t[:, xs].permute(1, 2, 0)[:, :, None, :])  # [Q, W, 1, K]
    delta = scratch.add(cx, ex)
    F = scratch.mul(ab.map_layout(lambda t: t[:, None]), delta)  # [Q, W, slots, K]
    ops.ledger.add(2 * s1 * K * int(n_live.sum()), label=LABEL)
    pad = torch.arange(width)[None, :] >= n_live[:, None]  # [Q, W]
    mid, fq = F.mid, Fq.mid.gather(1, xs)  # fresh tensors: padded in place with -inf
    mid[pad] = -torch.inf
    fq[pad] = -torch.inf
    return Tables(
        m=m,
        qs=qs,
        live=live,
        n_live=n_live,
        xs=xs,
        F=Approx(mid, F.rad, F.mag),
        Fq=Approx(fq, Fq.rad, Fq.mag),
    )


def _shared_E(b_hi: Approx, b_lo: Approx, e: Approx, ops: Ops) -> Approx:
    """``E[x] >= max_{k <= m} b_k e[k, x]`` for every query q' <= m: with b_k in [lo_k, hi_k]
    (min and max over q'), b_k e <= max(hi_k e, lo_k e). Cost: 3 K V + (K - 1) V."""
    hi = b_hi.map_layout(lambda t: t[:, None])  # [K, 1]
    lo = b_lo.map_layout(lambda t: t[:, None])
    most = ops.maximum(ops.mul(hi, e, label=LABEL), ops.mul(lo, e, label=LABEL), label=LABEL)
    return ops.amax(most, dim=0, label=LABEL)  # [x]


def _live(
    m: int,
    qs: Tensor,
    a: Approx,
    bk: Approx,
    E: Approx,
    c: Approx,
    e: Approx,
    Fq: Approx,
    ops: Ops,
) -> Bool[Tensor, "queries d_vocab_out"]:
    """Claim (c): the outputs x != m whose KB_x is not proven negative (``E`` from
    ``_shared_E``)."""
    Q, n, V = c.shape
    s1 = n - 1
    b_hi = ops.amax(bk, dim=1, label=LABEL).map_layout(lambda t: t[:, None, None])
    b_lo = ops.amin(bk, dim=1, label=LABEL).map_layout(lambda t: t[:, None, None])
    cs = c[:, :s1]  # [Q, slots, x]
    N = ops.add(
        ops.maximum(ops.mul(b_hi, cs, label=LABEL), ops.mul(b_lo, cs, label=LABEL), label=LABEL),
        E.map_layout(lambda t: t[None, None, :]),
        label=LABEL,
    )
    a_s = a[:, :s1].map_layout(lambda t: t[:, :, None])  # [Q, slots, 1]
    kb = ops.add(Fq, ops.sum(ops.mul(a_s, N, label=LABEL), dim=1, label=LABEL), label=LABEL)
    has_max_slot = qs < m
    if bool(has_max_slot.any()):
        sel = torch.nonzero(has_max_slot, as_tuple=True)[0]
        b_m = bk[sel, m].map_layout(lambda t: t[:, None, None])
        T = ops.mul(
            b_m,
            ops.add(cs[sel], e[m].map_layout(lambda t: t[None, None]), label=LABEL),
            label=LABEL,
        )
        gap = ops.amax(
            ops.mul(a_s[sel], ops.sub(T, N[sel], label=LABEL), label=LABEL), dim=1, label=LABEL
        )
        with_gap = ops.add(kb[sel], gap, label=LABEL)
        kb = Approx(
            kb.mid.index_copy(0, sel, with_gap.mid),
            max(kb.rad, with_gap.rad),
            max(kb.mag, with_gap.mag),
        )
    live = ~ops.proven_negative(kb, label=LABEL)
    live[:, m] = False
    return live


def table_flops(m: int, Q: int, n: int, V: int, n_live: int, Q_max_slot: int) -> int:
    """Ledger total of ``tables`` for max token m, Q queries (``Q_max_slot`` of them q < m) and
    ``n_live`` live outputs in all."""
    s1, K = n - 1, m + 1
    b_range = K * (K - 1) + K * K + K * (2 * (K - 1) + 2)  # shifted scores, their range, exps
    shared_E = 3 * K * V + (K - 1) * V
    weights = K + 1 + (n - 1) + 2 * n  # b_k, zq, a
    rows = Q * V + n * V + K * V + Q * n * V  # eu, pv, e, c
    query = 2 * Q * V  # dq, Fq
    bound = Q * (2 * (K - 1) + 4 * s1 * V + s1 * V + (s1 - 1) * V + V + 2 * V)
    bound += Q_max_slot * (4 * s1 * V + (s1 - 1) * V + V)
    return (
        b_range + shared_E + Q * weights + rows + query + bound + Q * s1 * K + n_live * 2 * s1 * K
    )


def exact_key_live(t: Tables, ops: Ops) -> Bool[Tensor, "queries live"]:
    """Claim (c) in its exact form at the tables' columns: with M[p, x] = max_{k <= m}
    F[p, k, x], KB_x = Fq[x] + sum_p M[p, x] + max_p (F[p, m, x] - M[p, x]) (the last term for
    q < m only) bounds G_x on every input of the key, as in claim (c) (the slot holding m
    contributes exactly F[p, m, x], every other slot at most M[p, x]). True where KB_x is not
    proven negative (padding columns: False). Rigorous ``Ops`` on the padded tensors, charged
    ``exact_live_flops`` for the real columns only."""
    Q, W, s1, K = t.F.shape
    real = torch.arange(W)[None, :] < t.n_live[:, None]  # [Q, W]
    scratch = Ops()
    F, fq = t.F, t.Fq
    if not bool(real.all()):  # padding (-inf) to 0: no inf - inf below
        F = Approx(F.mid.masked_fill(~real[:, :, None, None], 0.0), F.rad, F.mag)
        fq = Approx(fq.mid.masked_fill(~real, 0.0), fq.rad, fq.mag)
    M = scratch.amax(F, dim=3)  # [Q, W, slots]
    kb = scratch.add(fq, scratch.sum(M, dim=2))
    gap = scratch.amax(scratch.sub(F[:, :, :, t.m], M), dim=2)
    with_max = scratch.add(kb, gap)
    has_max = (t.qs < t.m)[:, None].expand(Q, W)
    kb = Approx(
        torch.where(has_max, with_max.mid, kb.mid),
        max(kb.rad, with_max.rad),
        max(kb.mag, with_max.mag),
    )
    live = ~scratch.proven_negative(kb) & real
    ops.ledger.add(exact_live_flops(s1, K, t.n_live, t.qs < t.m), label=LABEL)
    return live


def exact_live_flops(s1: int, K: int, n_live: Tensor, has_max: Tensor) -> int:
    """Per real column: max over k (s1 (K - 1)), sum over slots (s1 - 1), add (1), decision
    (2); with a max slot (q < m) also s1 (differences) + s1 - 1 (max) + 1 (add)."""
    return int(_exact_cost(s1, K, n_live, has_max).sum())


def _exact_cost(s1: int, K: int, n_live: Tensor, has_max: Tensor) -> Tensor:
    per = s1 * (K - 1) + (s1 - 1) + 1 + 2
    extra = s1 + (s1 - 1) + 1
    return n_live.to(torch.int64) * (per + extra * has_max.to(torch.int64))


def use_exact_bound(
    t_live: Tensor, m: int, n: int, rows: Tensor, sizes: Tensor, qs: Tensor
) -> Bool[Tensor, " queries"]:
    """Whether the exact key bound pays off for each query: its prove claims (boxes ``rows``
    with slot set sizes ``sizes``) at every live output cost more than the bound itself (a
    rule the search can predict). ``t_live``: live outputs per query."""
    full = torch.zeros(t_live.numel(), dtype=torch.int64)
    full.index_add_(0, rows, _prove_box_flops(sizes, t_live[rows]))
    return full > _exact_cost(n - 1, m + 1, t_live, qs < m)


def prove_claims_flops(
    t_live: Tensor, t_exact: Tensor, m: int, n: int, rows: Tensor, sizes: Tensor, qs: Tensor
) -> int:
    """What the checker charges for the prove claims of one (max token, queries) group after
    its tables: the exact key bound where ``use_exact_bound`` (live outputs per query
    ``t_live``), then ``prove`` at ``t_exact`` live outputs there and ``t_live`` elsewhere."""
    use = use_exact_bound(t_live, m, n, rows, sizes, qs)
    exact = exact_live_flops(n - 1, m + 1, t_live[use], qs[use] < m)
    return exact + prove_flops(sizes, torch.where(use, t_exact, t_live)[rows])


def refine(t: Tables, use: Bool[Tensor, " queries"], ops: Ops) -> Tables:
    """``t`` with the queries ``use`` restricted to the columns their exact key bound leaves
    live (``exact_key_live``); the other queries unchanged. Cost: the bound's, on ``use``."""
    Q, W = t.xs.shape
    keep = torch.arange(W)[None, :] < t.n_live[:, None]
    if bool(use.any()):
        sub = torch.nonzero(use, as_tuple=True)[0]
        part = Tables(
            m=t.m,
            qs=t.qs[sub],
            live=t.live[sub],
            n_live=t.n_live[sub],
            xs=t.xs[sub],
            F=t.F[sub],
            Fq=t.Fq[sub],
        )
        keep[sub] = exact_key_live(part, ops)
    n_live = keep.sum(dim=1)
    width = max(int(n_live.max()) if Q else 0, 1)
    order = keep.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :width]
    pad = torch.arange(width)[None, :] >= n_live[:, None]
    xs = t.xs.gather(1, order)
    F = t.F.mid[torch.arange(Q)[:, None], order].masked_fill(pad[:, :, None, None], -torch.inf)
    Fq = t.Fq.mid.gather(1, order).masked_fill(pad, -torch.inf)
    live = torch.zeros_like(t.live)
    qi, j = torch.nonzero(~pad, as_tuple=True)
    live[qi, xs[qi, j]] = True
    return Tables(
        m=t.m,
        qs=t.qs,
        live=live,
        n_live=n_live,
        xs=xs,
        F=Approx(F, t.F.rad, t.F.mag),
        Fq=Approx(Fq, t.Fq.rad, t.Fq.mag),
    )


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
    ops: Ops,
) -> Bool[Tensor, " boxes"]:
    """Claims (a) and (c) for each box (rows index ``t.qs``; masks over k <= m): UB_x < 0 for
    every live output x of the box's key; the other outputs are below m on the whole key.
    Boxes go in chunks of similar live counts, padded to the chunk's largest (padding entries
    of ``t.F`` and ``t.Fq`` are -inf, so they never decide); the arithmetic is rigorous
    ``Ops`` on the padded tensors, and the ledger is charged ``prove_flops`` for the real
    entries only."""
    B = rows.numel()
    out = torch.zeros(B, dtype=torch.bool)
    n_live = t.n_live[rows]
    out[n_live == 0] = True  # every output is below m on the whole key
    todo = torch.nonzero(n_live > 0, as_tuple=True)[0]
    order = todo[n_live[todo].argsort(stable=True)]
    s1, K = t.F.shape[2], t.F.shape[3]
    counts = n_live[order].tolist()
    scratch = Ops()  # not charged: the real entries are charged below
    i = 0
    while i < order.numel():
        size = max(1, CHUNK_ELEMENTS // (s1 * K * counts[i]))
        size = max(1, CHUNK_ELEMENTS // (s1 * K * counts[min(i + size, len(counts)) - 1]))
        end = min(i + size, len(counts))
        idx, r, W = order[i:end], rows[order[i:end]], counts[end - 1]
        i = end
        Fx = t.F.mid[r, :W].permute(0, 2, 1, 3)  # [b, slots, W, k]
        hi = Fx.masked_fill(~masks[idx][:, :, None, :], -torch.inf).amax(dim=3)  # [b, slots, W]
        # Gathering keeps the uniform bounds (as Approx indexing does).
        per_slot = Approx(hi.contiguous(), t.F.rad, t.F.mag)
        fq = Approx(t.Fq.mid[r, :W], t.Fq.rad, t.Fq.mag)  # [b, W]
        ub = scratch.add(fq, scratch.sum(per_slot, dim=1))
        out[idx] = scratch.proven_negative(scratch.amax(ub, dim=1))
    ops.ledger.add(prove_flops(masks.sum(dim=2), n_live), label=LABEL)
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
    """Claim (b) with x* = ``witness`` (must differ from m); only a live x* can hold (claim
    (c)), so a dead one is refused without cost. Cost: ``refute_flops`` for the live ones."""
    B = rows.numel()
    out = torch.zeros(B, dtype=torch.bool)
    hit = (t.xs[rows] == witness[:, None]) & (
        torch.arange(t.xs.shape[1])[None, :] < t.n_live[rows][:, None]
    )
    ok = torch.nonzero(hit.any(dim=1), as_tuple=True)[0]
    if ok.numel() == 0:
        return out
    r, j = rows[ok], hit[ok].to(torch.int8).argmax(dim=1)
    Fx = Approx(t.F.mid[r, j], t.F.rad, t.F.mag)  # [b, slots, k]
    per_slot = _extreme(Fx, torch.arange(ok.numel()), masks[ok], False, ops)  # [b, slots]
    fq = Approx(t.Fq.mid[r, j], t.Fq.rad, t.Fq.mag)
    lb = ops.add(fq, ops.sum(per_slot, dim=1, label=LABEL), label=LABEL)
    low = ops.lower(lb, label=LABEL)
    ops.ledger.add(ok.numel(), label=LABEL)  # the comparison with 0
    out[ok] = low > 0
    return out


def refute_flops(sizes: Int[Tensor, "boxes slots"]) -> int:
    """Ledger total of ``refute``."""
    B, s1 = sizes.shape
    return int((sizes - 1).clamp(min=0).sum()) + B * ((s1 - 1) + 1 + 2)
