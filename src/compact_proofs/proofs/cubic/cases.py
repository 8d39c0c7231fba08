"""Cubic proof, steps (5) and (6): decide the keys the screen (``screen``) leaves. See the
package docstring for the proof.

Keys: (q, m) with c = 0 (one input each), and homogeneous keys (q, m, k, c) with k < m and
1 <= c <= n-2 (any q <= m) or c = n-1 (q = m only). Homogeneous keys are processed as flat
lists of triples (q, m, k) in chunks, so only valid triples are computed (and counted) and
memory stays bounded.
"""

from dataclasses import dataclass, fields

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops


@dataclass(frozen=True)
class Tiers:
    """How much work each test left to the next one (the cubic's FLOPs depend on it)."""

    mid_tests: int = 0  # screen tests of keys with c <= n-2 (``screen``)
    last_tests: int = 0  # screen tests of keys with c = n-1
    left_triples: int = 0  # triples the screen left to the per-triple tests
    left_diag: int = 0  # ... of which q = m
    left_pairs: int = 0  # distinct (q, m) among them (``pessimize.leftover_tables``)
    left_mk: int = 0  # distinct (m, k) among them
    left_second: int = 0  # pairs among them whose row maximum is at some leftover k
    sorted_rows: int = 0  # rows of EUPU and own sorted for their maxima (``core.maxplus``)
    maxima_shallow: int = 0  # those maxima tried at the first depth of ``maxplus.DEPTHS``
    maxima_deep: int = 0  # ... at the second
    maxima_full: int = 0  # ... over the full row
    valued: int = 0  # leftover triples with a key tested (their step-(2) values computed)
    all_c_tests: int = 0  # one-shot tests over every c (one per triple, n_ctx >= 4)
    per_c: int = 0  # one-shot tests of one key (triple, c)
    rechecked: int = 0  # per-placement tests of one key (triple, c)
    diag_tests: int = 0  # tests of keys with c = n-1 (q = m)
    exact_c0: int = 0  # c = 0 inputs the one-shot test left to the exact evaluation

    @classmethod
    def from_details(cls, details: dict) -> "Tiers":
        """The counts the cubic checker reports in its verdict's details."""
        return cls(**{f.name: details[f.name] for f in fields(cls)})

    def __add__(self, other: "Tiers") -> "Tiers":
        return Tiers(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


# Routes of a key (q, m, k, c) through the per-triple tests (``homogeneous_chunk``), given by
# a certificate (``adaptive``'s ``cubic_routes``) or found by the cascade: 0 the default cascade
# (or, found: proven by the test over every c), then only the one-shot test of the key, only
# its per-placement test, or no test (the key stays unproven).
ROUTE_ONE_SHOT, ROUTE_PLACEMENT, ROUTE_SKIP = 1, 2, 3


@dataclass(frozen=True)
class Chunk:
    """Proof status of the homogeneous keys of one chunk of triples.

    ``proven[t, c-1]`` for c = 1 .. n-2 (all triples), ``proven_last[i]`` for c = n-1 on the
    triples with q = m (``last_idx`` indexes them).
    """

    q: Int[Tensor, " triples"]
    m: Int[Tensor, " triples"]
    k: Int[Tensor, " triples"]
    proven: Bool[Tensor, "triples n_c"]
    last_idx: Int[Tensor, " diag"]
    proven_last: Bool[Tensor, " diag"]
    tiers: Tiers
    # per key (c = 1 .. n-1), the cheapest route that decides it as this run did (``ROUTE_*``;
    # 0: proven by the test over every c, or c = n-1 proven, or no such key); None if not kept
    routes: Int[Tensor, "triples n_c_all"] | None = None


def single_one_shot(
    q: Int[Tensor, " pairs"],
    m: Int[Tensor, " pairs"],
    u_max: Approx,
    u_z: Approx,
    EQKE_s: Approx,
    lse_nq: Approx,
    z: Approx,
    ops: Ops,
) -> Bool[Tensor, " pairs"]:
    """Step (6), a sufficient test for the c = 0 input (m, ..., m, q) of each pair.

    ``u_max`` >= max_{x != m} Dmax[q, m, x] and ``u_z`` >= max_{x != m} Dz[q, m, x] are exact
    float upper bounds (``screen.pair_bounds``).
    Claim: if proven, logit(x) < logit(m) for every x != m.
    Proof: by steps (2)-(3), logit(x) - logit(m) has the sign of sum_p w_p D_p(x); the n-1
    non-query slots hold m, with D_p(x) <= Dmax[q, m, x] <= u_max and weights summing to
    e^{EQKE_s[q, m] + lse_nq[q]}; the query slot has D = Dz[q, m, x] <= u_z and weight e^{z[q]}.
    So the sum is <= e^{L_0} u_max + e^{z} u_z, whose sign is that of the exp-shifted sum.  QED
    Cost per pair: 1 (L_0) + 5 (exp_shifted) + 3 + 1 (decision).
    """
    L = Ops.stack([ops.add(EQKE_s[q, m], lse_nq[q], label="cubic:c0"), z[q]], dim=1)
    w = ops.exp_shifted(L, dim=1, label="cubic:c0")
    F = ops.sum(
        ops.mul(w, Ops.stack([u_max, u_z], dim=1), label="cubic:c0"), dim=1, label="cubic:c0"
    )
    return ops.proven_negative(F, label="cubic:c0")


def single_inputs(
    qs: Int[Tensor, " pairs"],
    ms: Int[Tensor, " pairs"],
    EQKE_s: Approx,
    EQKP_s: Approx,
    lse_nq: Approx,
    z: Approx,
    EVOU: Approx,
    PVOU: Approx,
    EUPU: Approx,
    ops: Ops,
    pair_chunk: int,
) -> tuple[Bool[Tensor, " pairs"], Approx]:
    """Step (6): c = 0, exactly. The key (q, m), q <= m, is the single input (m, ..., m, q).

    Its logits are evaluated exactly along the path decomposition (true attention, true
    positional terms). All n-1 non-query slots hold m, so their weights are a_max pi_q[p] with
    pi_q = softmax_{p < n-1}(EQKP_s[q, p]) independent of m, and a_max, a_q the softmax of the
    two groups' log-weights (EQKE_s[q, m] + lse_nq[q], z[q]) (lse_nq = log-sum-exp of the
    non-query positional scores). Hence
        logit(x) = EUPU[q, x] + a_max (EVOU[m, x] + Pbar[q, x]) + a_q R[q, x],
    Pbar = pi @ PVOU[:n-1], R = EVOU + PVOU[n-1] (row q: the query slot's token and position).
    Proven iff max_{x != m} logit(x) - logit(m) < 0 rigorously. Returns the verdicts and these
    margins (an Approx per pair: the float max of the rows is within their radius of the exact
    max, as for ``Ops.amax``), which the adaptive proof reuses (``singles.decide_c0``).
    Cost: ``single_inputs_flops``.
    """
    n = EQKP_s.shape[1]
    out = torch.zeros(qs.numel(), dtype=torch.bool)
    if qs.numel() == 0:
        return out, Approx(torch.zeros(0, dtype=torch.float64), 0.0, 0.0)
    pi = ops.softmax(EQKP_s[:, : n - 1], dim=1, label="cubic:c0")  # [q, p]
    pbar = ops.matmul(pi, PVOU[: n - 1], label="cubic:c0")  # [q, x]
    R = ops.add(EVOU, PVOU[n - 1 :], label="cubic:c0")  # [q, x]
    diffs = []
    for start in range(0, qs.numel(), pair_chunk):
        qi = qs[start : start + pair_chunk]
        mi = ms[start : start + pair_chunk]
        logw = Ops.stack(
            [ops.add(EQKE_s[qi, mi], lse_nq[qi], label="cubic:c0"), z[qi]], dim=1
        )  # [P, 2]
        alpha = ops.softmax(logw, dim=1, label="cubic:c0")  # [P, (max group, query)]
        a_max = alpha[:, 0].map_layout(lambda t: t[:, None])
        a_q = alpha[:, 1].map_layout(lambda t: t[:, None])
        own = ops.add(EVOU[mi], pbar[qi], label="cubic:c0")  # [P, x]
        logits = ops.add(
            EUPU[qi],
            ops.add(
                ops.mul(a_max, own, label="cubic:c0"),
                ops.mul(a_q, R[qi], label="cubic:c0"),
                label="cubic:c0",
            ),
            label="cubic:c0",
        )  # [P, x]
        worst = ops.amax_excluding(logits, dim=1, exclude=mi[:, None], label="cubic:c0")
        diff = ops.sub(worst, logits[torch.arange(qi.numel()), mi], label="cubic:c0")
        out[start : start + pair_chunk] = ops.proven_negative(diff, label="cubic:c0")
        diffs.append(diff)
    return out, Ops.cat(diffs, dim=0)


SINGLE_ONE_SHOT = 10  # FLOPs per pair


def single_inputs_flops(V: int, n: int, exact: int) -> int:
    """The one-shot test on every c = 0 pair and the exact evaluation of ``exact`` pairs: per
    query V (softmax over n-1) + V^2 (2(n-1) - 1) (Pbar) + V^2 (R) once,
    then per pair 1 + 8 (two-group softmax) + 5V + (V - 1) (max) + 1 + 1 (decision)."""
    P = V * (V + 1) // 2
    one_shot = P * SINGLE_ONE_SHOT
    if exact == 0:
        return one_shot
    per_query = V * (2 * (n - 2) + 3 * (n - 1)) + V * V * (2 * (n - 1) - 1) + V * V
    return one_shot + per_query + exact * (1 + 8 + 5 * V + (V - 1) + 1 + 1)


def n_triples(V: int) -> int:
    """sum_m (m + 1) m = (V - 1) V (V + 1) / 3."""
    return (V - 1) * V * (V + 1) // 3


def homogeneous_chunk(
    qi: Tensor,
    mi: Tensor,
    ki: Tensor,
    vals: Approx,
    EQKE_s: Approx,
    z: Approx,
    groups: Approx | None,
    every_c: Approx | None,
    lse_all: Approx,
    ops: Ops,
    routes: Tensor | None = None,
) -> Chunk:
    """Step (5): decide the homogeneous keys (q, m, k, c) of one chunk of triples.

    ``vals[t, cls, group]`` are the step-(2) bounds (``pessimize.triple_values``). By default
    (the cascade) keys with c = 1 .. n-2 are decided by ``one_shot`` for every c at once
    (log-weight ranges ``every_c``, when there are two or more such c), then per c for the
    triples that fail, then ``per_placement`` for the keys still unproven. ``routes`` [T, n-1]
    (``ROUTE_*`` per key c = 1 .. n-1, 0: not given) can send a key straight to one of these
    tests or to none: a triple with a route for some c <= n-2 skips the test over every c, and
    its keys without a route take the cascade's per-c tests. Every test is sound on its own,
    so any routes are: a key decided by another test, or by none, is only proven less often.
    Keys with c = n-1 (q = m only; tested unless routed to ``ROUTE_SKIP``) have no max slot
    outside the query: groups (EQKE_s[m, k] + lse_all[m], z[m]) with the non-max and query
    values.
    Cost: ``homogeneous_flops``.
    """
    T = qi.numel()
    n_c = 0 if groups is None else groups.shape[1]
    given = torch.zeros(T, n_c + 1, dtype=torch.int8) if routes is None else routes
    found = torch.zeros(T, n_c + 1, dtype=torch.int8)
    all_c_tests = per_c = rechecked = 0
    if n_c and T:
        v = ops.maximum(vals[:, 0], vals[:, 1], label="cubic:lw")  # [T, group]
        u = ops.upper_exact(v, label="cubic:lw")  # float upper bounds, exact as reals
        eq_m, eq_k, zq = EQKE_s[qi, mi], EQKE_s[qi, ki], z[qi]
        proven = torch.zeros(n_c, T, dtype=torch.bool)
        code = given[:, :n_c].T.to(torch.int64)  # [n_c, T]; -1 below: proven for every c
        if n_c >= 2:
            idx = torch.nonzero((code == 0).all(dim=0), as_tuple=True)[0]
            all_c_tests = idx.numel()
            rng = every_c.map_layout(lambda t: t[qi[idx]].permute(1, 2, 0)[:, :, None])
            all_c = one_shot(eq_m[idx], eq_k[idx], zq[idx], u[idx], rng, ops)[0]
            proven[:, idx[all_c]] = True
            code[:, idx[all_c]] = -1
        ci, ti = torch.nonzero((code == 0) | (code == ROUTE_ONE_SHOT), as_tuple=True)
        per_c = ti.numel()
        by_one = torch.zeros(n_c, T, dtype=torch.bool)
        if per_c:
            rng = groups.map_layout(
                lambda t: _ranges_per_c(t[qi[ti]])[:, :, ci, torch.arange(per_c)][:, :, None]
            )  # [2, 2, 1, P]
            by_one[ci, ti] = one_shot(eq_m[ti], eq_k[ti], zq[ti], u[ti], rng, ops)[0]
        ci, ti = torch.nonzero(((code == 0) & ~by_one) | (code == ROUTE_PLACEMENT), as_tuple=True)
        rechecked = ti.numel()
        by_placement = torch.zeros(n_c, T, dtype=torch.bool)
        if rechecked:
            by_placement[ci, ti] = per_placement(
                qi[ti], mi[ti], ki[ti], ci, vals[ti], EQKE_s, z, groups, ops
            )
        proven |= by_one | by_placement
        cheapest = torch.where(by_one, ROUTE_ONE_SHOT, ROUTE_PLACEMENT)
        cheapest = torch.where(by_one | by_placement, cheapest, ROUTE_SKIP)
        found[:, :n_c] = torch.where(code == -1, 0, cheapest).T.to(torch.int8)
        proven = proven.T  # [T, n_c]
    else:
        proven = torch.zeros(T, 0, dtype=torch.bool)
    diag = torch.nonzero((qi == mi) & (given[:, n_c] != ROUTE_SKIP), as_tuple=True)[0]
    proven_last = torch.zeros(0, dtype=torch.bool)
    if diag.numel():
        m, k = mi[diag], ki[diag]
        logw = Ops.stack(
            [ops.add(EQKE_s[m, k], lse_all[m], label="cubic:attn"), z[m]], dim=-1
        )  # [D, 2]
        w = ops.exp_shifted(logw, dim=-1, label="cubic:attn")
        weighted = ops.mul(
            w.map_layout(lambda t: t[:, None, :]),  # [D, 1, group]
            vals[diag].map_layout(lambda t: t[:, :, 1:]),  # [D, cls, (non-max, query)]
            label="cubic:lw",
        )
        bound = ops.sum(weighted, dim=-1, label="cubic:lw")  # [D, cls]
        worst = ops.amax(bound, dim=-1, label="cubic:lw")
        proven_last = ops.proven_negative(worst, label="cubic:decide")
    found[(qi == mi) & (given[:, n_c] == ROUTE_SKIP), n_c] = ROUTE_SKIP
    found[diag[~proven_last], n_c] = ROUTE_SKIP
    return Chunk(
        q=qi,
        m=mi,
        k=ki,
        proven=proven,
        last_idx=diag,
        proven_last=proven_last,
        tiers=Tiers(
            valued=T,
            all_c_tests=all_c_tests,
            per_c=per_c,
            rechecked=rechecked,
            diag_tests=diag.numel(),
        ),
        routes=found,
    )


def _ranges_per_c(g: Tensor) -> Tensor:
    """[T, n_c, r, group] log-weights -> [lo/hi, group, n_c, T]: the max group is lowest with
    the max tokens on the lowest positional scores (r = 0), the non-max group with r = 1."""
    lo = torch.stack([g[:, :, 0, 0], g[:, :, 1, 1]])  # [group, T, n_c]
    hi = torch.stack([g[:, :, 1, 0], g[:, :, 0, 1]])
    return torch.stack([lo, hi]).transpose(2, 3)


def one_shot(
    eq_m: Approx,
    eq_k: Approx,
    zq: Approx,
    u: Approx,
    ranges: Approx,
    ops: Ops,
) -> Bool[Tensor, "n_cases triples"]:
    """Step (5), one test for a range of placements (and counts c) and both classes of outputs.

    Per triple (q, m, k): ``eq_m`` = EQKE_s[q, m], ``eq_k`` = EQKE_s[q, k], ``zq`` = z[q];
    ``u[t, group]`` exact floats >= max_cls vals[cls, group]; ``ranges[lo/hi, group, case, t]``
    bound the group log-sum-exps log S(pi) (max group) and log(T - S(pi)) (non-max group) over
    the placements of each case (one c: between the extreme placements; all c: over them all).
    Claim: if proven[case, t], every key (q, m, k, c) of the case has F_x(pi) < 0 for every
    placement pi and every x != m.
    Proof: F_x(pi) = sum_g e^{L_g(pi)} H_g(x) <= sum_g e^{L_g(pi)} u_g with L_max = eq_m +
    log S(pi), L_k = eq_k + log(T - S(pi)), L_query = zq. Each term e^{L_g} u_g is largest at
    the low end of L_g's range if u_g < 0 and at the high end otherwise; with those ends L*_g,
    F_x(pi) <= sum_g e^{L*_g} u_g, whose sign is that of sum_g exp_shifted(L*)_g u_g. Proven
    iff that is < 0 rigorously. The bound is never below the per-placement bound of the same
    key, so it proves a subset of that test's keys.                                       QED
    Cost: 18 per (case, triple).
    """
    C, T = ranges.shape[2], u.shape[0]
    neg = (u.mid < 0).T[:, None, :].expand(3, C, T)  # [group, case, T]

    def end(group: int) -> Approx:  # the low end where u < 0, else the high end
        return ops.where(neg[group], ranges[0, group], ranges[1, group], label="cubic:attn")

    def per_triple(a: Approx) -> Approx:  # [T] -> [case, T]
        return a.map_layout(lambda t: t.expand(C, T))

    L = Ops.stack(
        [
            ops.add(per_triple(eq_m), end(0), label="cubic:attn"),
            ops.add(per_triple(eq_k), end(1), label="cubic:attn"),
            per_triple(zq),
        ],
        dim=0,
    )  # [group, case, T]
    w = ops.exp_shifted(L, dim=0, label="cubic:attn")
    weighted = ops.mul(w, u.map_layout(lambda t: t.T[:, None, :]), label="cubic:lw")
    F = ops.sum(weighted, dim=0, label="cubic:lw")
    return ops.proven_negative(F, label="cubic:decide")


def per_placement(
    qi: Tensor,
    mi: Tensor,
    ki: Tensor,
    ci: Tensor,
    vals: Approx,
    EQKE_s: Approx,
    z: Approx,
    groups: Approx,
    ops: Ops,
) -> Bool[Tensor, " pairs"]:
    """Step (5) as in the package docstring, for a flat list of (triple, c - 1) pairs: at each
    extreme placement r the log-weights (EQKE_s[q, m] + G[q, c, r, 0], EQKE_s[q, k] +
    G[q, c, r, 1], z[q]), and per class B = sum_g w_g vals[cls, g] with w = exp_shifted of the
    log-weights (a positive multiple of the softmax); proven iff the max over r and cls is < 0
    rigorously. Cost: 44 per pair."""
    P = qi.numel()
    g = groups.map_layout(lambda t: t[qi, ci].permute(2, 1, 0))  # [2 (group), r, P]
    a_max = ops.add(EQKE_s[qi, mi].map_layout(lambda t: t.expand(2, P)), g[0], label="cubic:attn")
    a_k = ops.add(EQKE_s[qi, ki].map_layout(lambda t: t.expand(2, P)), g[1], label="cubic:attn")
    logw = Ops.stack([a_max, a_k, z[qi].map_layout(lambda t: t.expand(2, P))], dim=0)
    w = ops.exp_shifted(logw, dim=0, label="cubic:attn")  # [group, r, P]
    weighted = ops.mul(
        w.map_layout(lambda t: t[:, :, None, :]),  # [group, r, 1, P]
        vals.map_layout(lambda t: t.permute(2, 1, 0)[:, None]),  # [group, 1, cls, P]
        label="cubic:lw",
    )
    bound = ops.sum(weighted, dim=0, label="cubic:lw")  # [r, cls, P]
    worst = ops.amax(bound.map_layout(lambda t: t.flatten(0, 1)), dim=0, label="cubic:lw")
    return ops.proven_negative(worst, label="cubic:decide")


UPPER_PER_TRIPLE = 6  # class max and upper bound of the values
ONE_SHOT = 18
PER_PLACEMENT = 44
LAST_TEST = 14


def homogeneous_flops(V: int, n: int, tiers: Tiers) -> int:
    """Ledger total of ``triple_values`` and ``homogeneous_chunk`` over ``tiers.valued`` triples
    when they run ``all_c_tests`` one-shot tests over every c, ``per_c`` one-shot tests of one
    key, ``rechecked`` per-placement tests and ``diag_tests`` tests of keys with c = n-1."""
    per_triple = 5 if V < 3 else 12
    if n >= 3:
        per_triple += UPPER_PER_TRIPLE
    return (
        tiers.valued * per_triple
        + (tiers.all_c_tests + tiers.per_c) * ONE_SHOT
        + tiers.rechecked * PER_PLACEMENT
        + tiers.diag_tests * LAST_TEST
    )
