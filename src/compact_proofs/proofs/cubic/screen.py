"""Cubic proof, step (5), first test: a screen per (query, max) pair. See the package docstring.

For a pair (q, m) and a threshold j (1 <= j <= m) one test proves every homogeneous key
(q, m, k, c) with k < j at once: every c >= 1 (c = n-1 only when q = m), every placement and
every output x != m. The threshold of a pair is found by testing j = m, m-1, m-2, m-4, m-8, ...
until one passes (none: j = 0); only the keys with j <= k < m go on to the per-triple tests of
``cases``. All tables here are O(d_vocab^2); the screen needs no d_vocab^3 table.

Separable upper bounds on the slot terms of step (2) (``pessimize``), with
eu_nm[q, m] = max_{x != m} EUPU[q, x], own_nm[m] = max_{x != m} own[m, x],
evk[k] = max_{x != k} EVOU[k, x] and pv_nm[m] = max_{x != m} PVnq[m, x]:
    U_max[q, m]  = eu_nm[q, m] + own_nm[m] - base[q, m]            >= Dmax[q, m, x]
    U_z[q, m]    = max_{x != m} W[q, x] - W[q, m]                   >= Dz[q, m, x]
    U_k[q, m, j] = max(A[q, j] + B[m, j], eu_nm[q, m] + Cp[m, j]) - EUPU[q, m]
                                                                    >= Dk[q, m, k, x]
for every x != m and k < j, where A, B, Cp are running maxima over k < j of EUPU[q, k],
Ck[m, k] (the x = k term: EUPU[q, k] - EUPU[q, m] + Ck[m, k]) and
Cq[m, k] = evk[k] - EVOU[k, m] + pv_nm[m] (x not in {m, k}: EUPU[q, x] <= eu_nm[q, m],
EVOU[k, x] <= evk[k], PVnq[m, x] <= pv_nm[m]); and Emin[q, j] <= EQKE_s[q, k] <= Emax[q, j]
(running min / max over k < j).

Claim: if ``thresholds`` gives the pair (q, m) threshold j, every key (q, m, k, c) with k < j has
F_x(pi) < 0 for every placement pi and every x != m (the property step (5) establishes for a
proven key, so step (4) applies to it).
Proof: F_x(pi) = sum_g e^{L_g(pi)} H_g(x) with H_max(x) = Dmax <= U_max, H_k(x) = Dk <= U_k,
H_query(x) = Dz <= U_z and log-weights L_max = EQKE_s[q, m] + log S(pi),
L_k = EQKE_s[q, k] + log(T - S(pi)), L_query = z[q]; log S(pi) and log(T - S(pi)) lie in the
ranges over every c and placement (``pessimize.every_c_ranges``), and EQKE_s[q, k] in
[Emin, Emax]. Each term e^{L_g} U_g is largest at the low end of L_g's range if U_g < 0, else at
the high end; with those ends L*_g, F_x(pi) <= sum_g e^{L*_g} U_g, whose sign is that of
sum_g exp_shifted(L*)_g U_g (U as exact float upper bounds). The mid test is that sum < 0
rigorously. For c = n-1 (q = m, no max slot outside the query): groups (non-max, query) with
L_k = EQKE_s[m, k] + lse_all[m], the same argument; a diagonal pair passes only if both tests
do (the mid test only exists for n >= 3).                                                  QED
The per-triple one-shot test of the same key has every U_g and every range end no worse, so a
key the screen proves is one that test proves too (up to rounding): the verdicts are the
per-triple tests'.
Cost: ``screen_flops``.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.cubic.pessimize import RowTops, SlotTables, row_top_count

LABEL = "cubic:screen"


@dataclass(frozen=True)
class PairBounds:
    """Per pair (q, m), q <= m (flat lists ``q``, ``m``): the exact float upper bounds
    ``u_max``, ``u_z`` and what ``U_k`` needs; running maxima over k as [row, j] tables."""

    q: Int[Tensor, " pairs"]
    m: Int[Tensor, " pairs"]
    u_max: Approx  # [pairs], rad 0
    u_z: Approx  # [pairs], rad 0
    eu_qm: Approx  # [pairs] EUPU[q, m]
    eu_nm: Approx  # [pairs]
    A: Approx  # [d_vocab_q, j]: max_{k <= j} EUPU[q, k]
    B: Approx  # [d_vocab_max, j]: max_{k <= j} Ck[m, k]
    Cp: Approx | None  # [d_vocab_max, j]: max_{k <= j} Cq[m, k]; None if d_vocab = 2
    Emax: Approx  # [d_vocab_q, j]: max_{k <= j} EQKE_s[q, k]
    Emin: Approx  # [d_vocab_q, j]


def pair_bounds(
    st: SlotTables, rows: RowTops, EQKE_s: Approx, q: Tensor, m: Tensor, ops: Ops
) -> PairBounds:
    """Cost: ``pair_bounds_flops``; 2 min(3, V) integer comparisons per pair."""
    V = st.EUPU.shape[0]
    diag = torch.arange(V)[:, None]
    excl = m[:, None]
    eu_nm = ops.first_not_excluded(rows.direct[q], rows.direct_idx[q], excl, label=LABEL)
    w_nm = ops.first_not_excluded(rows.W[q], rows.W_idx[q], excl, label=LABEL)
    own_nm = ops.amax_excluding(st.own, dim=1, exclude=diag, label=LABEL)  # [m]
    u_max = ops.sub(ops.add(eu_nm, own_nm[m], label=LABEL), st.base[q, m], label=LABEL)
    u_z = ops.sub(w_nm, st.W[q, m], label=LABEL)
    u = ops.upper_exact(Ops.stack([u_max, u_z], dim=0), label=LABEL)
    Cp = None
    if V >= 3:
        evk = ops.amax_excluding(st.EVOU, dim=1, exclude=diag, label=LABEL)  # [k]
        pv_nm = ops.amax_excluding(st.pv, dim=1, exclude=diag, label=LABEL)  # [m]
        Cq = ops.add(
            ops.sub(
                evk.map_layout(lambda t: t[None, :]),
                st.EVOU.map_layout(lambda t: t.T),  # [m, k] = EVOU[k, m]
                label=LABEL,
            ),
            pv_nm.map_layout(lambda t: t[:, None]),
            label=LABEL,
        )  # [m, k]
        Cp = ops.cummax(Cq, dim=1, label=LABEL)
    return PairBounds(
        q=q,
        m=m,
        u_max=u[0],
        u_z=u[1],
        eu_qm=st.EUPU[q, m],
        eu_nm=eu_nm,
        A=ops.cummax(st.EUPU, dim=1, label=LABEL),
        B=ops.cummax(st.Ck, dim=1, label=LABEL),
        Cp=Cp,
        Emax=ops.cummax(EQKE_s, dim=1, label=LABEL),
        Emin=ops.cummin(EQKE_s, dim=1, label=LABEL),
    )


def pair_bounds_flops(V: int, pairs: int) -> int:
    """2 selections, 3 sums and 2 upper bounds per pair; own_nm, A, B, Emax, Emin V (V - 1)
    each; if V >= 3: evk, pv_nm, Cp V (V - 1) each and Cq 2 V^2."""
    tables = 5 * V * (V - 1) + (3 * V * (V - 1) + 2 * V * V if V >= 3 else 0)
    return 7 * pairs + tables


@dataclass(frozen=True)
class ScreenResult:
    """``j[p]``: every key (q[p], m[p], k, c) with k < j[p] is proven; ``tests``: how many mid
    (c <= n-2) and last (c = n-1) tests were run (the FLOPs depend on them)."""

    j: Int[Tensor, " pairs"]
    mid_tests: int
    last_tests: int


def thresholds(
    pb: PairBounds,
    EQKE_s: Approx,
    z: Approx,
    ranges: Approx | None,
    lse_all: Approx,
    ops: Ops,
    given: Int[Tensor, "d_vocab_q d_vocab_max"] | None = None,
) -> ScreenResult:
    """Test j = m, m-1, m-2, m-4, ... per pair until one passes (see the module docstring), or
    only ``given[q, m]`` where given (a hint: 0 tests nothing; a j that fails gives 0, so a
    wrong hint costs only the per-triple tests of more keys).

    ``ranges[q, lo/hi, group]`` are the log-weight ranges over every c and placement (None when
    n_ctx = 2: then only diagonal pairs have keys with c >= 1). Cost: ``screen_flops``."""
    q, m = pb.q, pb.m
    P = q.numel()
    has_mid = ranges is not None
    active = (m >= 1) & ((q == m) | has_mid)
    if given is not None:
        V = pb.A.shape[0]
        jq = given[q, m]
        if given.shape != (V, V) or bool(((jq < 0) | (jq > m)).any()):
            raise ProofPreconditionError("screen thresholds need 0 <= j <= m for every q <= m")
        active &= jq >= 1
    j = torch.zeros(P, dtype=torch.int64)
    lmax = None
    if has_mid:  # the max group's log-weight end, fixed per pair
        neg = pb.u_max.mid < 0
        end = ops.where(neg, ranges[q, 0, 0], ranges[q, 1, 0], label=LABEL)
        lmax = ops.add(EQKE_s[q, m], end, label=LABEL)
    todo = torch.nonzero(active, as_tuple=True)[0]
    mid_tests = last_tests = 0
    gap = 0
    while todo.numel():
        jj = m[todo] - gap if given is None else given[q[todo], m[todo]]
        todo, jj = todo[jj >= 1], jj[jj >= 1]
        if not todo.numel():
            break
        u_k, e_k = _key_group(pb, todo, jj - 1, ops)
        ok = torch.ones(todo.numel(), dtype=torch.bool)
        if has_mid:
            mid_tests += todo.numel()
            ok &= _mid_test(pb, todo, u_k, e_k, lmax, ranges, z, ops)
        on_diag = torch.nonzero(q[todo] == m[todo], as_tuple=True)[0]
        if on_diag.numel():
            last_tests += on_diag.numel()
            ok[on_diag] &= _last_test(
                pb, todo[on_diag], u_k[on_diag], e_k[on_diag], lse_all, z, ops
            )
        j[todo[ok]] = jj[ok]
        todo = todo[~ok] if given is None else todo[:0]
        gap = 1 if gap == 0 else 2 * gap
    return ScreenResult(j=j, mid_tests=mid_tests, last_tests=last_tests)


def hinted_tests(q: Tensor, m: Tensor, j: Tensor, n: int) -> tuple[int, int]:
    """The (mid, last) tests ``thresholds`` runs when given each pair's (q[i], m[i]) own
    threshold j[i] (one test per active pair with j >= 1)."""
    has_mid = n >= 3
    tested = (m >= 1) & ((q == m) | has_mid) & (j >= 1)
    return (int(tested.sum()) if has_mid else 0), int((tested & (q == m)).sum())


def _key_group(pb: PairBounds, p: Tensor, jm1: Tensor, ops: Ops) -> tuple[Approx, Approx]:
    """U_k (exact float upper bound) and the end of EQKE_s[q, k] (k < j) worst for its sign.
    Cost: 7 per test (4 when d_vocab = 2: no class x not in {m, k})."""
    q, m = pb.q[p], pb.m[p]
    u = ops.sub(ops.add(pb.A[q, jm1], pb.B[m, jm1], label=LABEL), pb.eu_qm[p], label=LABEL)
    if pb.Cp is not None:
        other = ops.sub(ops.add(pb.eu_nm[p], pb.Cp[m, jm1], label=LABEL), pb.eu_qm[p], label=LABEL)
        u = ops.maximum(u, other, label=LABEL)
    u = ops.upper_exact(u, label=LABEL)
    e = ops.where(u.mid < 0, pb.Emin[q, jm1], pb.Emax[q, jm1], label=LABEL)
    return u, e


def _negative_mix(L: list[Approx], u: list[Approx], ops: Ops) -> Bool[Tensor, " tests"]:
    """sum_g exp_shifted(L)_g u_g < 0 rigorously. Cost for G groups: (G - 1) + 2G (weights),
    G products, G - 1 sums, 1 (decision)."""
    w = ops.exp_shifted(Ops.stack(L, dim=0), dim=0, label=LABEL)
    F = ops.sum(ops.mul(w, Ops.stack(u, dim=0), label=LABEL), dim=0, label=LABEL)
    return ops.proven_negative(F, label=LABEL)


def _mid_test(
    pb: PairBounds,
    p: Tensor,
    u_k: Approx,
    e_k: Approx,
    lmax: Approx,
    ranges: Approx,
    z: Approx,
    ops: Ops,
) -> Bool[Tensor, " tests"]:
    """Keys with 1 <= c <= n-2. Cost: 2 + 14."""
    q = pb.q[p]
    end = ops.where(u_k.mid < 0, ranges[q, 0, 1], ranges[q, 1, 1], label=LABEL)
    lk = ops.add(e_k, end, label=LABEL)
    return _negative_mix([lmax[p], lk, z[q]], [pb.u_max[p], u_k, pb.u_z[p]], ops)


def _last_test(
    pb: PairBounds, p: Tensor, u_k: Approx, e_k: Approx, lse_all: Approx, z: Approx, ops: Ops
) -> Bool[Tensor, " tests"]:
    """Keys with c = n-1 (q = m). Cost: 1 + 9."""
    q = pb.q[p]
    lk = ops.add(e_k, lse_all[q], label=LABEL)
    return _negative_mix([lk, z[q]], [u_k, pb.u_z[p]], ops)


MID_TEST = 2 + 14
LAST_TEST = 1 + 9


def screen_flops(V: int, n: int, pairs: int, mid_tests: int, last_tests: int) -> int:
    """Ledger total of ``pair_bounds`` and ``thresholds`` for ``pairs`` pairs, when the search
    ran ``mid_tests`` and ``last_tests`` tests (each with its own U_k, or one shared by a
    diagonal pair's two tests)."""
    key_group = 7 if V >= 3 else 4
    per_pair_ends = 2 * pairs if n >= 3 else 0
    tests = mid_tests if n >= 3 else last_tests  # one U_k per tested pair and threshold
    return (
        pair_bounds_flops(V, pairs)
        + per_pair_ends
        + tests * key_group
        + mid_tests * MID_TEST
        + last_tests * LAST_TEST
    )


def screen_int_ops(V: int, pairs: int) -> int:
    return 2 * row_top_count(V) * pairs


def screened_triples(pb: PairBounds, j: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor]:
    """The triples (q, m, k) with k < j of the pairs lo .. hi-1 (index work only)."""
    return _expand(pb.q[lo:hi], pb.m[lo:hi], torch.zeros_like(j[lo:hi]), j[lo:hi])


def leftover_triples(pb: PairBounds, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The triples (q, m, k) with j <= k < m (index work only)."""
    return _expand(pb.q, pb.m, j, pb.m)


def _expand(q: Tensor, m: Tensor, k0: Tensor, k1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair i the k in [k0[i], k1[i]), as flat lists (q, m, k)."""
    size = (k1 - k0).clamp(min=0)
    rep = torch.repeat_interleave(torch.arange(q.numel()), size)
    start = torch.cumsum(size, 0) - size
    k = k0[rep] + torch.arange(rep.numel()) - start[rep]
    return q[rep], m[rep], k
