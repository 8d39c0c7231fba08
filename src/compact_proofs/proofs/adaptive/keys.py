"""Adaptive proof, stages 1 and 2: the cubic proof's per-key verdicts, and the re-check
("level 1", per output logit or in a class form) of the homogeneous keys the cubic bound leaves
unproven.

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
over the slot groups of their log-weights (evaluated by ``_ratios`` and ``_combine``, a positive
multiple), and it is affine in S = sum of the max slots' positional weights, so its sign over all
placements is decided at the two extremes r = 0, 1. The cubic bounds max_x by class-wise maxima
(and decouples the EUPU and EVOU parts for x not in {m, k}); level 1 evaluates
sum_g alpha_g H_g(x) for every x separately and takes the max over x != m, which is the quantity
itself. For c = n-1 (q = m) there are no max slots outside the query: groups (non-max, query).
                                                                                          QED
Class form (``class_keys``). Claim: a key the class form proves satisfies the same property.
Proof: the outputs x != m fall in two classes, {k} and the rest; for x in a class C,
sum_g alpha_g H_g(x) <= sum_g alpha_g max_{x' in C} H_g(x') as every alpha_g > 0. The class
maxima are float maxima of the same rows over the same index sets, hence within the rows'
radius of the exact maxima: Dk's by ``Ops.amax_excluding``, Dz's and Dmax's from the cubic's
row tops of W and leftover tables of EUPU + own (``pessimize``; ``first_not_excluded``). So the
class bound, proven negative at both placements for both classes, gives Ft_x < 0 for every
x != m. Unlike the cubic's class bound it takes the exact maximum of Dk over x (the cubic
bounds the EUPU and EVOU parts separately).                                              QED
Mixed form (per-output keys with a set X of "solo" outputs, certificate field ``l1_outputs``).
Claim: a key whose solo outputs x in X (x != m) pass the per-output test and whose other outputs
C (x != m, x not in X) pass it as one class (each group's D_g replaced by max_{x' in C} D_g[x'])
satisfies the same property. Proof: for x in C, sum_g alpha_g H_g(x) <= sum_g alpha_g
max_{x' in C} H_g(x') (every alpha_g > 0), and the float maximum of a subset of a row is within
the row's radius of the exact one (as for ``Ops.amax``); Dz's is read off W[q]'s sorted order
and Dmax's (EUPU[q, x] + own[m, x] - base[q, m]) found by ``core.maxplus``'s threshold search
on the sorted rows of EUPU[q] and own[m], both the same float as that maximum (fl(. - base) is
monotone, so the shift commutes with the max). X = every output is the per-output test; the
search picks a small X, which makes the test cost about 3 d_vocab instead of 11.          QED
Cost: ``level1_flops``; per key about 11 d_vocab per output (2 - 3 d_vocab plus 13 per solo output
in the mixed form), 2 d_vocab in the class form, and 2 d_vocab per pair (q, m).
"""

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.core import maxplus
from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.proofs import cubic
from compact_proofs.proofs.cubic import cases, count, pessimize, screen
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


def cubic_keys(
    weights: Weights,
    ops: Ops,
    thresholds: Tensor | None = None,
    routes: Tensor | None = None,
) -> CubicKeys:
    """Stage 1: the cubic checker's steps (1)-(6) (``cubic.decide_keys``), keeping every key's
    verdict; the screen tests only the ``thresholds`` and the keys take the ``routes`` if
    given (certificate fields ``screen_j`` and ``cubic_routes``: hints, sound whatever they
    say).

    Cost: exactly ``cubic.cubic_flops`` with the stage's ``tiers``, plus the cubic's integer
    tally (the same operations as ``cubic.check``).
    """
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    covered = count.Covered(V, n)  # dense [q, m, k, c] verdicts
    stage = cubic.decide_keys(weights, ops, covered.add, thresholds, routes)
    count.tally_int_ops(ops.ledger, V, n)
    return CubicKeys(
        **vars(stage),
        proven=covered.proven,
        flops=cubic.cubic_flops(V, n, cfg.d_model, cfg.d_head, stage.tiers),
    )


def with_own_hints(ck: CubicKeys, cfg: ModelConfig) -> CubicKeys:
    """Stage 1 as the checker finds it when the certificate gives the stage's own screen
    thresholds (``ck.thresholds``) and key routes (``ck.routes``): every key is decided by the
    same test as here, so with the same verdict, but each pair runs one screen test and each
    key at most one test (the FLOPs and tiers change, by this closed form)."""
    V, n = cfg.d_vocab, cfg.n_ctx
    q, m = torch.triu_indices(V, V)
    mid, last = screen.hinted_tests(q, m, ck.thresholds[q, m], n)
    rq, rm, rk, rc, rr = ck.routes.unbind(1)
    lower = rc <= n - 2
    skip = rr == cases.ROUTE_SKIP
    triple = (rq * V + rm) * V + rk
    # a triple is not evaluated when every one of its keys (c = 1 .. n-2, and n-1 if q = m)
    # is routed to no test
    codes, skips = torch.unique(triple[skip], return_counts=True)
    keys_of = (n - 2) + (codes // (V * V) == (codes // V) % V).to(torch.int64)
    t = ck.tiers
    tiers = dataclasses.replace(
        t,
        mid_tests=mid,
        last_tests=last,
        valued=t.left_triples - int((skips == keys_of).sum()),
        all_c_tests=(t.left_triples - torch.unique(triple[lower]).numel()) if n >= 4 else 0,
        per_c=int((lower & (rr == cases.ROUTE_ONE_SHOT)).sum()),
        rechecked=int((lower & (rr == cases.ROUTE_PLACEMENT)).sum()),
        diag_tests=t.left_diag - int((~lower & skip).sum()),
    )
    flops = cubic.cubic_flops(V, n, cfg.d_model, cfg.d_head, tiers)
    return dataclasses.replace(ck, tiers=tiers, flops=flops)


def certificate_routes(ck: CubicKeys) -> Tensor:
    """Stage 1's key routes as the certificate states them (``cubic.compact_routes``)."""
    return cubic.compact_routes(ck.routes, ck.circ.EVOU.shape[0], ck.circ.PVOU.shape[0])


def valid_keys(keys: Int[Tensor, "keys 4"], V: int, n: int) -> Bool[Tensor, " keys"]:
    """Homogeneous keys (q, m, k, c) that exist: q <= m < V, 0 <= k < m, 1 <= c <= n-1, and
    c <= n-2 unless q = m (the max must appear outside the query)."""
    q, m, k, c = keys.unbind(1)
    ok = (q >= 0) & (q <= m) & (m < V) & (k >= 0) & (k < m) & (c >= 1) & (c <= n - 1)
    return ok & ((c <= n - 2) | (q == m))


def unproven(keys: Int[Tensor, "keys 4"], proven: Tensor) -> Bool[Tensor, " keys"]:
    """Which keys (q, m, k, c) are not yet proven in ``proven[q, m, k, c]``."""
    return ~proven[keys[:, 0], keys[:, 1], keys[:, 2], keys[:, 3]]


def level1(
    ck: CubicKeys,
    keys: Int[Tensor, "keys 4"],
    class_keys: Int[Tensor, "class_keys 4"],
    ops: Ops,
    solo: Bool[Tensor, "keys d_vocab_out"] | None = None,
) -> tuple[Bool[Tensor, " keys"], Bool[Tensor, " class_keys"]]:
    """Stage 2: decide the valid homogeneous keys (q, m, k, c): ``keys`` per output logit (only
    the outputs ``solo`` one by one and the others as one class: the mixed form; None: every
    output one by one), ``class_keys`` in the class form (module docstring; needs d_vocab >= 3).
    Keys must be valid (``valid_keys``). The rows that depend on (q, m) only are computed once
    per pair (``_pair_rows``). Cost: ``level1_flops``."""
    n = ck.circ.PVOU.shape[0]
    both = torch.cat([keys, class_keys])
    if both.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)
    V = ck.circ.EVOU.shape[0]
    if solo is None:
        solo = torch.ones(keys.shape[0], V, dtype=torch.bool)
    solo = torch.cat([solo, torch.zeros(class_keys.shape[0], V, dtype=torch.bool)])
    codes, pair_of = torch.unique(both[:, 0] * V + both[:, 1], return_inverse=True)
    pairs = torch.stack([codes // V, codes % V], 1)  # (q, m), in (q, m) order
    last = both[:, 3] == n - 1
    is_class = torch.arange(both.shape[0]) >= keys.shape[0]

    def pairs_with(sel: Tensor) -> Tensor:
        return torch.zeros(pairs.shape[0], dtype=torch.bool).index_fill_(0, pair_of[sel], True)

    rows = _pair_rows(ck, pairs, ops)
    w_order = _sorted_w(ck, both[~is_class, 0], ops)
    dmax = _dmax_rows(ck, both[~is_class & ~last], ops)
    out = torch.zeros(both.shape[0], dtype=torch.bool)
    for s in range(0, both.shape[0], KEY_CHUNK):
        chunk = slice(s, s + KEY_CHUNK)
        for is_last, cls in itertools.product((False, True), (False, True)):
            sel = (last[chunk] == is_last) & (is_class[chunk] == cls)
            idx = s + torch.nonzero(sel, as_tuple=True)[0]
            if idx.numel() and cls:
                out[idx] = _class_chunk(ck, rows, pair_of[idx], both[idx], is_last, ops)
            elif idx.numel():
                out[idx] = _level1_chunk(
                    ck, rows, w_order, dmax, pair_of[idx], both[idx], is_last, solo[idx], ops
                )
    return out[: keys.shape[0]], out[keys.shape[0] :]


def _sorted_w(ck: CubicKeys, q: Int[Tensor, " keys"], ops: Ops) -> Tensor:
    """The rows W[q, :] of the queries ``q`` sorted (descending order per row; rows of other
    queries -1), for the maxima of Dz over a class (``_level1_chunk``). Cost: d_vocab - 1 per
    distinct query (sort-verification)."""
    V = ck.slots.W.shape[0]
    order = torch.full((V, V), -1, dtype=torch.int64)
    qs = torch.unique(q)
    if qs.numel():
        order[qs] = ops.sort_indices(ck.slots.W[qs], dim=1, descending=True, label=LABEL)[1]
    return order


@dataclass(frozen=True)
class _PairRows:
    """Per pair (q, m), the row ``pvm`` = EUPU[q, x] - EUPU[q, m] + PVnq[m, x] over x."""

    pvm: Approx  # [pairs, x]


def _pair_rows(ck: CubicKeys, pairs: Int[Tensor, "pairs 2"], ops: Ops) -> _PairRows:
    """From the cubic's slot tables (``pessimize.SlotTables``: PVnq). Cost: 2 d_vocab per pair."""
    S = ck.slots
    q, m = pairs.unbind(1)
    eu = ops.sub(S.EUPU[q], S.EUPU[q, m].map_layout(lambda t: t[:, None]), label=LABEL)
    return _PairRows(pvm=ops.add(eu, S.pv[m], label=LABEL))  # + PVnq[m, x]


@dataclass(frozen=True)
class _DmaxRows:
    """Dmax[q, m, x] = EUPU[q, x] + own[m, x] - base[q, m] (``pessimize``) is read from the rows
    EUPU[q] and own[m] with their sorted orders: ``eu`` holds the row of query q at
    ``eu_of[q]``, ``own`` that of max token m at ``own_of[m]`` (-1: none)."""

    eu: Approx  # [rows, x]
    eu_sorted: maxplus.SortedRows
    eu_of: Int[Tensor, " d_vocab"]
    own: Approx  # [rows', x]
    own_sorted: maxplus.SortedRows
    own_of: Int[Tensor, " d_vocab"]
    new_rows: int  # rows sorted here (the others come sorted from stage 1)


def _dmax_rows(ck: CubicKeys, keys: Int[Tensor, "keys 4"], ops: Ops) -> _DmaxRows:
    """The rows of EUPU and own the per-output ``keys`` (c <= n-2) need, sorted: those the
    cubic stage sorted for its leftover pairs (``pessimize.LeftoverTables``; every pair with a
    key the cubic leaves unproven is among them), the others sorted here.
    Cost: d_vocab - 1 per row sorted here."""
    S, lt = ck.slots, ck.leftover
    V = S.EUPU.shape[0]

    def rows(table: Approx, have: maxplus.SortedRows | None, have_of: Tensor | None, need: Tensor):
        row_of = torch.full((V,), -1, dtype=torch.int64) if have_of is None else have_of.clone()
        tokens = torch.empty(int((row_of >= 0).sum()), dtype=torch.int64)
        tokens[row_of[row_of >= 0]] = torch.nonzero(row_of >= 0, as_tuple=True)[0]
        new = torch.unique(need[row_of[need] < 0])
        row_of[new] = tokens.numel() + torch.arange(new.numel())
        fresh = maxplus.sort_rows(table[new], ops, label=LABEL)
        if have is not None:
            fresh = maxplus.SortedRows(
                Ops.cat([have.values, fresh.values], 0), torch.cat([have.order, fresh.order])
            )
        return table[torch.cat([tokens, new])], fresh, row_of, new.numel()

    eu, s_eu, eu_of, n_eu = rows(
        S.EUPU, lt.eu if lt else None, lt.eu_of if lt else None, keys[:, 0]
    )
    own, s_own, own_of, n_own = rows(
        S.own, lt.own if lt else None, lt.own_of if lt else None, keys[:, 1]
    )
    return _DmaxRows(eu, s_eu, eu_of, own, s_own, own_of, n_eu + n_own)


def _dmax_class(
    dm: _DmaxRows, q: Tensor, m: Tensor, rest: Bool[Tensor, "keys d_vocab_out"]
) -> tuple[Approx, Tensor]:
    """Per key, max over the outputs ``rest`` (non-empty) of EUPU[q, x] + own[m, x], by the
    threshold search on the sorted rows (``core.maxplus``: the same float as the reduction
    over the class), and the stage that settled it. Scratch arithmetic (the caller charges
    ``maxplus.pair_flops``)."""
    width = int((~rest).sum(dim=1).max())
    out = (~rest).to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]
    out = torch.where((~rest).gather(1, out), out, m[:, None])  # padded with m (never in rest)
    val, _, stage = maxplus.max_of_sums(
        dm.eu, dm.eu_sorted, dm.eu_of[q], dm.own, dm.own_sorted, dm.own_of[m], out, Ops(), LABEL
    )
    return val, stage


def _log_weights(ck: CubicKeys, keys: Tensor, last: bool, ops: Ops) -> Approx:
    """Group log-weights: ``[L, 1, (k, query)]`` for c = n-1, else ``[L, placement, (max, k,
    query)]`` (module docstring). Cost: 1 per key (c = n-1), else 4."""
    q, m, k, c = keys.unbind(1)
    L = q.numel()
    if last:
        lw = [ops.add(ck.EQKE_s[q, k], ck.lse_all[q], label=LABEL), ck.z[q]]
        return Ops.stack(lw, dim=-1)[:, None, :]
    g = ck.groups[q, c - 1]  # [L, placement, 2]

    def per_r(a: Approx) -> Approx:
        return a.map_layout(lambda t: t[:, None].expand(L, 2))

    return Ops.stack(
        [
            ops.add(per_r(ck.EQKE_s[q, m]), g[..., 0], label=LABEL),
            ops.add(per_r(ck.EQKE_s[q, k]), g[..., 1], label=LABEL),
            per_r(ck.z[q]),
        ],
        dim=-1,
    )


def _level1_chunk(
    ck: CubicKeys,
    rows: _PairRows,
    w_order: Tensor,
    dmax: _DmaxRows,
    pair_of: Tensor,
    keys: Int[Tensor, "keys 4"],
    last: bool,
    solo: Bool[Tensor, "keys d_vocab_out"],
    ops: Ops,
) -> Bool[Tensor, " keys"]:
    """Per-output test (mixed form: the outputs ``solo`` one by one, the others x != m as one
    class) of keys with 1 <= c <= n-2 (``last`` False) or c = n-1 (``last`` True, q = m); key i
    belongs to the pair ``pair_of[i]`` of ``rows``. Dz = W[q, x] - W[q, m] is taken at the solo
    outputs, and over the class from W[q]'s sorted order (``w_order``: its first output in the
    class is the max, the same float as a reduction); Dmax likewise at the solo outputs, and
    over the class by the threshold search on the sorted rows of EUPU[q] and own[m] (``dmax``,
    ``_dmax_class``). The solo outputs are gathered and padded to the chunk's most (padding
    never decides); the arithmetic is rigorous ``Ops`` on the padded tensors, and the ledger is
    charged ``_level1_key_flops`` for the real entries only."""
    q, m, k, c = keys.unbind(1)
    L, V = q.numel(), solo.shape[1]
    ar = torch.arange(L)
    S = ck.slots
    u, shift = _u_k(ck, rows, pair_of, m, k, ops)  # Dk = u - shift, taken where needed
    w_qm = S.W[q, m].map_layout(lambda t: t[:, None])  # [L, 1]
    D = [u, S.W[q]]  # [L, x] each; the query slot's row is W (Dz = W - W[q, m])
    if not last:
        D += [S.EUPU[q], S.own[m]]  # Dmax = EUPU[q, x] + own[m, x] - base[q, m]
    g_k, g_z = 0, 1
    base = S.base[q, m].map_layout(lambda t: t[:, None])  # [L, 1]
    logw = _log_weights(ck, keys, last, ops)
    s = Ops()  # scratch: charged per key below
    top, others, ratio = _ratios(logw, s)
    solo = solo.clone()
    solo[ar, m] = False
    rest = ~solo
    rest[ar, m] = False
    n_solo, n_rest = solo.sum(dim=1), rest.sum(dim=1)
    ok = torch.ones(L, dtype=torch.bool)
    dmax_cost = torch.zeros(L, dtype=torch.int64)
    J = int(n_solo.max())
    if J:
        at, pad = _gather(D, solo, J)  # [L, J] each
        at[g_k] = s.sub(at[g_k], shift.map_layout(lambda t: t[:, None]), label=LABEL)
        at[g_z] = s.sub(at[g_z], w_qm, label=LABEL)
        if not last:
            own, eu = at.pop(), at.pop()
            at.insert(0, s.sub(s.add(eu, own, label=LABEL), base, label=LABEL))  # Dmax
        bound = _combine(top, others, ratio, at, s)  # [L, r, J]
        bound = bound.map_layout(lambda t: t.masked_fill(pad[:, None, :], -torch.inf))
        worst = s.amax(bound, dim=2)  # [L, r]
        ok &= s.proven_negative(worst).all(dim=1) | (n_solo == 0)
    sel = torch.nonzero(n_rest > 0, as_tuple=True)[0]
    if sel.numel():
        # The class of the other outputs: each group's max over them (module docstring).
        (at,), pad = _gather([u[sel]], rest[sel], int(n_rest.max()))
        cls = [s.amax(at.map_layout(lambda t: t.masked_fill(pad, -torch.inf)), 1)]
        cls[g_k] = s.sub(cls[g_k], shift[sel], label=LABEL)
        order = w_order[q[sel]]  # [S, x], descending W[q, x]
        first = rest[sel].gather(1, order).to(torch.int8).argmax(dim=1, keepdim=True)
        w_top = S.W[q[sel]].map_layout(lambda t: t.gather(1, order.gather(1, first))[:, 0])
        s.ledger.add(sel.numel(), label=LABEL)  # one selection per key (``first_not_excluded``)
        cls.append(s.sub(w_top, w_qm[sel][:, 0], label=LABEL))
        if not last:
            best, stage = _dmax_class(dmax, q[sel], m[sel], rest[sel])
            dmax_cost[sel] = maxplus.pair_flops(stage, V)
            cls.insert(0, s.sub(best, base[sel][:, 0], label=LABEL))
        cls = [x.map_layout(lambda t: t[:, None]) for x in cls]  # [S, 1] each
        bound = _combine(top[sel], others[sel], ratio[sel], cls, s)  # [S, r, 1]
        ok[sel] &= s.proven_negative(bound).flatten(1).all(dim=1)
    ops.ledger.add(int(_level1_key_flops(V, last, n_solo, n_rest, dmax_cost).sum()), label=LABEL)
    return ok


def _gather(D: list[Approx], where: Tensor, width: int) -> tuple[list[Approx], Tensor]:
    """Each row's entries at the outputs ``where`` [L, x] (in output order), padded to
    ``width`` columns: the rows ``[L, width]`` and the padding mask."""
    cols = where.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]
    pad = torch.arange(width)[None, :] >= where.sum(dim=1)[:, None]
    return [d.map_layout(lambda t: t.gather(1, cols)) for d in D], pad


def level1_terms(
    ck: CubicKeys, keys: Int[Tensor, "keys 4"], last: bool, ops: Ops
) -> tuple[Approx, list[Approx]]:
    """For the search: the group log-weights ``[L, r, G]`` and rows D_g ``[L, x]`` of keys with
    c = n-1 (``last``) or all with c <= n-2, as ``_level1_chunk`` tests them."""
    V = ck.circ.EVOU.shape[0]
    codes, pair_of = torch.unique(keys[:, 0] * V + keys[:, 1], return_inverse=True)
    pairs = torch.stack([codes // V, codes % V], 1)
    rows = _pair_rows(ck, pairs, ops)
    u, shift = _u_k(ck, rows, pair_of, keys[:, 1], keys[:, 2], ops)
    d_k = ops.sub(u, shift.map_layout(lambda t: t[:, None]), label=LABEL)
    q, m = keys[:, 0], keys[:, 1]
    W = ck.slots.W
    d_z = ops.sub(W[q], W[q, m].map_layout(lambda t: t[:, None]), label=LABEL)  # Dz
    D = [d_k, d_z]
    if not last:  # Dmax = EUPU[q, x] + own[m, x] - base[q, m]
        S = ck.slots
        base = S.base[q, m].map_layout(lambda t: t[:, None])
        D.insert(0, ops.sub(ops.add(S.EUPU[q], S.own[m], label=LABEL), base, label=LABEL))
    return _log_weights(ck, keys, last, ops), D


def _u_k(
    ck: CubicKeys, rows: _PairRows, pair_of: Tensor, m: Tensor, k: Tensor, ops: Ops
) -> tuple[Approx, Approx]:
    """Dk[q, m, k, x] = u[x] - EVOU[k, m] with u = pvm[q, m, x] + EVOU[k, x]: the rows u [L, x]
    and the shifts EVOU[k, m] [L] (a max of Dk over outputs is the max of u, shifted once).
    Cost: d_vocab per key."""
    return ops.add(rows.pvm[pair_of], ck.circ.EVOU[k], label=LABEL), ck.circ.EVOU[k, m]


def _class_chunk(
    ck: CubicKeys,
    rows: _PairRows,
    pair_of: Tensor,
    keys: Int[Tensor, "keys 4"],
    last: bool,
    ops: Ops,
) -> Bool[Tensor, " keys"]:
    """Class-form test (module docstring) of keys as in ``_level1_chunk``. The class maxima of
    Dz and Dmax come from the cubic's row tops and leftover tables (``pessimize``: the maxima
    of W[q, x] and of EUPU[q, x] + own[m, x] over x not in {m, k}); a key whose pair they do
    not cover (never the case for a key the cubic left unproven) is not proven."""
    S, tops = ck.slots, ck.row_tops
    q, m, k, c = keys.unbind(1)
    L, V = q.numel(), S.EUPU.shape[1]
    ar = torch.arange(L)
    u, shift = _u_k(ck, rows, pair_of, m, k, ops)
    mk = torch.stack([m, k], 1)

    def classes(at_k: Approx, rest: Approx) -> Approx:  # [L, class]: x = k, x not in {m, k}
        return Ops.stack([at_k, rest], dim=1)

    w_qm = S.W[q, m]
    groups = [
        classes(
            ops.sub(u[ar, k], shift, label=LABEL),
            ops.sub(ops.amax_excluding(u, 1, mk, label=LABEL), shift, label=LABEL),
        ),
        classes(
            ops.sub(S.W[q, k], w_qm, label=LABEL),
            ops.sub(
                ops.first_not_excluded(tops.W[q], tops.W_idx[q], mk, label=LABEL), w_qm, label=LABEL
            ),
        ),
    ]
    usable = torch.ones(L, dtype=torch.bool)
    if not last:
        row, usable = pessimize.leftover_rows(ck.leftover, q, m, k, V)
        lt, base = ck.leftover, S.base[q, m]
        at_k = ops.sub(ops.add(S.EUPU[q, k], S.own[m, k], label=LABEL), base, label=LABEL)
        rest = ops.first_not_excluded(lt.top[row], lt.idx[row], k[:, None], label=LABEL)
        groups.insert(0, classes(at_k, ops.sub(rest, base, label=LABEL)))
    logw = _log_weights(ck, keys, last, ops)
    bound = _combine(*_ratios(logw, ops), groups, ops)  # [L, r, class]
    return ops.proven_negative(bound, label=LABEL).flatten(1).all(dim=1) & usable


def _ratios(logw: Approx, ops: Ops) -> tuple[Tensor, Tensor, Approx]:
    """The top group (largest log-weight) per key and placement, the other groups, and their
    weight ratios exp(L_g - L_top) in (0, 1] (``exp_nonpositive`` of L_g - L_top, whose float
    value is <= 0, so the radius stays small). ``logw`` ``[L, r, group]``. Cost per key and
    placement: G - 1 (the top), 2 (G - 1) (ratios)."""
    Lk, R, G = logw.shape
    top = logw.mid.argmax(dim=-1, keepdim=True)  # [L, r, 1]
    others = (top + torch.arange(1, G)) % G  # [L, r, G-1]
    ops.ledger.add(Lk * R * (G - 1), label=LABEL)
    L_top = logw.map_layout(lambda t: t.gather(-1, top))
    ratio = ops.exp_nonpositive(
        ops.sub(logw.map_layout(lambda t: t.gather(-1, others)), L_top, label=LABEL), label=LABEL
    )  # [L, r, G-1]
    return top, others, ratio


def _combine(top: Tensor, others: Tensor, ratio: Approx, rows: list[Approx], ops: Ops) -> Approx:
    """``D_top + sum_{g != top} exp(L_g - L_top) D_g`` per key and placement, with top the group
    of the largest log-weight (``_ratios``): sum_g exp(L_g) D_g divided by exp(L_top) > 0, so it
    has the same sign as sum_g alpha_g D_g (module docstring). ``rows`` one ``[L, X]`` per
    group; returns ``[L, r, X]``. Cost per key and placement: 2 (G - 1) X (products and sums)."""
    Lk = top.shape[0]
    D = Ops.stack(rows, dim=1)  # [L, group, X]

    def pick(idx: Tensor) -> Approx:  # [L, r, j] -> [L, r, j, X]
        return D.map_layout(lambda t: t[torch.arange(Lk)[:, None, None], idx])

    bound = pick(top)[:, :, 0]
    terms = ops.mul(ratio.map_layout(lambda t: t[..., None]), pick(others), label=LABEL)
    for j in range(others.shape[2]):
        bound = ops.add(bound, terms[:, :, j], label=LABEL)
    return bound


def level1_flops(
    ck: CubicKeys, keys: Int[Tensor, "keys 4"], class_keys: Tensor, solo: Tensor | None = None
) -> int:
    """Ledger total of ``level1`` on ``keys`` (per output, mixed with a class where ``solo``, as
    in ``level1``) and ``class_keys`` (class form), with stage 1 ``ck`` (the cost of a Dmax
    class maximum depends on the rows: ``_dmax_class``)."""
    V, n = ck.circ.EVOU.shape[0], ck.circ.PVOU.shape[0]
    both = torch.cat([keys, class_keys])
    if both.shape[0] == 0:
        return 0
    # per pair: eu, PVnq add; per query of the per-output keys, its row of W sorted (d_vocab -
    # 1); the rows of EUPU and own the per-output keys c <= n-2 need that stage 1 did not sort
    total = torch.unique(both[:, 0] * V + both[:, 1]).numel() * 2 * V
    total += torch.unique(keys[:, 0]).numel() * (V - 1)
    total += _dmax_rows(ck, keys[keys[:, 3] <= n - 2], Ops()).new_rows * (V - 1)
    per_key, per_class_key = level1_key_flops(ck, keys, class_keys, solo)
    return total + int(per_key.sum()) + int(per_class_key.sum())


def level1_key_flops(
    ck: CubicKeys, keys: Int[Tensor, "keys 4"], class_keys: Tensor, solo: Tensor | None = None
) -> tuple[Int[Tensor, " keys"], Int[Tensor, " class_keys"]]:
    """``level1_flops`` per key, without the terms shared by a pair or a token (each (q, m)
    pair's row, each query's sorted row of W and each row of EUPU and own sorted here are
    charged once, whichever keys share them)."""
    # per key: u (V) and log-weights (4 at 2 placements, 1 at c = n-1), then
    # ``_level1_key_flops``. Class form: max of u over x not in {m, k} (V-1), Dk at k and its
    # class max (2 shifts), Dz at k and its class max (1 + 2), Dmax at k and its class max
    # (2 + 2), top and ratios, products and sums per placement and class (16, or 4 with 2
    # groups), decisions (4, or 2).
    V, n = ck.circ.EVOU.shape[0], ck.circ.PVOU.shape[0]
    per_key = torch.zeros(keys.shape[0], dtype=torch.int64)
    if keys.shape[0]:
        solo = torch.ones(keys.shape[0], V, dtype=torch.bool) if solo is None else solo.clone()
        solo[torch.arange(keys.shape[0]), keys[:, 1]] = False
        n_solo = solo.sum(dim=1)
        n_rest = V - 1 - n_solo
        rest = ~solo
        rest[torch.arange(keys.shape[0]), keys[:, 1]] = False
        dmax_cost = torch.zeros(keys.shape[0], dtype=torch.int64)
        with_class = torch.nonzero((keys[:, 3] <= n - 2) & (n_rest > 0), as_tuple=True)[0]
        if with_class.numel():
            q, m = keys[with_class, 0], keys[with_class, 1]
            dm = _dmax_rows(ck, keys[with_class], Ops())
            dmax_cost[with_class] = maxplus.pair_flops(
                _dmax_class(dm, q, m, rest[with_class])[1], V
            )
        for is_last in (False, True):
            sel = (keys[:, 3] == n - 1) == is_last
            per = _level1_key_flops(V, is_last, n_solo[sel], n_rest[sel], dmax_cost[sel])
            per_key[sel] = per + (V + (1 if is_last else 4))
    c_last = class_keys[:, 3] == n - 1
    mid = V + 4 + (V - 1) + 2 + 3 + 4 + 4 + 8 + 16 + 4
    end = V + 1 + (V - 1) + 2 + 3 + 1 + 2 + 4 + 2
    per_class_key = torch.where(c_last, end, mid).to(torch.int64)
    return per_key, per_class_key


def _level1_key_flops(V: int, last: bool, n_solo: Tensor, n_rest: Tensor, dmax: Tensor) -> Tensor:
    """Per key of ``_level1_chunk`` after u and the log-weights, with G groups at r placements
    (3 at 2, or 2 at 1 for c = n-1): the top (r (G-1)) and ratios (2 r (G-1)); per solo output
    Dk and Dz (1 each) and Dmax (2, for c <= n-2), the products and sums (2 r (G-1)), their
    max (r (J-1)) and the decisions (r); with other outputs, the max of Dk over them (R-1),
    its shift (1), Dz's from W's sorted order (a selection and a shift: 2), Dmax's by the
    threshold search (``dmax``, per key) and its shift (1, for c <= n-2), their products and
    sums (2 r (G-1)) and the decisions (r)."""
    G, r = (2, 1) if last else (3, 2)
    J, R = n_solo.to(torch.int64), n_rest.to(torch.int64)
    per_solo = 2 if last else 4
    out = 3 * r * (G - 1) + (2 * r * (G - 1) + per_solo) * J
    out = out + torch.where(J > 0, r * (J - 1) + r, 0)
    dmax_class = 0 if last else dmax + 1
    return out + torch.where(R > 0, (R - 1) + 1 + 2 + dmax_class + 2 * r * (G - 1) + r, 0)


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
