"""Proof search (untrusted, not counted; reference-algorithms §8.3).

1. Directions, once per model (cached by the weights' sha256): the top singular pair (u, v) of
   EQKE = E_q Q K^T Ebar^T (signs flipped so that mean(u) > 0), the top left singular vectors of
   E_q and Ebar after removing u / v (second query / key directions), the top left singular
   vectors of W_Q and W_K, and for svd_query EUPU handling the projection of the mean query row
   onto the top right singular vector of E_q.
2. Gaps, per variant, vectorised: the checker's own stages (``pipeline``, ``bounds``) are run on
   a [q, m, c, G] grid of candidate gaps (G chunked), and each key gets the smallest gap the
   checker proves; keys none proves get their largest admissible gap (m - q, or m) if the
   checker proves that, else 1. For mean_query+diff, a first pass uses, per uniform gap,
   the mean attention over queries; the mean attention over queries at the gaps chosen is then
   fixed as the certificate's reference attention and the gaps are chosen again against it, so
   the checker reproduces the search's decisions exactly.
Variant-independent tables and the per-mode tables are cached per model, so a sweep over all
100 variants of one model shares them.
"""

from collections import OrderedDict

import torch
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.proofs.subcubic import bounds, near_tier, pipeline
from compact_proofs.proofs.subcubic.variants import (
    BY_NAME,
    FACTORED_ATTN_ERR,
    SUBPRODUCT_ATTN_ERR,
    Variant,
)
from compact_proofs.weights import Weights

MAX_GRID = 1 << 21  # elements of one [q, m, c, G, r] tensor in the gap grid
CACHE_GRID = 1 << 21  # cache the attention grid of a mode up to this many elements
MAX_GAP = 32  # largest candidate gap (larger gaps leave almost nothing to count)
_CACHE_MODELS = 2


class _ModelState:
    def __init__(self, w: Weights):
        self.w = w
        self.ops = Ops()  # throwaway ledger: search is not counted
        self.dirs = directions(w)
        self.cm = pipeline.common(w, self.ops)
        self.attn: dict[str, bounds.AttnTables] = {}
        self.logit: dict[tuple[str, bool], bounds.LogitTables] = {}
        self.grids: dict[str, list] = {}

    def grid(self, mode: str) -> list:
        """Chunks (gs, gaps, valid, a, 1 - a) of the candidate-gap grid; the attention part
        depends on the attention-error mode only, so it is cached per mode (when small)."""
        if mode in self.grids:
            return self.grids[mode]
        at = self.attn_tables(mode)
        V, n = self.cm.EVOU.shape[0], self.cm.PVOU.shape[0]
        chunk = max(1, MAX_GRID // (V * V * (n - 1) * 4))
        top = min(V, MAX_GAP)
        out = []
        for g0 in range(1, top + 1, chunk):
            gs = torch.arange(g0, min(top, g0 + chunk - 1) + 1)
            gaps = gs.view(1, 1, 1, -1).expand(V, V, n - 1, gs.numel())
            a, na = bounds.attention(at, gaps, self.ops)
            out.append((gs, gaps, bounds.valid(gaps), a, na))
        if V * V * (n - 1) * top * 2 <= CACHE_GRID:
            self.grids[mode] = out
        return out

    def attn_tables(self, mode: str) -> bounds.AttnTables:
        if mode not in self.attn:
            self.attn[mode] = pipeline.attn_part(mode, self.cm, self.dirs, self.ops)
        return self.attn[mode]

    def logit_tables(self, mode: str, drop: bool) -> bounds.LogitTables:
        if (mode, drop) not in self.logit:
            self.logit[(mode, drop)] = pipeline.logit_part(mode, drop, self.cm, self.dirs, self.ops)
        return self.logit[(mode, drop)]


_STATES: "OrderedDict[str, _ModelState]" = OrderedDict()


def _state(w: Weights) -> _ModelState:
    key = w.sha256()
    if key not in _STATES:
        _STATES[key] = _ModelState(w)
        while len(_STATES) > _CACHE_MODELS:
            _STATES.popitem(last=False)
    _STATES.move_to_end(key)
    return _STATES[key]


def clear_cache() -> None:
    _STATES.clear()


def _top_left(x: Tensor) -> Tensor:
    return torch.linalg.svd(x, full_matrices=False).U[:, 0]


def directions(w: Weights) -> dict[str, Tensor]:
    """Untrusted float64 singular directions (see the module docstring)."""
    E, P = w.W_E.double(), w.W_pos.double()
    Q, K = w.W_Q.double(), w.W_K.double()
    n = P.shape[0]
    Eq = E + P[-1]
    Eb = E + P.sum(0) * (1.0 / n)
    M = Eq @ Q @ K.T @ Eb.T
    Us, _, Vh = torch.linalg.svd(M)
    u, v = Us[:, 0], Vh[0]
    if float(u.mean()) < 0:
        u, v = -u, -v
    qd2 = _top_left(Eq - u[:, None] * (u @ Eq)[None, :])
    kd2 = _top_left(Eb - v[:, None] * (v @ Eb)[None, :])
    v1 = torch.linalg.svd(Eq, full_matrices=False).Vh[0]
    w_eu = (Eq.mean(0) @ v1) * v1
    return {
        "u": u,
        "v": v,
        "qd1": u,
        "qd2": qd2,
        "kd1": v,
        "kd2": kd2,
        "uQ": _top_left(Q),
        "uK": _top_left(K),
        "eupu_w": w_eu,
    }


def _mean_attention(a: Tensor, ok: Tensor) -> Tensor:
    """Mean over valid queries of a [q, m, c, G, r] (ok [q, m, c, G]) -> [m, c, G, r]."""
    okf = ok.to(a.dtype)[..., None]
    return (a * okf).sum(0) / okf.sum(0).clamp(min=1.0)


def _choose(
    st: _ModelState,
    mode: str,
    lt: bounds.LogitTables,
    mean: bool,
    avg: Approx | None,
) -> Tensor:
    """Smallest proven gap per key (1 where none is proven)."""
    ops = st.ops
    V, n = st.cm.EVOU.shape[0], st.cm.PVOU.shape[0]
    best = torch.zeros(V, V, n - 1, dtype=torch.int64)
    base = bounds.base_mean(lt, avg, ops) if (mean and avg is not None) else None
    for gs, gaps, ok_valid, a, na in st.grid(mode):
        avg_c = avg
        base_c = base
        if mean and avg is None:
            avg_c = ops.constant(_mean_attention(a.mid, ok_valid))
            base_c = bounds.base_mean(lt, avg_c, ops)
        lw = bounds.largest_wrong_logit(lt, a, na, gaps, avg_c if mean else None, base_c, ops)
        ok = ops.proven_negative(lw) & ok_valid
        has = ok.any(-1)
        first = gs[ok.to(torch.int8).argmax(-1)]
        upd = has & (best == 0)
        best[upd] = first[upd]
        if bool((best > 0).all()):
            break
    # Keys no candidate proved: try the largest admissible gap (m - q, or m for q = m), which
    # may exceed MAX_GAP; it still counts (q + 1)^c' inputs (1 when the query is the only
    # non-max token, whatever the gap).
    V_ = torch.arange(V)
    alt = torch.where(V_[:, None] < V_[None, :], V_[None, :] - V_[:, None], V_[None, :])
    alt = alt.clamp(min=1)[:, :, None, None].expand(V, V, n - 1, 1)
    at = st.attn_tables(mode)
    a, na = bounds.attention(at, alt, ops)
    avg_c, base_c = avg, base
    if mean and avg is None:
        avg_c = ops.constant(_mean_attention(a.mid, bounds.valid(alt)))
        base_c = bounds.base_mean(lt, avg_c, ops)
    lw = bounds.largest_wrong_logit(lt, a, na, alt, avg_c if mean else None, base_c, ops)
    ok = (ops.proven_negative(lw) & bounds.valid(alt))[..., 0]
    upd = ok & (best == 0)
    best[upd] = alt[..., 0][upd]
    best[best == 0] = 1
    return best


def search(variant: Variant, w: Weights) -> dict:
    st = _state(w)
    at = st.attn_tables(variant.attn_err)
    mean = variant.attn == "mean_query+diff"
    lt = st.logit_tables(variant.eupu, not mean)
    cert: dict = {}
    if variant.attn_err in FACTORED_ATTN_ERR:
        cert.update(u=st.dirs["u"], v=st.dirs["v"])
    elif variant.attn_err in SUBPRODUCT_ATTN_ERR:
        cert.update({k: st.dirs[k] for k in ("qd1", "qd2", "kd1", "kd2", "uQ", "uK")})
    if variant.eupu == "svd_query+max_diff":
        cert["eupu_w"] = st.dirs["eupu_w"]
    if not mean:
        cert["gaps"] = _choose(st, variant.attn_err, lt, False, None)
        return cert
    gaps1 = _choose(st, variant.attn_err, lt, True, None)
    g4 = gaps1[..., None]
    a, _ = bounds.attention(at, g4, st.ops)
    avg = _mean_attention(a.mid, bounds.valid(g4))[:, :, 0, :]  # [m, c, r]
    avg_a = st.ops.exact(avg).map_layout(lambda t: t[:, :, None, :])
    cert["gaps"] = _choose(st, variant.attn_err, lt, True, avg_a)
    cert["avg"] = avg
    return cert


def search_near_tier(w: Weights) -> dict:
    """Certificate of ``subcubic-near-tier``: the base variant's (gaps, reference attention),
    plus per key the near gap h (``near``; 0 for none) whose band m - g < k <= m - h ends at the
    largest token k the checker proves: every band token of every eligible key is tested once,
    all at once, with the checker's own test."""
    base_variant = BY_NAME[near_tier.BASE_NAME]
    cert = search(base_variant, w)
    st = _state(w)
    ops = st.ops
    at = st.attn_tables(base_variant.attn_err)
    lt = st.logit_tables(base_variant.eupu, False)
    avg = ops.exact(cert["avg"]).map_layout(lambda t: t[:, :, None, :])
    base = bounds.base_mean(lt, avg, ops)
    tb = near_tier.tables(at, lt, avg, base, st.cm.pos_s, st.cm.EVOU, ops)
    gaps = cert["gaps"]
    q, m, ci = torch.nonzero(torch.ones_like(gaps, dtype=torch.bool), as_tuple=True)
    g = gaps[q, m, ci]
    on = near_tier.eligible(q, m, ci, g)
    q, m, ci, g = q[on], m[on], ci[on], g[on]
    claims = near_tier.band_claims(q, m, ci, g, torch.ones_like(g))  # the widest band, h = 1
    ok = near_tier.proven(claims, tb, ops)
    # Per key, h = m - (its largest proven band token), the smallest over its proven claims.
    flat = (claims.q * gaps.shape[1] + claims.m) * gaps.shape[2] + claims.ci
    big = torch.iinfo(torch.int64).max
    best = torch.full((gaps.numel(),), big, dtype=torch.int64)
    best.scatter_reduce_(0, flat, torch.where(ok, claims.m - claims.k, big), reduce="amin")
    near = torch.where(best < big, best, 0).view(gaps.shape)
    cert["near"] = near
    return cert
