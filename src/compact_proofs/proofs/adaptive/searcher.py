"""Adaptive proof: the UNTRUSTED search that writes the certificate (not counted in FLOPs).

It runs stage 1, tries level 1 on every unproven homogeneous key, then branch-and-bound on the
root boxes of every key still not fully covered: a box that the box bound neither proves nor
refutes is split in two along one slot, until every leaf is proven, refuted, or a single input
(decided exactly). With a FLOP budget it keeps only the refinements with the best proven inputs
per FLOP that fit. Nothing here is trusted: the checker rebuilds and re-checks everything.

``explore`` does the (budget-independent) work once; ``for_budget`` turns it into the
certificate for any budget (benchmarks/bench_adaptive.py draws the bound-vs-budget curve so).
Speed: the box bounds are only evaluated at the outputs still "live" (not yet below 0 on an
ancestor box, which stays so on every sub-box), and a coarse per-root bound prunes outputs
first; the decisions are the checker's exactly (same values, same radii).
"""

import bisect
import contextlib
import contextvars
import functools
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.proofs.adaptive import boxes, cost, counts, keys, plan, singles, tree
from compact_proofs.proofs.adaptive import budget as budget_mod
from compact_proofs.proofs.protocol import Certificate
from compact_proofs.weights import Weights

# Stacked box tables (float64 elements) per branch-and-bound batch of keys (q, m): 128 MB.
TABLE_ELEMENTS = 1 << 24
# Refinement of a key (q, m, c) is skipped when it has more placements than this.
MAX_PLACEMENTS = 512
# ... and a group of keys (q, m, c) with i* = w when it has more (placement, U positions) root
# shapes than this (C(n-1, c) C(c, w + 1)): at large n_ctx they would be too many boxes.
MAX_SHAPES = 4096
MAX_DEPTH = 64
# At most this many root boxes (fewest free slots first, then the largest), and at most this
# many tree nodes in all: beyond them the search stops refining (the bound stays sound).
# Small contexts (n_ctx <= SMALL_CTX) get the larger limits. Measured on trained d_vocab 64
# models: at n_ctx = 4 they make Max-of-4 seeds 2345 and 16197 exact (short by 120,461 and
# 133,728 inputs with the smaller ones; the other 149 paper seeds need fewer roots); at
# n_ctx = 10 (seed 50) they would cost 2.4x the check FLOPs and 6x the time for +5e-6 bound.
SMALL_CTX = 5
MAX_ROOTS = {True: 1 << 15, False: 1 << 13}
MAX_NODES = {True: 1 << 19, False: 1 << 17}
# Count keys are tried for i = 1 .. MAX_COUNT unproven tokens, from n_ctx = COUNT_FROM on.
# Measured on trained d_vocab 64 models: at n_ctx = 4 they cost more check FLOPs than the
# boxes they replace (seed 123: 3.41e7 with, 3.14e7 without; same exact count), at n_ctx = 10
# they are most of the gain (seed 50: bound 0.9984 with, 0.9779 without).
MAX_COUNT = 3
COUNT_FROM = 5
# Level-1 keys take the mixed form with at most this many solo outputs (else every output).
MAX_SOLO = 24


@dataclass
class _Tree:
    """Growing refinement trees (nodes 0 .. R-1 are the roots)."""

    q: Tensor
    m: Tensor
    masks: Tensor  # [nodes, slots, V]
    sizes: Tensor  # [nodes, slots] = masks.sum(dim=2)
    root: Tensor  # root id of each node
    row: Tensor  # row of the node's key in the current stacked tables (-1: other batch)
    claim: Tensor  # int8
    witness: Tensor
    parent: list
    slot: list
    split_mask: list
    # [d_vocab_q, d_vocab_max, 4]: each key's number of live outputs by the key bounds
    # (boxes.tables), by the exact bound at those (boxes.exact_key_live) and by claim (c)
    # alone, and the size of its set Hi (claim (e) of boxes)
    live: Tensor
    own_E: Tensor  # the max tokens whose keys' tables take their own E

    def nodes(self) -> tree.Nodes:
        """Every node, as ``tree.build`` rebuilds them from the certificate of all the roots
        (the same ids: roots, then the children of split i at R + 2i and R + 2i + 1)."""
        leaf = torch.ones(self.q.shape[0], dtype=torch.bool)
        if self.parent:
            leaf[torch.cat(self.parent)] = False
        return tree.Nodes(q=self.q, m=self.m, masks=self.masks, sizes=self.sizes, leaf=leaf)


def search(weights: Weights, budget: int | None = None) -> Certificate:
    """Build a certificate; with ``budget`` (FLOPs of the check), keep only the refinements
    with the most proven inputs per FLOP that fit (the check then costs at most ``budget``
    FLOPs, exact near-tie decisions included, unless the cubic stage alone exceeds it).
    When the cubic stage alone uses the whole budget, no refinement can fit: the certificate is
    the empty one (the cubic proof), without exploring (at d_vocab 128, Max-of-10 the
    exploration takes minutes)."""
    cfg = weights.config
    shared = _SHARED.get()
    key = weights.sha256() if shared is not None else ""
    found = shared.get(key) if shared is not None else None
    ck = found.state.ck if found is not None else stage1(weights)
    if budget is not None and budget <= ck.flops:
        cert = {name: plan.empty_tensor(name, cfg.d_vocab) for name in plan.TENSORS}
        cert["screen_j"], cert["cubic_routes"] = ck.thresholds.clone(), keys.certificate_routes(ck)
        return {**cert, "budget": int(budget), "predicted": ck.flops}
    if found is None:
        t0 = time.perf_counter()
        state = explore(weights, ck)
        if shared is not None:
            shared[key] = _Explored(state, time.perf_counter() - t0)
    else:
        state = found.state
        _REUSED.set(_REUSED.get() + found.seconds)
    cert = for_budget(cfg, state, budget)
    if shared is None:
        return cert
    # Copies: a caller that edits its certificate must not change the shared state.
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in cert.items()}


@dataclass(frozen=True)
class _Explored:
    state: budget_mod.State
    seconds: float  # the wall time ``explore`` took


# The explorations of the models searched within ``shared_exploration`` (None outside it), and
# the seconds of the explorations reused since ``take_reused_seconds`` was last called.
_SHARED: contextvars.ContextVar[dict[str, _Explored] | None] = contextvars.ContextVar(
    "adaptive_explorations", default=None
)
_REUSED: contextvars.ContextVar[float] = contextvars.ContextVar("adaptive_reused", default=0.0)


def take_reused_seconds() -> float:
    """The wall time of the shared explorations the searches since the last call reused (and
    did not repeat), then 0 again: ``api.prove_one`` adds it to a search's time, so a shared
    search reports what it would take alone."""
    seconds = _REUSED.get()
    _REUSED.set(0.0)
    return seconds


@contextlib.contextmanager
def shared_exploration() -> Iterator[None]:
    """Within this block, searches of one model (by sha256) share one ``explore``: the
    unbudgeted search and every budget of a ``prove(..., "all")`` explore once, not four times
    (``explore`` is budget-independent and ``for_budget`` leaves its state unchanged). Only
    the wall time changes: the certificates are those of separate searches, and the reported
    search times too (``take_reused_seconds``)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def stage1(weights: Weights) -> keys.CubicKeys:
    """Stage 1 as the check will run it: the certificate gives it the screen thresholds and
    the key routes the cubic's own cascade finds here (``screen_j``, ``cubic_routes``), so the
    check runs one screen test per pair and at most one test per key."""
    return keys.with_own_hints(keys.cubic_keys(weights, Ops()), weights.config)


def explore(
    weights: Weights, ck: keys.CubicKeys | None = None, level1_in_box_pairs: bool = False
) -> budget_mod.State:
    """Every refinement the search finds (the expensive part; budget-independent); ``ck`` is
    stage 1's result if already computed. Level 1 is left out of the pairs that go to the box
    stage anyway (``_without_box_pairs``) unless ``level1_in_box_pairs``; the state then holds
    (``State.for_fit``) the exploration with it, for budgets too small for the boxes."""
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    ops = Ops()  # scratch: nothing here is counted
    ck = ck if ck is not None else stage1(weights)
    proven = ck.proven.clone()
    cand = _candidate_keys(proven, V, n)
    # Both forms on every candidate: the class form where it succeeds (cheaper), else per output.
    no_keys = cand[:0]
    ok_class = (
        keys.level1(ck, no_keys, cand, ops)[1]
        if V >= 3
        else torch.zeros_like(cand[:, 0], dtype=torch.bool)
    )
    ok = keys.level1(ck, cand[~ok_class], no_keys, ops)[0]
    l1c, l1 = cand[ok_class], cand[~ok_class][ok]
    for_fit = None
    if n < COUNT_FROM and not level1_in_box_pairs:
        all_l1 = l1.shape[0] + l1c.shape[0]
        l1, l1c = _without_box_pairs(l1, l1c, cand[~ok_class][~ok], V)
        if l1.shape[0] + l1c.shape[0] < all_l1:
            for_fit = functools.cache(lambda: explore(weights, ck, level1_in_box_pairs=True))
    # The mixed form where it proves the key too (cheaper), else every output one by one.
    l1_out = _solo_outputs(ck, l1, ops)
    mixed = keys.level1(ck, l1, no_keys, ops, l1_out)[0]
    l1_out[~mixed] = True
    for ks in (l1, l1c):
        proven[ks[:, 0], ks[:, 1], ks[:, 2], ks[:, 3]] = True
    cnt, istar = _count_keys(ck, proven, ops)
    qm = torch.triu_indices(V, V)
    c0 = qm.T[~ck.proven0[qm[0], qm[1]]].contiguous()
    roots = _roots(proven, istar, V, n)
    tr = _branch_and_bound(ck, proven, istar, roots)
    return budget_mod.State(
        ck=ck,
        proven=proven,
        istar=istar,
        tr=tr,
        l1=l1,
        l1_out=l1_out,
        l1c=l1c,
        cnt=cnt,
        roots=roots,
        c0=c0,
        for_fit=for_fit,
    )


def for_budget(cfg: ModelConfig, state: budget_mod.State, budget: int | None) -> Certificate:
    """The certificate of ``state`` for a FLOP budget (None: everything found)."""
    keep = torch.ones(state.roots.shape[0], dtype=torch.bool)
    st = state
    cert = budget_mod.certificate(
        st.tr, st.l1, st.l1_out, st.l1c, st.cnt, st.c0, st.roots, keep, st.ck
    )
    cert["budget"] = -1 if budget is None else int(budget)
    nodes = st.tr.nodes()  # the certificate's, as the checker will rebuild them
    cert["predicted"] = cost.predict(cfg, cert, st.ck, st.proven, st.istar, st.tr.live, nodes)
    if budget is None:
        return cert
    # Everything fits, with the exact decisions of near-ties (charged as they happen, not in
    # ``predicted``) at their most: the full refinement. Otherwise ``fit``, whose certificates
    # make no exact decisions.
    if cert["predicted"] + _exact_charge_bound(cfg, st) <= budget:
        return cert
    return budget_mod.fit(cfg, state.for_fit() if state.for_fit else state, budget)


def _exact_charge_bound(cfg: ModelConfig, st: budget_mod.State) -> int:
    """Upper bound on the exact-stage charge of the full certificate: its c = 0 inputs and its
    single-input leaves claimed "exact" (``singles.exact_charge_bound``)."""
    ck, tr = st.ck, st.tr
    c0 = st.c0[~ck.proven0[st.c0[:, 0], st.c0[:, 1]]]
    ex = torch.nonzero(tr.claim == plan.EXACT, as_tuple=True)[0]
    leaf_tokens = torch.cat([tr.masks[ex].to(torch.int64).argmax(dim=2), tr.q[ex, None]], dim=1)
    tokens = torch.cat([singles.c0_tokens(c0[:, 0], c0[:, 1], cfg.n_ctx), leaf_tokens])
    tables = (ck.EQKE_s, ck.EQKP_s, ck.circ.EUPU, ck.circ.EVOU, ck.circ.PVOU)
    return singles.exact_charge_bound(tokens, tables, cfg.d_model)


def _without_box_pairs(l1: Tensor, l1c: Tensor, failed: Tensor, V: int) -> tuple[Tensor, Tensor]:
    """The level-1 keys (per output ``l1``, class form ``l1c``) of the pairs (q, m) where no
    key of level 1 ``failed``. A pair with a failed key goes to the box stage anyway, and its
    box tables then cover the other keys' inputs for less than their level-1 checks (measured
    on the 151 trained Max-of-4 models: 138 cheaper, by up to 10%; 13 dearer, by up to 4.7%;
    at most 1% of brute force on 121 seeds instead of 116). Not used with count keys (n_ctx >=
    ``COUNT_FROM``): they need the proven tokens (Max-of-5: 15 of 16 models dearer). Nor under a
    budget that leaves out boxes: the level-1 keys are then cheap gains (Max-of-4 seed 123 at
    3e6 FLOPs: 23,717 fewer inputs proven without them)."""
    boxed = torch.zeros(V, V, dtype=torch.bool)
    boxed[failed[:, 0], failed[:, 1]] = True
    return l1[~boxed[l1[:, 0], l1[:, 1]]], l1c[~boxed[l1c[:, 0], l1c[:, 1]]]


def _solo_outputs(ck: keys.CubicKeys, ks: Tensor, ops: Ops) -> Tensor:
    """Per level-1 key, a small set of outputs to test one by one such that the others, as one
    class, pass the mixed form (``keys`` docstring) in float arithmetic: greedily, remove from
    the class the output whose removal lowers the class bound most (one of the groups'
    maxima), at most ``MAX_SOLO`` times. A key that needs more, or whose class would hold a
    single output (testing it alone costs less), keeps every output."""
    V, n = ck.circ.EVOU.shape[0], ck.circ.PVOU.shape[0]
    solo = torch.ones(ks.shape[0], V, dtype=torch.bool)
    for last in (False, True):
        idx = torch.nonzero((ks[:, 3] == n - 1) == last, as_tuple=True)[0]
        for lo in range(0, idx.numel(), keys.KEY_CHUNK):
            sub = idx[lo : lo + keys.KEY_CHUNK]
            logw, D = keys.level1_terms(ck, ks[sub], last, ops)
            alpha = torch.softmax(logw.mid, dim=-1)  # [L, r, G]: the sign is that of the bound
            rows = torch.stack([d.mid for d in D], dim=1)  # [L, G, x]
            solo[sub] = _greedy_solo(alpha, rows, ks[sub, 1])
    return solo


def _greedy_solo(alpha: Tensor, rows: Tensor, m: Tensor) -> Tensor:
    """``_solo_outputs`` for one batch: ``alpha`` [L, r, G], ``rows`` [L, G, x], max tokens
    ``m`` [L]."""
    L, G, V = rows.shape
    rest = torch.ones(L, V, dtype=torch.bool)  # the class
    rest[torch.arange(L), m] = False
    todo = torch.arange(L)
    for step in range(MAX_SOLO + 1):
        a, r = alpha[todo], rows[todo]
        below = _class_bound(a, r, rest[todo][:, None, :])[:, 0] < 0
        todo, a, r = todo[~below], a[~below], r[~below]
        if todo.numel() == 0 or step == MAX_SOLO:
            break
        # Each group's argmax over the class, and the class bound without it.
        at = r.masked_fill(~rest[todo, None, :], -torch.inf).argmax(dim=2)  # [T, G]
        trial = rest[todo, None, :].repeat(1, G, 1)  # [T, trial, x]
        trial.scatter_(2, at[:, :, None], False)
        best = _class_bound(a, r, trial).argmin(dim=1)
        rest[todo, at.gather(1, best[:, None])[:, 0]] = False
    solo = ~rest
    solo[todo] = True  # more than MAX_SOLO solo outputs: every output
    solo[rest.sum(dim=1) <= 1] = True  # a class of one output: cheaper alone
    return solo


def _class_bound(alpha: Tensor, rows: Tensor, classes: Tensor) -> Tensor:
    """Float class bound max_r sum_g alpha_g max_{x in class} rows_g[x] for each of the
    classes ``classes`` [L, C, x] of each key (``alpha`` [L, r, G], ``rows`` [L, G, x]):
    [L, C]."""
    top = rows[:, None, :, :].masked_fill(~classes[:, :, None, :], -torch.inf).amax(dim=3)
    return (alpha[:, None, :, :] * top[:, :, None, :]).sum(dim=3).amax(dim=2)


def _candidate_keys(proven: Tensor, V: int, n: int) -> Tensor:
    """Every valid homogeneous key the cubic proof left unproven, as (q, m, k, c) rows."""
    q = torch.arange(V)[:, None, None, None]
    m = torch.arange(V)[None, :, None, None]
    k = torch.arange(V)[None, None, :, None]
    c = torch.arange(n)[None, None, None, :]
    valid = (q <= m) & (k < m) & (c >= 1) & ((c <= n - 2) | (q == m))
    return torch.nonzero(valid & ~proven)


def _count_keys(ck, proven, ops) -> tuple[Tensor, Tensor]:
    """Count keys (q, m, c, i), i = 1, 2, ... while proven (at most ``MAX_COUNT``): the proven
    ones, and the counted prefixes i*."""
    V, n = proven.shape[0], proven.shape[3]
    N = keys.key_counts(proven)
    q, m, c = torch.nonzero((N > 0) & (N < torch.arange(V)[None, :, None]), as_tuple=True)
    keep = (q <= m) & (c >= 1) & ((c <= n - 2) | (q == m))
    base = torch.stack([q[keep], m[keep], c[keep]], 1)
    tops = counts.position_tops(ck.EQKP_s, ops)
    # Every i = 1 .. min(c, MAX_COUNT) at once (one pass per max token), then the prefixes.
    depth = min(MAX_COUNT, n - 1) if n >= COUNT_FROM else 0
    reps = base[:, 2].clamp(max=depth)
    rows = base.repeat_interleave(reps, dim=0)
    first = torch.cumsum(reps, 0) - reps
    i = torch.arange(rows.shape[0]) - first.repeat_interleave(reps) + 1
    cand = torch.cat([rows, i[:, None]], 1)
    ok = counts.evaluate(ck, tops, proven, cand, ops)
    istar = counts.prefix(cand, ok, V, n)
    cnt = cand[ok & (cand[:, 3] <= istar[cand[:, 0], cand[:, 1], cand[:, 2]])]
    return cnt, counts.prefix(cnt, torch.ones(cnt.shape[0], dtype=torch.bool), V, n)


def _roots(proven: Tensor, istar: Tensor, V: int, n: int) -> Tensor:
    """Root boxes (q, m, placement bits, U bits) of every key (q, m, c) not fully covered, at
    most ``MAX_ROOTS[n <= SMALL_CTX]``: those with the fewest unrestricted slots first (the
    most likely to be proven), then the largest."""
    s1 = n - 1
    N = keys.key_counts(proven)  # [q, m, c]
    rows, sizes, free = [], [], []
    for c in range(1, n):
        if math.comb(s1, c) > MAX_PLACEMENTS:
            continue
        qs, ms = torch.nonzero(N[:, :, c] < torch.arange(V)[None, :], as_tuple=True)
        keep = (qs <= ms) & ((c <= n - 2) | (qs == ms)) & (istar[qs, ms, c] < c)
        qs, ms = qs[keep], ms[keep]
        for w in sorted(set(istar[qs, ms, c].tolist())):
            if math.comb(s1, c) * math.comb(c, w + 1) > MAX_SHAPES:
                continue
            sel = istar[qs, ms, c] == w
            qq, mm = qs[sel], ms[sel]
            nk = N[qq, mm, c].double()
            shapes = []  # (placement bits, U bits, K slots before max(W), |W|, free slots)
            for nu in itertools.combinations(range(s1), c):
                for W in itertools.combinations(range(c), w + 1):
                    shapes.append(
                        (
                            sum(1 << p for p in nu),
                            sum(1 << nu[j] for j in W),
                            W[-1] + 1 - len(W),
                            len(W),
                            c - 1 - W[-1],
                        )
                    )
            sh = torch.tensor(shapes)  # [S, 5]
            S, Q = sh.shape[0], qq.numel()
            # Sizes N^n_k (m - N)^|W| m^n_free per distinct exponents, then per shape.
            exps, which = torch.unique(sh[:, 2:], dim=0, return_inverse=True)
            u, md = mm.double() - nk, mm.double()
            by_exp = torch.stack([nk**a * u**b * md**f for a, b, f in exps.tolist()])
            use = (nk[None, :] > 0) | (sh[:, 2:3] == 0)  # [S, Q]: K slots need N > 0
            cols = (qq, mm, sh[:, 0:1], sh[:, 1:2])  # (q, m, placement bits, U bits)
            rows.append(torch.stack([t.expand(S, Q) for t in cols], -1)[use])
            sizes.append(by_exp[which][use])
            free.append(sh[:, 4:5].expand(S, Q)[use])
    if not rows:
        return torch.zeros(0, 4, dtype=torch.int64)
    roots, size, fr = torch.cat(rows), torch.cat(sizes), torch.cat(free)
    limit = MAX_ROOTS[n <= SMALL_CTX]
    if roots.shape[0] > limit:
        order = size.argsort(descending=True, stable=True)
        order = order[fr[order].argsort(stable=True)]
        roots = roots[order[:limit]]
    return roots


@dataclass(frozen=True)
class _Stack:
    """The box tables of a batch of keys (q, m), one column per (key, live output), as the
    checker builds them (``boxes.tables``: the same values and radii), with the key tokens
    padded to d_vocab (H -inf, b 0) and a last column (H -inf, D 0, Fq -inf) that stands for
    "no column"."""

    t: boxes.Tables
    below_H: Tensor  # [columns + 1]: max_{k < m} H (-inf when m = 0)
    below_b: Tensor  # [pairs]: min_{k < m} b_k (+inf when m = 0)


def _stack_tables(
    ck: keys.CubicKeys, pairs: Tensor, own_E: Tensor, live: Tensor, ops: Ops
) -> _Stack:
    """Box tables of the keys ``pairs`` (q, m) at each key's live outputs (claim (c) of
    ``boxes``: the search only ever evaluates those), with the key tokens padded to d_vocab
    (gathering whole rows over k is what the search does most; box masks hold tokens <= m).
    Records each key's numbers of live outputs (by the key bounds (c) and (e), by the exact key
    bound at those, by claim (c) alone) and the size of its set Hi (claim (e)), as the checker
    will find them, in ``live``. The keys of the max tokens ``own_E`` take their own E."""
    circ = ck.circ
    V, n = circ.EVOU.shape[0], circ.PVOU.shape[0]
    P, s1 = pairs.shape[0], n - 1
    qs, ms = pairs[:, 0], pairs[:, 1]
    own = torch.isin(ms, own_E)
    t = boxes.tables(qs, ms, own, *boxes.table_inputs(ck), ops)
    exact = boxes.exact_key_live(t, ops)
    n_exact = torch.zeros(P, dtype=torch.int64).index_add_(0, t.pair, exact.to(torch.int64))
    live[qs, ms] = torch.stack([t.n_live, n_exact, t.n_screen, t.n_high], dim=1)
    R, K = t.H.shape
    H = torch.full((R + 1, V), -torch.inf, dtype=torch.float64)
    H[:R, :K] = t.H.mid
    D = torch.cat([t.D.mid, torch.zeros(1, s1, dtype=torch.float64)])
    Fq = torch.cat([t.Fq.mid, torch.full((1,), -torch.inf, dtype=torch.float64)])
    b = torch.zeros(P, V, dtype=torch.float64)
    b[:, :K] = t.b.mid
    below = torch.arange(V)[None, :] < ms[:, None]  # [pairs, V]: k < m
    below_H = H[:R].masked_fill(~below[t.pair], -torch.inf).amax(dim=1)
    padded = boxes.Tables(
        qs=t.qs,
        ms=t.ms,
        n_live=t.n_live,
        start=t.start,
        col=torch.where(t.col >= 0, t.col, R),
        pair=t.pair,
        x=t.x,
        H=Approx(H, t.H.rad, t.H.mag),
        D=Approx(D, t.D.rad, t.D.mag),
        Fq=Approx(Fq, t.Fq.rad, t.Fq.mag),
        a=t.a,
        b=Approx(b, t.b.rad, t.b.mag),
    )
    return _Stack(
        t=padded,
        below_H=torch.cat([below_H, torch.full((1,), -torch.inf, dtype=torch.float64)]),
        below_b=b.masked_fill(~below, torch.inf).amin(dim=1),
    )


@dataclass
class _Block:
    """Nodes start .. start + len - 1, created together (the roots, or one step's children)."""

    start: int
    q: Tensor
    m: Tensor
    root: Tensor
    row: Tensor
    masks: Tensor
    sizes: Tensor  # [nodes, slots] = masks.sum(dim=2), kept split by split
    claim: Tensor
    witness: Tensor
    live: Tensor  # [nodes, V] outputs not yet bounded below 0 at an ancestor (search only)


def _branch_and_bound(ck: keys.CubicKeys, proven: Tensor, istar: Tensor, roots: Tensor) -> _Tree:
    """Refine every root until each leaf is proven, refuted or a single input (or the node
    limit is reached). Nodes are stored in blocks (each step only touches the newest one)."""
    V, n = proven.shape[0], proven.shape[3]
    R = roots.shape[0]
    root_sets = tree.root_masks(roots, proven, istar)
    root_block = _Block(
        start=0,
        q=roots[:, 0].clone(),
        m=roots[:, 1].clone(),
        root=torch.arange(R),
        row=torch.full((R,), -1, dtype=torch.int64),
        masks=root_sets,
        sizes=root_sets.sum(dim=2),
        claim=torch.zeros(R, dtype=torch.int8),
        witness=torch.zeros(R, dtype=torch.int64),
        live=torch.arange(V)[None, :] != roots[:, 1:2],
    )
    blocks = [root_block]
    splits: list[tuple[Tensor, Tensor, Tensor]] = []  # (parent ids, slots, masks)
    ops = Ops()
    # The keys (q, m) of the roots, in (q, m) order. The order decides which keys share a batch
    # of tables, and so, once MAX_NODES binds (d_vocab 128, Max-of-10), which keys get refined.
    codes, inverse = torch.unique(roots[:, 0] * V + roots[:, 1], return_inverse=True)
    pairs = torch.stack([codes // V, codes % V], 1)
    live = torch.full((V, V, 4), -1, dtype=torch.int64)
    own_E = boxes.own_E_tokens(pairs[:, 1], n, V)  # the cheaper E for all the roots' keys
    step = max(1, TABLE_ELEMENTS // (V * V))
    total = R
    for p0 in range(0, pairs.shape[0], step):
        st = _stack_tables(ck, pairs[p0 : p0 + step], own_E, live, ops)
        in_batch = (inverse >= p0) & (inverse < p0 + step)
        root_block.row = torch.where(in_batch, inverse - p0, -1)
        block, local = root_block, torch.nonzero(in_batch, as_tuple=True)[0]
        _prune_outputs(root_block, local, st, ops)
        for _ in range(MAX_DEPTH):
            if local.numel() == 0 or total > MAX_NODES[n <= SMALL_CTX]:
                break
            child = _step(block, local, st, total, splits, ops)
            if child is None:
                break
            blocks.append(child)
            total += child.q.numel()
            block, local = child, torch.arange(child.q.numel())
    return _flatten(blocks, splits, V, live, own_E)


def _prune_outputs(blk: _Block, local: Tensor, st: _Stack, ops: Ops) -> None:
    """Outputs certainly below 0 on a whole root box, from a coarse bound: every non-max slot
    set lies in [0, m), so its bound U (claim (d) of ``boxes``) is at most the one over all of
    [0, m) (a larger max of H, a smaller min of b; float operations are monotone, D >= 0);
    max slots are {m}. Same radius and sums as ``_bounds``, so what is dead here is dead in
    every sub-box (there and in the checker). Evaluated per column of the box's key; outputs
    without a column are not live for the key (claim (c) of ``boxes``)."""
    if local.numel() == 0:
        return
    t = st.t
    rows, m, masks = blk.row[local], blk.m[local], blk.masks[local]
    b = local.numel()
    is_max = masks[torch.arange(b), :, m]  # [b, slots] (a max slot is {m})
    n_live = t.n_live[rows]
    W = max(int(n_live.max()), 1)
    none = t.Fq.shape[0] - 1
    pad = torch.arange(W)[None, :] >= n_live[:, None]  # [b, W]
    cols = torch.where(pad, none, t.start[rows][:, None] + torch.arange(W))
    at_m = t.H.mid[cols, m[:, None]][:, :, None]  # [b, W, 1]
    h = torch.where(is_max[:, None, :], at_m, st.below_H[cols][:, :, None])  # [b, W, slots]
    bb = torch.where(is_max, t.b.mid[rows, m][:, None], st.below_b[rows][:, None])  # [b, slots]
    U = boxes.slot_bounds(
        Approx(t.a.mid[rows][:, None, :], t.a.rad, t.a.mag),
        Approx(h, t.H.rad, t.H.mag),
        Approx(bb[:, None, :], t.b.rad, t.b.mag),
        Approx(t.D.mid[cols], t.D.rad, t.D.mag),
        ops,
    )
    ub = ops.add(t.Fq[cols], ops.sum(U, dim=2))
    c = t.col[rows]  # [b, x]
    real = c < none
    j = (c - t.start[rows][:, None]).clamp(min=0, max=W - 1)
    blk.live[local] &= real & ~ops.proven_negative(ub).gather(1, j)


def _flatten(blocks: list[_Block], splits: list, V: int, live: Tensor, own_E: Tensor) -> _Tree:
    def cat(name: str) -> Tensor:
        return torch.cat([getattr(b, name) for b in blocks])

    parent = [torch.cat([s[0] for s in splits])] if splits else []
    slot = [torch.cat([s[1] for s in splits])] if splits else []
    smask = [torch.cat([s[2] for s in splits])] if splits else []
    return _Tree(
        q=cat("q"),
        m=cat("m"),
        masks=cat("masks"),
        sizes=cat("sizes"),
        root=cat("root"),
        row=cat("row"),
        claim=cat("claim"),
        witness=cat("witness"),
        parent=parent,
        slot=slot,
        split_mask=smask,
        live=live,
        own_E=own_E,
    )


def _bounds(
    t: boxes.Tables, masks: Tensor, rows: Tensor, cols: Tensor, ops: Ops
) -> tuple[Approx, Approx]:
    """The upper and lower box sums at the table columns ``cols`` [B, A] of the boxes' keys
    ``rows``, with the checker's values and radii (``boxes.set_slot_bounds``, then the
    checker's sums), to be decided as the checker does (``Ops.proven_negative``,
    ``Ops.proven_positive``).

    Outputs whose bound was already below 0 at an ancestor stay below 0 (over subsets the max
    of H is smaller and the min of b larger, float operations are monotone, D >= 0, the
    radius is the same), so the search only evaluates the ``live`` ones: the decisions equal
    the checker's over all outputs."""
    U, L = boxes.set_slot_bounds(t, rows, cols, masks, ops, lower=True)  # [B, A, slots]
    fq = t.Fq[cols]
    return ops.add(fq, ops.sum(U, dim=2)), ops.add(fq, ops.sum(L, dim=2))


def _step(
    blk: _Block,
    local: Tensor,
    st: _Stack,
    total: int,
    splits: list,
    ops: Ops,
) -> _Block | None:
    """Evaluate the non-empty boxes ``local`` of ``blk``; claim the decided ones, split the
    others into a new block of children (ids from ``total``), or return None."""
    V, s1 = st.t.H.shape[1], st.t.D.shape[1]
    local = local[(blk.sizes[local] > 0).all(dim=1)]
    # A chunk gathers [boxes, slots, live outputs (padded to the chunk's most), k]. Most boxes
    # have one or two live outputs and a few have dozens, so the boxes go in order of their
    # live count, a chunk's counts are within a factor of two (little padding), and each
    # chunk is sized by its own largest.
    n_live = blk.live[local].sum(dim=1).clamp(min=1)
    order = n_live.argsort(stable=True)
    local, n_live = local[order], n_live[order].tolist()
    to_split, worst, lives = [], [], []
    b0 = 0
    while b0 < local.numel():
        end = bisect.bisect_right(n_live, 2 * n_live[b0], lo=b0)
        end = min(end, b0 + max(1, boxes.CHUNK_ELEMENTS // (s1 * V * n_live[end - 1])))
        nodes = local[b0:end]
        b0 = end
        masks, size, live = blk.masks[nodes], blk.sizes[nodes], blk.live[nodes]
        A = max(int(live.sum(dim=1).max()), 1)
        xs = live.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :A]
        valid = live.gather(1, xs)  # [b, A]
        cols = st.t.col[blk.row[nodes][:, None], xs]  # live outputs have a column
        upper, lower = _bounds(st.t, masks, blk.row[nodes], cols, ops)
        ub = upper.mid.masked_fill(~valid, -torch.inf)
        lb = lower.mid.masked_fill(~valid, -torch.inf)
        proven = ub.amax(dim=1) < -upper.rad  # ``Ops.proven_negative`` of the max
        best_lb, wit = lb.max(dim=1)
        refuted = (best_lb > lower.rad) & ~proven  # ``Ops.proven_positive``
        single = (size == 1).all(dim=1)
        blk.claim[nodes[proven]] = plan.PROVE
        blk.claim[nodes[refuted]] = plan.REFUTE
        blk.witness[nodes[refuted]] = xs.gather(1, wit[:, None])[refuted, 0]
        und = ~proven & ~refuted
        blk.claim[nodes[und & single]] = plan.EXACT
        split = und & ~single
        to_split.append(nodes[split])
        worst.append(cols.gather(1, ub.argmax(dim=1, keepdim=True))[split, 0])
        still = torch.zeros_like(live).scatter_(1, xs, valid & (ub >= -upper.rad))
        lives.append(still[split])
    nodes = torch.cat(to_split)
    if nodes.numel() == 0:
        return None
    return _split(blk, st, nodes, torch.cat(worst), torch.cat(lives), total, splits)


def _split(
    blk: _Block,
    st: _Stack,
    nodes: Tensor,
    cols: Tensor,
    live: Tensor,
    total: int,
    splits: list,
) -> _Block:
    """Split each node along the slot where the worst output's terms (column ``cols``) spread
    most: the tokens whose term is low enough for that output's bound to become negative go to
    the first child (or the lower half by rank when that is all or nothing)."""
    B = nodes.numel()
    ar = torch.arange(B)
    masks, sizes = blk.masks[nodes], blk.sizes[nodes]  # [B, slots, V], [B, slots]
    t, rows = st.t, blk.row[nodes]
    # Each token's term F = a_p H - b_k D (claim (d) of ``boxes``, exact for one token).
    a, D = t.a.mid[rows][:, :, None], t.D.mid[cols][:, :, None]  # [B, slots, 1]
    vals = a * t.H.mid[cols][:, None, :] - t.b.mid[rows][:, None, :] * D  # [B, slots, V]
    off = ~masks
    hi = vals.masked_fill_(off, -torch.inf).amax(dim=2)
    lo = vals.masked_fill_(off, torch.inf).amin(dim=2)  # only the sets' entries are read below
    spread = torch.where(sizes > 1, hi - lo, -1.0)
    p = spread.argmax(dim=1)
    v, mk = vals[ar, p], masks[ar, p]  # [B, k]
    theta = hi[ar, p] - (hi.sum(dim=1) + t.Fq.mid[cols])  # the bound at x, without slot p
    low = mk & (v < theta[:, None])
    size, nlow = sizes[ar, p], low.sum(dim=1)
    bad = (nlow == 0) | (nlow == size)
    if bool(bad.any()):
        vb = torch.where(mk[bad], v[bad], torch.inf)
        order = vb.argsort(dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(vb.shape[1]).expand_as(order).contiguous())
        low[bad] = mk[bad] & (rank < ((size[bad] + 1) // 2)[:, None])
        nlow = low.sum(dim=1)
    lm, rm = masks.clone(), masks.clone()
    lm[ar, p] = mk & low
    rm[ar, p] = mk & ~low
    ls, rs = sizes.clone(), sizes.clone()
    ls[ar, p] = nlow
    rs[ar, p] = size - nlow
    splits.append((blk.start + nodes, p, low))

    def twice(t: Tensor) -> Tensor:
        return t[nodes].repeat_interleave(2)

    return _Block(
        start=total,
        q=twice(blk.q),
        m=twice(blk.m),
        root=twice(blk.root),
        row=twice(blk.row),
        masks=torch.stack([lm, rm], 1).reshape(2 * B, *masks.shape[1:]),
        sizes=torch.stack([ls, rs], 1).reshape(2 * B, sizes.shape[1]),
        claim=torch.zeros(2 * B, dtype=torch.int8),
        witness=torch.zeros(2 * B, dtype=torch.int64),
        live=live.repeat_interleave(2, dim=0),
    )
