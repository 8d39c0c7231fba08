"""Strategy "cubic": the paper's cubic proof (reference-algorithms §7), rounding-sound.

Complexity: O(d_vocab^3 n_ctx) for this implementation in the worst case (the paper's is
O(d_vocab^3 n_ctx^2)); O(d_vocab^2 log d_vocab) plus O(d_vocab) per triple the screen leaves.

Notation: V = d_vocab, n = n_ctx, s = sqrt(d_head) (exact real), path matrices EQKE, EQKP, EVOU,
PVOU, EUPU of ``core/circuits.py``. An input t has query q = t[n-1] and max m; its "non-max
tokens" are the non-query positions p < n-1 with t_p < m, and c is their number (the query is
never counted in c; this is the paper's cubic convention).

Claim: ``correct_count`` = sum over keys of the keys' covered inputs, where
  * key (q, m), c = 0, q <= m: the single input (m, ..., m, q), covered iff proven0[q, m];
  * key (q, m, c), c >= 1 (c <= n-2 if q < m): the C(n-1, c) N^c inputs with query q, max m and
    c non-max tokens all in K = {k < m : proven[q, m, k, c]}, N = |K|;
and every covered input is classified correctly by the exact real-number forward pass
(logit(m) > logit(x) for all x != m).
Assumes: zero biases (the Weights class stores none); the float64 arithmetic model of
``core/rigorous.py``.
Proof:
  (1) Path decomposition (exact): score(p) = EQKE[q, t_p] + EQKP[q, p], a = softmax(score / s),
      logit(x) = EUPU[q, x] + sum_p a_p (EVOU[t_p, x] + PVOU[p, x]).
  (2) Pessimal ablation per slot. As sum_p a_p = 1, for x != m
          logit(x) - logit(m) = sum_p a_p D_p(x),
      D_p(x) = EUPU[q,x] - EUPU[q,m] + EVOU[t_p,x] - EVOU[t_p,m] + PVOU[p,x] - PVOU[p,m].
      With PVnq[m, x] = max_{p < n-1} (PVOU[p, x] - PVOU[p, m]) (pessimal non-query position),
      D_p(x) <= H_p(x) := Dmax[q,m,x] for a non-query slot holding m, Dk[q,m,t_p,x] for a
      non-query slot holding t_p < m, and D_p(x) = Dz[q,m,x] for the query slot (its position
      n-1 is fixed); definitions in ``pessimize``. H depends on the slot only through its token
      and whether it is the query.
  (3) Sign, per output x. With w_p = exp(score(p) / s) > 0, logit(x) < logit(m) once
      F_x(t) := sum_p w_p H_p(x) < 0.
  (4) Mixtures (convexity), per x. Fix the positions of the max tokens (the "placement") and the
      query. A non-max slot p contributes exp(EQKP[q,p]/s) g_x(t_p) with
      g_x(k) = exp(EQKE[q,k]/s) Dk[q,m,k,x], so F_x is non-decreasing in every g_x(t_p). Let
      k*_x maximise g_x over the non-max tokens present: replacing each of them by k*_x (same
      placement, same query slot) gives the homogeneous input of key (q, m, k*_x, c) and
      F_x(t) <= F_x(homogeneous). So t is correct if, for every k present and every x != m,
      F_x < 0 on every homogeneous input of key (q, m, k, c): hence all k present in K suffices
      once (5) shows proven[q, m, k, c] implies exactly that.
  (5) Placements (two extremes), per class of x. For the homogeneous key (q, m, k, c) and a
      placement pi (the n-1-c non-query positions holding m), with
      S(pi) = sum_{p in pi} exp(EQKP[q,p]/s) and T = sum_{p < n-1} exp(EQKP[q,p]/s):
          F_x(pi) = e^{EQKE[q,m]/s} Dmax S + e^{EQKE[q,k]/s} Dk (T - S) + w_query Dz,
      affine in S, so F_x(pi) < 0 for all pi once it holds at the minimal and maximal S, i.e.
      (sorting the non-query positional scores) with the max tokens on the n-1-c lowest (r = 0)
      or highest (r = 1) positional scores. At each extreme F_x / sum_p w_p =
      sum_g alpha_g H_g(x), where alpha is the softmax over the slot groups (max / non-max /
      query) of their log-weights (EQKE[q,m]/s + log S, EQKE[q,k]/s + log(T - S),
      (EQKE[q,q] + EQKP[q,n-1])/s) (summing a softmax within a group is the softmax of the
      groups' log-sum-exps). Split the outputs x != m into the classes {k} and
      {x not in {m, k}}; within a class replace each group's H_g(x) by its max over the class
      (for the non-max group of the second class, by max EUPU-part + max EVOU/PVnq-part). Then
      F_x < 0 for every x and pi once each class bound B = sum_g alpha_g max_x H_g is < 0 at
      both extremes; proven[q, m, k, c] iff so. For c = n-1 (q = m) there is no max slot
      outside the query and no placement freedom: groups (non-max, query).
      Tests in four tiers decide this. A screen per pair (q, m) (``screen``) proves all keys
      with k below a threshold at once from O(V^2) separable bounds and running maxima over
      k (about 95% of the triples of a trained Max-of-4 model). For the other triples
      (``cases``) a one-shot test bounds every placement and both classes at once (each
      group's log-weight at the end of its range that is worst for the sign of its
      class-maximal value), first over every c, then per c for the triples that fail; only
      keys still unproven go to the per-placement test. The screen's and the one-shot bounds
      are never below the per-placement one, so the verdicts are the per-placement test's;
      all tests take signs of sum_g e^{L_g} H_g after dividing by a positive e^{max L}, not
      the normalised softmax. The d_vocab^3 maxima of class 1 are computed only for the
      (q, m) and (m, k) pairs of the triples the screen leaves, those of the (q, m) pairs
      by a threshold search on the sorted rows of EUPU and own (``core.maxplus``: the same
      floats as the full rows, from the 4 or 8 largest entries of each row for 99% of them).
  (6) c = 0: the key is one input. A one-shot test as in (5) (two groups: the n-1 slots
      holding m, and the query; the screen's bounds U_max, U_z) proves most; the others are
      evaluated exactly with (1) (no ablation; the n-1 slots holding m share one positional
      mixture per query), proven0[q, m] iff max_{x != m} logit(x) - logit(m) < 0.
  (7) Counting: the keys partition all V^n inputs (sum_c C(n-1,c) m^c = (m+1)^{n-1} for q = m,
      minus m^{n-1} for q < m; summed over q <= m and m this is V^n). Counts are exact Python
      ints. Every comparison in (5)-(6) is ``Ops.proven_negative`` of a value computed with
      counted rounding-sound ``Ops``, so "proven" implies the exact real inequality.        QED
Differences from the paper's code (§7), each keeping soundness: (2) the direct path EUPU is
shared among the slots (sum_p a_p = 1) and pessimised jointly with each slot's own OV term, the
query slot uses its true position, the other slots the worst non-query position (the paper:
max_x EUPU + sum_p a_p max_x (EVOU + max over all positions of PVOU)); (5) the output logit x = k
is bounded separately from the others (the copy of k is the dominant wrong logit; the paper
takes one max over all x per slot), and the group log-sum-exps give O(1) work per
(q, m, k, c, r) instead of an n-slot softmax, one test covers both placements and classes
for most keys, and one test per pair covers most of its keys; (6) the c = 0 inputs are decided
exactly (by the one-shot test where it suffices); only valid keys are computed; every decision
carries a rigorous rounding margin. On the paper's
Max-of-4 seeds 50 and 104 the normalised bound rises from 0.946 / 0.960 (the paper's rule) to
0.983 / 0.990.
Cost: ``cubic_flops(V, n, d, dh, tiers)`` with the work each test leaves to the next
(``details``: screen tests, leftover triples and their distinct pairs, one-shot and c = 0
leftovers; asserted equal to the ledger in tests/test_cubic.py), and ``cubic_int_ops``.
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.core import circuits as circuits_mod
from compact_proofs.core.rigorous import Approx, Ops, U
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.cubic import cases, count, pessimize, screen
from compact_proofs.proofs.protocol import Certificate, Strategy, Verdict
from compact_proofs.weights import Weights

# Largest number of float64 elements in one working tensor (32 MB); bounds peak memory.
CHUNK_ELEMENTS = 1 << 22
# Keep the dense per-key status (for ``expand``) only for enumerable models.
EXPAND_LIMIT = 1 << 26


def search(weights: Weights) -> Certificate:
    """The cubic proof needs no search: the certificate is empty."""
    return {}


@dataclass(frozen=True)
class Stage:
    """What every key's decision shares, kept for callers that refine the cubic proof."""

    circ: circuits_mod.Circuits
    EQKE_s: Approx  # [d_vocab_q, d_vocab_k] = EQKE / sqrt(d_head)
    EQKP_s: Approx  # [d_vocab_q, n_ctx]
    z: Approx  # [d_vocab_q] query slot score
    groups: Approx | None  # [d_vocab_q, n_ctx - 2, placement, 2] log-weights (max, non-max)
    lse_all: Approx  # [d_vocab_q] log-sum-exp of all non-query positional scores
    proven0: Bool[Tensor, "d_vocab_q d_vocab_max"]
    # max_{x != m} logit(x) - logit(m) of the c = 0 input (m, ..., m, q) where step (6) evaluated
    # it exactly (``cases.single_inputs``), NaN elsewhere
    margin0: Approx  # [d_vocab_q, d_vocab_max]
    tiers: cases.Tiers  # what each cheaper test left to the next (the FLOPs depend on it)
    slots: pessimize.SlotTables  # step (2)'s per-slot tables
    row_tops: pessimize.RowTops  # ... their row maxima
    leftover: pessimize.LeftoverTables | None  # ... and those of the leftover triples
    thresholds: Tensor  # [d_vocab_q, d_vocab_max] the screen's threshold j per pair (q <= m)
    routes: Tensor  # [R, 5] (q, m, k, c, route): the cheapest route of the keys the test over
    # every c did not prove (``cases.ROUTE_*``), and of the keys c = n-1 nothing proves


def decide_keys(
    weights: Weights,
    ops: Ops,
    on_chunk: Callable[[cases.Chunk], None],
    thresholds: Tensor | None = None,
    routes: Tensor | None = None,
) -> Stage:
    """Steps (1)-(6): decide every key, handing each chunk of homogeneous keys to ``on_chunk``;
    the screen tests only the ``thresholds[q, m]`` if given (``screen.thresholds``), and the
    keys listed in ``routes`` [R, 5] (q, m, k, c, route) take those routes
    (``cases.homogeneous_chunk``; a triple whose keys all have ``ROUTE_SKIP`` is not
    evaluated at all). Both are hints: any valid ones are sound.
    Cost: ``cubic_flops(..., tiers)`` minus the integer tally of step (7)."""
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    # math.sqrt is correctly rounded: s = sqrt(d_head)(1 + e), |e| <= u, so the exact scale is
    # s (1 + e') with |e'| <= u / (1 - u) <= 2u.
    s = math.sqrt(cfg.d_head)
    circ = circuits_mod.circuits(weights, ops)  # (1)
    eqke = ops.divide_by_real(circ.EQKE, s, 2 * U, label="cubic:attn")
    eqkp = ops.divide_by_real(circ.EQKP, s, 2 * U, label="cubic:attn")
    st = pessimize.slot_tables(circ.EUPU, circ.EVOU, circ.PVOU, ops)  # (2)
    rows = pessimize.row_tops(st, ops)
    z = pessimize.query_scores(eqke, eqkp, ops)  # (5) [q]
    groups = pessimize.placement_log_weights(eqkp, ops)  # (5) [q, n_c, 2, 2] or None
    every_c = pessimize.every_c_ranges(groups, ops)  # (5) [q, lo/hi, group] or None
    lse_all = ops.logsumexp(eqkp[:, : n - 1], dim=1, label="cubic:attn")  # (5), (6)
    q0, m0 = _pairs(V)
    pb = screen.pair_bounds(st, rows, eqke, q0, m0, ops)  # (5) the screen
    sc = screen.thresholds(pb, eqke, z, every_c, lse_all, ops, thresholds)
    pair_chunk = max(1, CHUNK_ELEMENTS // (V * max(n - 2, 1)))
    for p0 in range(0, q0.numel(), pair_chunk):
        on_chunk(_screened_chunk(*screen.screened_triples(pb, sc.j, p0, p0 + pair_chunk), n))
    q, m, k = screen.leftover_triples(pb, sc.j)  # (5) per triple
    if n == 2:  # only q = m has keys (c = 1)
        q, m, k = (t[q == m] for t in (q, m, k))
    lt = None
    if V >= 3:
        lt = pessimize.leftover_tables(st, q, m, k, ops, chunk=max(1, CHUNK_ELEMENTS // V))
    shallow, deep, full = (0, 0, 0) if lt is None else lt.tries
    tiers = cases.Tiers(
        mid_tests=sc.mid_tests,
        last_tests=sc.last_tests,
        left_triples=q.numel(),
        left_diag=int((q == m).sum()),
        left_pairs=0 if lt is None else lt.top.shape[0],
        left_mk=0 if lt is None else lt.ev_nk.shape[0],
        left_second=0 if lt is None else int(lt.has_second.sum()),
        sorted_rows=0 if lt is None else lt.sorted_rows,
        maxima_shallow=shallow,
        maxima_deep=deep,
        maxima_full=full,
    )
    given = None if routes is None else _route_table(routes, q, m, k, V, n)  # [T, n-1]
    tested = torch.arange(q.numel())
    if given is not None:  # a triple is evaluated if one of its keys is tested
        skip = given == cases.ROUTE_SKIP
        skip[:, n - 2] |= q != m  # (no key c = n-1 unless q = m)
        tested = torch.nonzero(~skip.all(dim=1), as_tuple=True)[0]
    found = []
    max_triples = max(1, CHUNK_ELEMENTS // (12 * max(n - 2, 1)))
    for t0 in range(0, tested.numel(), max_triples):
        sel = tested[t0 : t0 + max_triples]
        vals = pessimize.triple_values(st, rows, lt, sel, q[sel], m[sel], k[sel], ops)  # (2)
        chunk = cases.homogeneous_chunk(
            q[sel],
            m[sel],
            k[sel],
            vals,
            eqke,
            z,
            groups,
            every_c,
            lse_all,
            ops,
            None if given is None else given[sel],
        )
        tiers += chunk.tiers
        on_chunk(chunk)
        found.append(_route_list(chunk, n))
    ok = cases.single_one_shot(q0, m0, pb.u_max, pb.u_z, eqke, lse_all, z, ops)  # (6)
    left = ~ok
    ok[left], margin = cases.single_inputs(  # (6) exactly
        q0[left],
        m0[left],
        eqke,
        eqkp,
        lse_all,
        z,
        circ.EVOU,
        circ.PVOU,
        circ.EUPU,
        ops,
        pair_chunk=max(1, CHUNK_ELEMENTS // V),
    )
    proven0 = torch.zeros(V, V, dtype=torch.bool)
    proven0[q0, m0] = ok
    margin0 = torch.full((V, V), torch.nan, dtype=torch.float64)
    margin0[q0[left], m0[left]] = margin.mid
    return Stage(
        circ=circ,
        EQKE_s=eqke,
        EQKP_s=eqkp,
        z=z,
        groups=groups,
        lse_all=lse_all,
        proven0=proven0,
        margin0=Approx(margin0, margin.rad, margin.mag),
        tiers=tiers + cases.Tiers(exact_c0=int(left.sum())),
        slots=st,
        row_tops=rows,
        leftover=lt,
        thresholds=torch.zeros(V, V, dtype=torch.int64).index_put_((q0, m0), sc.j),
        routes=torch.cat(found) if found else torch.zeros(0, 5, dtype=torch.int64),
    )


def compact_routes(routes: Tensor, V: int, n: int) -> Tensor:
    """``routes`` (the keys of ``Stage.routes``) for a certificate, shorter: a triple with keys
    c <= n-2 that no test proves gets one row (q, m, k, 0, ``ROUTE_SKIP``) for them, and rows
    only for its keys with a test; ``_route_table`` reads back the same routes."""
    rq, rm, rk, rc, rr = routes.unbind(1)
    lower_skip = (rc <= n - 2) & (rr == cases.ROUTE_SKIP)
    triples = torch.unique(((rq * V + rm) * V + rk)[lower_skip])
    default = torch.stack(
        [
            triples // (V * V),
            (triples // V) % V,
            triples % V,
            torch.zeros_like(triples),
            torch.full_like(triples, cases.ROUTE_SKIP),
        ],
        dim=1,
    )
    return torch.cat([default, routes[~lower_skip]])


def _route_list(chunk: cases.Chunk, n: int) -> Tensor:
    """The keys (q, m, k, c, route) of ``chunk``'s triples that the test over every c did not
    prove (each with its cheapest route), and the keys c = n-1 no test proves."""
    r = chunk.routes.to(torch.int64)  # [T, n-1], columns c = 1 .. n-1
    listed = (r[:, : n - 2] != 0).any(dim=1)[:, None] & (torch.arange(n - 1) < n - 2)
    listed = listed | (r == cases.ROUTE_SKIP)
    t, c = torch.nonzero(listed, as_tuple=True)
    return torch.stack([chunk.q[t], chunk.m[t], chunk.k[t], c + 1, r[t, c]], dim=1)


def _route_table(routes: Tensor, q: Tensor, m: Tensor, k: Tensor, V: int, n: int) -> Tensor:
    """Per leftover triple (q, m, k), the route of each key c = 1 .. n-1 in the list ``routes``
    (q, m, k, c, route) (0: not listed); a row with c = 0 gives its triple's keys c <= n-2 that
    have no row of their own that route. Raises ``ProofPreconditionError`` on an entry that is
    not a valid key (or triple, c = 0) with a route, or on a key listed twice."""
    if routes.ndim != 2 or routes.shape[1] != 5:
        raise ProofPreconditionError("routes must be rows (q, m, k, c, route)")
    rq, rm, rk, rc, rr = routes.unbind(1)
    ok = (rq >= 0) & (rq <= rm) & (rm < V) & (rk >= 0) & (rk < rm) & (rc >= 0) & (rc <= n - 1)
    ok &= ((rc <= n - 2) | (rq == rm)) & (rr >= cases.ROUTE_ONE_SHOT) & (rr <= cases.ROUTE_SKIP)
    if not bool(ok.all()):
        raise ProofPreconditionError("a route is not a valid key (q, m, k, c) with a route 1 - 3")
    code = ((rq * V + rm) * V + rk) * n + rc
    order = code.argsort()
    code = code[order]
    if bool((code[1:] == code[:-1]).any()):
        raise ProofPreconditionError("a key has two routes")
    table = torch.zeros(q.numel(), n, dtype=torch.int8)  # column c: key c; column 0: default
    for c in range(n):
        want = ((q * V + m) * V + k) * n + c
        at = torch.searchsorted(code, want).clamp(max=max(code.numel() - 1, 0))
        hit = (code[at] == want) if code.numel() else torch.zeros_like(want, dtype=torch.bool)
        table[hit, c] = rr[order][at[hit]].to(torch.int8)
    lower = table[:, 1 : n - 1]
    lower.copy_(torch.where(lower == 0, table[:, :1], lower))  # the default, where no row
    return table[:, 1:]


def _pairs(V: int) -> tuple[Tensor, Tensor]:
    """All (q, m) with q <= m."""
    q, m = torch.nonzero(torch.arange(V)[:, None] <= torch.arange(V)[None, :], as_tuple=True)
    return q, m


def _screened_chunk(q: Tensor, m: Tensor, k: Tensor, n: int) -> cases.Chunk:
    """The keys the screen proved: every c of each triple (c = n-1 on the diagonal)."""
    diag = torch.nonzero(q == m, as_tuple=True)[0]
    return cases.Chunk(
        q=q,
        m=m,
        k=k,
        proven=torch.ones(q.numel(), max(n - 2, 0), dtype=torch.bool),
        last_idx=diag,
        proven_last=torch.ones(diag.numel(), dtype=torch.bool),
        tiers=cases.Tiers(),
    )


def check(weights: Weights, certificate: Certificate, ops: Ops) -> Verdict:
    """Trusted checker (see the module docstring for Claim / Proof / Cost)."""
    if certificate:
        raise ProofPreconditionError("the cubic proof takes an empty certificate")
    V, n = weights.config.d_vocab, weights.config.n_ctx
    keys = count.KeyCounts(V, n)
    covered = count.Covered(V, n) if V**n <= EXPAND_LIMIT else None

    def on_chunk(chunk: cases.Chunk) -> None:
        keys.add(chunk)
        if covered is not None:
            covered.add(chunk)

    stage = decide_keys(weights, ops, on_chunk)
    correct = keys.total(stage.proven0)  # (7)
    count.tally_int_ops(ops.ledger, V, n)

    def expand() -> torch.Tensor:
        if covered is None:
            raise ProofPreconditionError(
                f"d_vocab**n_ctx = {V**n} inputs is too many to expand (limit {EXPAND_LIMIT})"
            )
        return covered.mask(stage.proven0)

    details = {
        "proven_c0": int(stage.proven0.sum()),
        "proven_keys": int((keys.N > 0).sum()),
        "proven_homogeneous": int(keys.N.sum()),
        **dataclasses.asdict(stage.tiers),
    }
    return Verdict(correct_count=correct, details=details, expand=expand)


def cubic_flops(V: int, n: int, d: int, dh: int, tiers: cases.Tiers) -> int:
    """Closed form of the checker's ledger total (independent of chunking) when the cheaper
    tests leave ``tiers`` to the next ones (``details``)."""
    pairs = V * (V + 1) // 2
    return (
        circuits_mod.circuits_flops(V, n, d, dh)
        + V * V
        + V * n  # divide EQKE, EQKP by s
        + pessimize.pessimize_flops(V, n)
        + 4 * V * (n - 1)  # log-sum-exp over all non-query slots
        + screen.screen_flops(V, n, pairs, tiers.mid_tests, tiers.last_tests)
        + (
            pessimize.leftover_tables_flops(
                V,
                tiers.sorted_rows,
                [tiers.maxima_shallow, tiers.maxima_deep, tiers.maxima_full],
                tiers.left_mk,
            )
            if V >= 3
            else 0
        )
        + cases.single_inputs_flops(V, n, tiers.exact_c0)
        + cases.homogeneous_flops(V, n, tiers)
    )


def cubic_int_ops(V: int, n: int, tiers: cases.Tiers) -> int:
    """Integer work: the counting tally plus the index comparisons of the maxima read from
    row tops."""
    pairs = V * (V + 1) // 2
    selections = screen.screen_int_ops(V, pairs)
    if V >= 3:
        selections += pessimize.TRIPLE_INT_OPS * tiers.valued
    return count.cubic_int_ops(V, n) + selections


def unexplained_dim(cfg: ModelConfig) -> int:
    """EUPU V^2 + PVOU nV + EQKE V^2 + EQKP nV + EVOU V^2 (reference-algorithms §10.4)."""
    return 3 * cfg.d_vocab**2 + 2 * cfg.n_ctx * cfg.d_vocab


STRATEGY = Strategy(
    name="cubic",
    family="cubic",
    complexity="O(d_vocab^3 n_ctx^2)",
    search=search,
    check=check,
    unexplained_dim=unexplained_dim,
    max_inputs=None,
)
