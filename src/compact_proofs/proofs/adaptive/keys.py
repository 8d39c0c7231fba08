"""Adaptive proof, stages 1 and 2: the cubic proof's per-key verdicts, and the per-output
re-check ("level 1") of the homogeneous keys the cubic bound leaves unproven.

Shape glossary (``core/circuits.py``): ``d_vocab_q`` query token q, ``d_vocab_max`` max token m,
``d_vocab_k`` non-max token k, ``d_vocab_out`` output logit x, ``n_ctx`` positions; ``keys`` a
list of homogeneous keys (q, m, k, c); ``placement`` r in {0, 1} (max tokens on the lowest /
highest positional scores).

Stage 1 runs the cubic checker's own steps (``proofs.cubic``: circuits, pessimal slot tables,
placement log-weights, exact c = 0 inputs, homogeneous keys) with the same counted operations,
keeping the per-key verdicts it otherwise only counts.

Stage 2 (level 1). Claim: if ``level1`` proves the key (q, m, k, c) then, for every placement of
the n-1-c max tokens among the non-query positions and every output x != m,
    Ft_x := w_max-group Dmax[q,m,x] + w_k-group Dk[q,m,k,x] + w_query Dz[q,m,x] < 0,
which is exactly the property the cubic proof's step (5) establishes for its proven keys (cubic
package docstring: Dmax, Dk use the pessimal non-query position PVnq, Dz the true query
position). Hence the cubic's mixture argument (its step (4)) applies unchanged to the union of
cubic-proven and level-1-proven keys: every input of key (q, m, c) whose non-max tokens all lie in
that union is correct.
Proof: as in the cubic's step (5), Ft_x / sum_p w_p = sum_g alpha_g H_g(x) with alpha the softmax
over the slot groups of their log-weights, and it is affine in S = sum of the max slots'
positional weights, so its sign over all placements is decided at the two extremes r = 0, 1.
The cubic bounds max_x by class-wise maxima (and decouples the EUPU and EVOU parts for
x not in {m, k}); level 1 evaluates sum_g alpha_g H_g(x) for every x separately and takes the
max over x != m, which is the quantity itself. For c = n-1 (q = m) there are no max slots outside
the query: groups (non-max, query).                                                      QED
Cost: ``level1_flops``; per key O(d_vocab).
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.proofs import cubic
from compact_proofs.proofs.cubic import count
from compact_proofs.weights import Weights

LABEL = "adaptive:level1"
# Keys per level-1 chunk (each key holds a few [2, d_vocab] float64 rows).
KEY_CHUNK = 1 << 13


@dataclass(frozen=True)
class CubicKeys(cubic.Stage):
    """The cubic proof's per-key verdicts, with the shared tables later stages reuse.

    ``proven[q, m, k, c]`` (c >= 1) is True iff the homogeneous key is proven; it is False on
    invalid keys. ``proven0[q, m]`` is the verdict of the single c = 0 input (m, ..., m, q).
    ``flops`` is the stage's own ledger total (it depends on the weights through ``tiers``).
    """

    proven: Bool[Tensor, "d_vocab_q d_vocab_max d_vocab_k n_ctx"]
    flops: int


def cubic_keys(weights: Weights, ops: Ops) -> CubicKeys:
    """Stage 1: the cubic checker's steps (1)-(6) (``cubic.decide_keys``), keeping every key's
    verdict.

    Cost: exactly ``cubic.cubic_flops`` with the stage's ``tiers``, plus the cubic's integer
    tally (the same operations as ``cubic.check``).
    """
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    covered = count.Covered(V, n)  # dense [q, m, k, c] verdicts
    stage = cubic.decide_keys(weights, ops, covered.add)
    count.tally_int_ops(ops.ledger, V, n)
    return CubicKeys(
        **vars(stage),
        proven=covered.proven,
        flops=cubic.cubic_flops(V, n, cfg.d_model, cfg.d_head, stage.tiers),
    )


def valid_keys(keys: Int[Tensor, "keys 4"], V: int, n: int) -> Bool[Tensor, " keys"]:
    """Homogeneous keys (q, m, k, c) that exist: q <= m < V, 0 <= k < m, 1 <= c <= n-1, and
    c <= n-2 unless q = m (the max must appear outside the query)."""
    q, m, k, c = keys.unbind(1)
    ok = (q >= 0) & (q <= m) & (m < V) & (k >= 0) & (k < m) & (c >= 1) & (c <= n - 1)
    return ok & ((c <= n - 2) | (q == m))


def pv_nonquery(PVOU: Approx, ops: Ops) -> Approx:
    """``PVnq[m, x] = max_{p < n-1} (PVOU[p, x] - PVOU[p, m])``. Cost: ``pvnq_flops``."""
    n = PVOU.shape[0]
    centred = ops.sub(
        PVOU[: n - 1].map_layout(lambda t: t.unsqueeze(0)),  # [1, p, x]
        PVOU[: n - 1].map_layout(lambda t: t.T.unsqueeze(2)),  # [m, p, 1]
        label=LABEL,
    )
    return ops.amax(centred, dim=1, label=LABEL)


def level1(
    ck: CubicKeys, keys: Int[Tensor, "keys 4"], pvnq: Approx, ops: Ops
) -> Bool[Tensor, " keys"]:
    """Stage 2: decide the valid homogeneous keys (q, m, k, c) per output logit (see the module
    docstring); ``pvnq`` = ``pv_nonquery(PVOU)``. Keys must be valid (``valid_keys``). The rows
    that depend on (q, m) only are computed once per pair (``_pair_rows``).
    Cost: ``level1_flops``."""
    if keys.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    n = ck.circ.PVOU.shape[0]
    pairs, pair_of = torch.unique(keys[:, :2], dim=0, return_inverse=True)
    last = keys[:, 3] == n - 1
    has_max_slots = torch.zeros(pairs.shape[0], dtype=torch.bool).index_fill_(
        0, pair_of[~last], True
    )
    rows = _pair_rows(ck, pvnq, pairs, has_max_slots, ops)
    out = torch.zeros(keys.shape[0], dtype=torch.bool)
    for s in range(0, keys.shape[0], KEY_CHUNK):
        chunk = slice(s, s + KEY_CHUNK)
        for is_last in (False, True):
            idx = s + torch.nonzero(last[chunk] == is_last, as_tuple=True)[0]
            if idx.numel():
                out[idx] = _level1_chunk(ck, rows, pair_of[idx], keys[idx], is_last, ops)
    return out


@dataclass(frozen=True)
class _PairRows:
    """Per pair (q, m), rows over the output x: ``pvm`` = EUPU[q, x] - EUPU[q, m] + PVnq[m, x],
    ``d_z`` = Dz[q, m, x] and, for the pairs with keys c <= n-2 (row ``max_row[pair]``),
    ``d_max`` = Dmax[q, m, x]."""

    pvm: Approx  # [pairs, x]
    d_z: Approx  # [pairs, x]
    d_max: Approx  # [pairs with keys c <= n-2, x]
    max_row: Tensor  # [pairs]


def _pair_rows(
    ck: CubicKeys, pvnq: Approx, pairs: Int[Tensor, "pairs 2"], has_max_slots: Tensor, ops: Ops
) -> _PairRows:
    """Cost: 6 d_vocab per pair, plus 2 d_vocab per pair with keys c <= n-2."""
    EU, EV, PV = ck.circ.EUPU, ck.circ.EVOU, ck.circ.PVOU
    q, m = pairs.unbind(1)
    P = q.numel()

    def col(a: Approx) -> Approx:  # [P] -> [P, 1]
        return a.map_layout(lambda t: t[:, None])

    eu = ops.sub(EU[q], col(EU[q, m]), label=LABEL)  # EUPU[q, x] - EUPU[q, m]
    pvm = ops.add(eu, pvnq[m], label=LABEL)  # + PVnq[m, x]
    ev_q = ops.sub(EV[q], col(EV[q, m]), label=LABEL)
    pv_q = ops.sub(PV[-1:].map_layout(lambda t: t.expand(P, -1)), col(PV[-1, m]), label=LABEL)
    d_z = ops.add(ops.add(eu, ev_q, label=LABEL), pv_q, label=LABEL)  # Dz
    sel = torch.nonzero(has_max_slots, as_tuple=True)[0]
    ms = m[sel]
    d_max = ops.add(pvm[sel], ops.sub(EV[ms], col(EV[ms, ms]), label=LABEL), label=LABEL)  # Dmax
    max_row = torch.full((P,), -1, dtype=torch.int64)
    max_row[sel] = torch.arange(sel.numel())
    return _PairRows(pvm=pvm, d_z=d_z, d_max=d_max, max_row=max_row)


def _level1_chunk(
    ck: CubicKeys,
    rows: _PairRows,
    pair_of: Tensor,
    keys: Int[Tensor, "keys 4"],
    last: bool,
    ops: Ops,
) -> Bool[Tensor, " keys"]:
    """Keys with 1 <= c <= n-2 (``last`` False) or c = n-1 (``last`` True, q = m); key i
    belongs to the pair ``pair_of[i]`` of ``rows``."""
    EV = ck.circ.EVOU
    q, m, k, c = keys.unbind(1)
    L = q.numel()
    ev_k = ops.sub(EV[k], EV[k, m].map_layout(lambda t: t[:, None]), label=LABEL)
    d_k = ops.add(rows.pvm[pair_of], ev_k, label=LABEL)  # Dk
    d_z = rows.d_z[pair_of]
    if last:
        logw = Ops.stack(
            [ops.add(ck.EQKE_s[q, k], ck.lse_all[q], label=LABEL), ck.z[q]], dim=-1
        )  # [L, group]
        alpha = ops.softmax(logw, dim=-1, label=LABEL)
        parts = [(alpha[:, 0], d_k), (alpha[:, 1], d_z)]
        bound = _weighted(parts, ops)[:, None, :]  # [L, 1, x]
    else:
        d_max = rows.d_max[rows.max_row[pair_of]]
        g = ck.groups[q, c - 1]  # [L, placement, 2]

        def per_r(a: Approx) -> Approx:
            return a.map_layout(lambda t: t[:, None].expand(L, 2))

        logw = Ops.stack(
            [
                ops.add(per_r(ck.EQKE_s[q, m]), g[..., 0], label=LABEL),
                ops.add(per_r(ck.EQKE_s[q, k]), g[..., 1], label=LABEL),
                per_r(ck.z[q]),
            ],
            dim=-1,
        )  # [L, placement, group]
        alpha = ops.softmax(logw, dim=-1, label=LABEL)

        def bcast(a: Approx) -> Approx:  # [L, x] -> [L, 1, x]
            return a.map_layout(lambda t: t[:, None, :])

        parts = [(alpha[..., i], bcast(d)) for i, d in enumerate((d_max, d_k, d_z))]
        bound = _weighted(parts, ops)  # [L, placement, x]
    excl = m[:, None, None].expand(L, bound.shape[1], 1)
    worst = ops.amax_excluding(bound, dim=2, exclude=excl, label=LABEL)  # [L, placement]
    return ops.proven_negative(worst, label=LABEL).all(dim=1)


def _weighted(parts: list[tuple[Approx, Approx]], ops: Ops) -> Approx:
    """sum_i alpha_i * D_i with alpha_i [..] broadcast against D_i [.., x]."""
    total = None
    for a, d in parts:
        term = ops.mul(a.map_layout(lambda t: t[..., None]), d, label=LABEL)
        total = term if total is None else ops.add(total, term, label=LABEL)
    return total


def pvnq_flops(V: int, n: int) -> int:
    return (2 * n - 3) * V * V


def level1_flops(V: int, n: int, keys: Int[Tensor, "keys 4"]) -> int:
    """Ledger total of ``level1`` on ``keys``."""
    if keys.shape[0] == 0:
        return 0
    last = keys[:, 3] == n - 1
    pairs = torch.unique(keys[:, :2], dim=0).shape[0]
    pairs_max_slots = torch.unique(keys[~last, :2], dim=0).shape[0] if bool((~last).any()) else 0
    n_last = int(last.sum())
    n_mid = keys.shape[0] - n_last
    # per pair: eu, PVnq add, ev_q, pv_q, Dz (2); Dmax (2) for pairs with keys c <= n-2
    per_pair = pairs * 6 * V + pairs_max_slots * 2 * V
    common = 2 * V  # Dk (2)
    # log-weights (4), 3-group softmax at 2 placements (26), 3 products and 2 sums per placement
    # (10V), max over x != m (2(V-1)), decisions (4)
    mid = common + 4 + 26 + 10 * V + 2 * (V - 1) + 4
    # log-weight (1), 2-group softmax (8), 2 products and 1 sum (3V), max (V-1), decision (2)
    last_cost = common + 1 + 8 + 3 * V + (V - 1) + 2
    return per_pair + n_mid * mid + n_last * last_cost


def key_counts(proven: Bool[Tensor, "d_vocab_q d_vocab_max d_vocab_k n_ctx"]) -> Tensor:
    """``N[q, m, c] = #{k : proven[q, m, k, c]}`` (int64; proven is False on invalid keys)."""
    return proven.sum(dim=2, dtype=torch.int64)


def count_covered(N: Tensor, proven0: Bool[Tensor, "d_vocab_q d_vocab_max"]) -> int:
    """sum over keys: [proven0[q, m]] (c = 0) + sum_{c >= 1} C(n-1, c) N[q, m, c]^c (exact ints).

    Each distinct value of N is raised to the power once (histogram per c)."""
    n = N.shape[-1]
    total = int(proven0.sum())
    for c in range(1, n):
        values, mult = torch.unique(N[:, :, c], return_counts=True)
        inner = sum(
            int(mv) * int(v) ** c for v, mv in zip(values.tolist(), mult.tolist(), strict=True)
        )
        total += math.comb(n - 1, c) * inner
    return total
