"""Adaptive proof, stage 4: product boxes of inputs with exact positions.

Shape glossary (``core/circuits.py``): ``d_vocab_k`` key token, ``d_vocab_out`` output x,
``slots`` = n_ctx - 1 non-query positions, ``boxes`` a batch of boxes, ``pairs`` a batch of keys
(q, m).

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
The common factor: per key (q, m), the weights are a softmax over all (p, k <= m) scores of the
key and the query score, so they are well scaled for every input of the key.
Cost: ``table_flops`` per max-token group; per box, the reductions over S_p count
(|S_p| - 1) per output (paper rule), ``prove_flops`` / ``refute_flops``.
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
# F entries per batch of keys (pairs x slots x outputs x tokens): 128 MB (plus temporaries).
TABLE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Tables:
    """F and Fq (module docstring) of a batch of keys ``pairs`` (q, m), padded to d_vocab key
    tokens: ``F[i, p, x, k]`` for the key ``pairs[i]`` (entries k > m are 0 and never read: box
    sets only hold tokens <= m)."""

    pairs: Int[Tensor, "pairs 2"]
    F: Approx  # [pairs, slots, d_vocab_out, d_vocab_k]
    Fq: Approx  # [pairs, d_vocab_out]


def tables(
    pairs: Int[Tensor, "pairs 2"],
    EQKE_s: Approx,
    EQKP_s: Approx,
    z: Approx,
    EUPU: Approx,
    EVOU: Approx,
    PVOU: Approx,
) -> Tables:
    """F and Fq for the distinct keys ``pairs`` (q <= m), all at once.

    Padding: each key's softmax row holds its (slot, k <= m) scores and the query's; the
    entries k > m are -inf, whose exp is exactly 0, so the float computation is that of the
    unpadded row plus exact zeros, within the radius ``Ops.softmax`` gives for the longer row
    (gamma grows with the length). The radius depends only on the inputs' bounds and the
    (fixed) padded length, so a key's F and Fq are the same floats and the same radius in any
    batch: the search's decisions are the checker's.
    Cost: not charged here (the work is done on a scratch ledger); the checker charges
    ``tables_flops`` of all its keys at once, the unpadded computation (the padding's zeros are
    never read), with the max-token groups' shared rows counted once.
    """
    P, n, V = pairs.shape[0], PVOU.shape[0], EVOU.shape[0]
    s1 = n - 1
    q, m = pairs[:, 0], pairs[:, 1]
    scratch = Ops()
    sc = scratch.add(
        EQKE_s[q].map_layout(lambda t: t[:, None, :].expand(P, s1, V)),
        EQKP_s[q, :s1].map_layout(lambda t: t[:, :, None].expand(P, s1, V)),
    )  # [P, slots, k]
    over = torch.arange(V)[None, None, :] > m[:, None, None]
    sc = sc.map_layout(lambda t: t.masked_fill(over, -torch.inf).reshape(P, s1 * V))
    row = Ops.cat([sc, z[q].map_layout(lambda t: t[:, None])], 1)
    a = scratch.softmax(row, dim=1)  # common factor Z per key
    a_slots = a[:, :-1].map_layout(lambda t: t.reshape(P, s1, 1, V))
    a_q = a[:, -1:]  # [P, 1]
    # Centred value rows: A_p(k, x) - A_p(k, m) = eu[q, x] + pv[p, x] + ev[k, x]. Gathered
    # columns are made contiguous so that torch lays every result out row-major, k innermost
    # (the search and the box bounds reduce over k).
    eu = scratch.sub(EUPU[q], EUPU[q, m].map_layout(lambda t: t[:, None]))  # [P, x]
    pv = scratch.sub(
        PVOU.map_layout(lambda t: t[None]),
        PVOU[:, m].map_layout(lambda t: t.T.contiguous()[:, :, None]),
    )  # [P, n, x]
    ev = scratch.sub(
        EVOU.map_layout(lambda t: t.T.contiguous()[None]),
        EVOU[:, m].map_layout(lambda t: t.T.contiguous()[:, None, :]),
    )  # [P, x, k]
    b = scratch.add(eu.map_layout(lambda t: t[:, None, :]), pv)  # [P, n, x]
    delta = scratch.add(
        b[:, :s1].map_layout(lambda t: t[:, :, :, None]),
        ev.map_layout(lambda t: t[:, None]),
    )  # [P, slots, x, k]
    F = scratch.mul(delta, a_slots, inplace=True)  # delta is not used again
    dq = scratch.add(b[:, s1], ev.map_layout(lambda t: t[torch.arange(P), :, q]))  # token q
    Fq = scratch.mul(a_q, dq)
    return Tables(pairs=pairs, F=F, Fq=Fq)


def tables_flops(pairs: Int[Tensor, "pairs 2"], n: int, V: int) -> int:
    """``table_flops`` summed over the max-token groups of the distinct keys ``pairs``."""
    ms, Qs = pairs[:, 1].unique(return_counts=True)
    return sum(table_flops(m, Q, n, V) for m, Q in zip(ms.tolist(), Qs.tolist(), strict=True))


def table_flops(m: int, Q: int, n: int, V: int) -> int:
    """FLOPs of the tables of the keys (q, m) of one max token m and Q queries, unpadded:
    scores, softmax over s1 (m + 1) + 1 entries, eu, pv, ev (shared by the group), b, delta, F,
    dq, Fq."""
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


def _extreme(
    F: Approx, rows: Tensor, masks: Bool[Tensor, "boxes slots k"], largest: bool, ops: Ops
) -> Approx:
    """Per box and slot, max (or min) over k in S_p of ``F[rows, p, ..., k]`` (k the last axis).

    Claim: each output is within F.rad of the exact max (min) over the same subset.
    Proof: a float max of a subset of entries is one of them, each within F.rad of its exact
    value, and max is monotone and 1-Lipschitz in the sup norm.                          QED
    Masks must be non-empty in every slot. Cost: (|S_p| - 1) per output per slot.
    """
    B, s1 = masks.shape[:2]
    size = masks.sum(dim=2)
    out_shape = F.shape[2:-1]
    # Singleton sets (every max slot) are read directly; larger ones reduced over their mask.
    one = size == 1
    b1, p1 = torch.nonzero(one, as_tuple=True)
    mid = torch.empty((B, s1) + out_shape, dtype=F.mid.dtype)
    mid[b1, p1] = F.mid[rows[b1], p1, ..., masks[b1, p1].to(torch.int64).argmax(dim=1)]
    bm, pm = torch.nonzero(~one, as_tuple=True)
    if bm.numel():
        vals = F.mid[rows[bm], pm]  # [N, (x), k]
        off = ~masks[bm, pm].reshape((bm.numel(),) + (1,) * len(out_shape) + (masks.shape[2],))
        vals.masked_fill_(off, -torch.inf if largest else torch.inf)
        mid[bm, pm] = vals.amax(-1) if largest else vals.amin(-1)
    per_out = math.prod(out_shape)
    reduced = (size - 1).clamp(min=0)
    ops.ledger.add(int(reduced.sum()) * per_out, label=LABEL)
    return Approx(mid, F.rad, F.mag)


def prove(
    t: Tables, rows: Int[Tensor, " boxes"], masks: Bool[Tensor, "boxes slots k"], ops: Ops
) -> Bool[Tensor, " boxes"]:
    """Claim (a) for each box (``rows`` index ``t.pairs``; masks over all d_vocab tokens, holding
    only tokens <= m). Cost: ``prove_flops``."""
    B = rows.numel()
    out = torch.zeros(B, dtype=torch.bool)
    if B == 0:
        return out
    s1, V, K = t.F.shape[1], t.F.shape[2], t.F.shape[3]
    step = max(1, CHUNK_ELEMENTS // (s1 * K * V))
    for b0 in range(0, B, step):
        r, mk = rows[b0 : b0 + step], masks[b0 : b0 + step]
        per_slot = _extreme(t.F, r, mk, True, ops)  # [b, slots, x]
        ub = ops.add(t.Fq[r], ops.sum(per_slot, dim=1, label=LABEL), label=LABEL)  # [b, x]
        worst = ops.amax_excluding(ub, dim=1, exclude=t.pairs[r, 1:], label=LABEL)
        out[b0 : b0 + step] = ops.proven_negative(worst, label=LABEL)
    return out


def prove_flops(sizes: Int[Tensor, "boxes slots"], V: int) -> int:
    """Ledger total of ``prove`` for boxes with slot set sizes ``sizes``."""
    B, s1 = sizes.shape
    reduce = int((sizes - 1).clamp(min=0).sum()) * V
    return reduce + B * ((s1 - 1) * V + V + (V - 1) + 2)


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
    Fx = t.F.map_layout(lambda f: f[rows, :, witness])  # [B, slots, k]
    per_slot = _extreme(Fx, torch.arange(B), masks, False, ops)  # [B, slots]
    lb = ops.add(t.Fq[rows, witness], ops.sum(per_slot, dim=1, label=LABEL), label=LABEL)
    low = ops.lower(lb, label=LABEL)
    ops.ledger.add(B, label=LABEL)  # the comparison with 0
    return low > 0


def refute_flops(sizes: Int[Tensor, "boxes slots"]) -> int:
    """Ledger total of ``refute``."""
    B, s1 = sizes.shape
    return int((sizes - 1).clamp(min=0).sum()) + B * ((s1 - 1) + 1 + 2)
