"""The 100 subcubic strategies: metadata (names, groups, classes, unexplained dimension), FLOPs
equal to the closed forms, each component's claim against independently computed truth, the
paper's rule as written over-claiming on a small model where ours does not, the count fix, and
robustness to bad certificates. Per-input soundness of all 100 runs in test_soundness.py."""

import math

import models
import pytest
import subcubic_paper_rule as pr
import torch

from compact_proofs.config import ModelConfig
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs import subcubic
from compact_proofs.proofs.protocol import Strategy
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.proofs.subcubic import bounds, count, eqke, flops, pipeline, search
from compact_proofs.proofs.subcubic.variants import VARIANTS
from compact_proofs.report import naming

BY = {s.name: s for s in subcubic.STRATEGIES}
EXACT = "EUPUMeanQueryMaxDiffAttnMeanQueryDiffAttnErrExactEqkeMaxDiffExact"


# ------------------------------------------------------------------------------- metadata
def test_one_hundred_variants_named_and_grouped_like_the_paper():
    names = [s.name for s in subcubic.STRATEGIES]
    assert len(set(names)) == 100
    assert set(names) == set(naming.SUBCUBIC_AXES)
    for v, s in zip(VARIANTS, subcubic.STRATEGIES, strict=True):
        assert s.family == naming.group_label(v.eupu, v.attn_err)
        assert STRATEGIES[s.name] is s
        assert s.complexity.startswith(v.leading)
    classes = [v.leading for v in VARIANTS]
    assert (classes.count("almost-quadratic"), classes.count("vocab-model-squared")) == (18, 30)
    assert classes.count("subcubic") == 52
    assert BY["EUPUMeanQueryMaxDiffAttnMeanQueryDiffAttnErrMaxDiff"].name in STRATEGIES


def test_unexplained_dimension_range_matches_the_paper():
    cfg = ModelConfig(d_vocab=64, n_ctx=4)
    dims = [s.unexplained_dim(cfg) for s in subcubic.STRATEGIES]
    assert (min(dims), max(dims)) == (4290, 10370)


# --------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("V,n,d,dh", [(5, 3, 4, 4), (7, 4, 6, 5), (4, 2, 3, 3)])
def test_flops_equal_closed_form_all_variants(V, n, d, dh):
    w = models.random_weights(V, n, d, dh, seed=V + n)
    for v, s in zip(VARIANTS, subcubic.STRATEGIES, strict=True):
        ops = Ops()
        s.check(w, s.search(w), ops)
        assert ops.ledger.flop == flops.variant_flops(v, V, n, d, dh), v.name
        assert ops.ledger.int_op == count.n_keys(V, n) * (n + 3)


@pytest.mark.parametrize(
    "name",
    [
        EXACT,
        "EUPUGlobalMaxDiffExactAttnDropAverageQueryPerOutputLogitReasoningAttnErrSvd",
        "EUPUMaxDiffAttnDropAverageQueryPerOutputLogitReasoningAttnErrMaxDiffSubproductRecursive",
        "EUPUSvdQueryMaxDiffAttnMeanQueryDiffAttnErrMeanMaxDiffSubproduct",
    ],
)
def test_flops_at_paper_shape_within_papers_range(name):
    """Max-of-4 shape (V 64, d 32): equal to the closed form and below the paper's 4.7e6."""
    V, n, d = 64, 4, 32
    w = models.random_weights(V, n, d, seed=1, scale=0.14)
    s = BY[name]
    ops = Ops()
    s.check(w, s.search(w), ops)
    v = subcubic.BY_NAME[name]
    assert ops.ledger.flop == flops.variant_flops(v, V, n, d, d) < 4.7e6


# ------------------------------------------------------------------- component claims
def _float_paths(w):
    E, P, Q, K = (t.double() for t in (w.W_E, w.W_pos, w.W_Q, w.W_K))
    n = P.shape[0]
    Eq = E + P[-1]
    Pbar = P.sum(0) * (1.0 / n)
    return Eq @ Q @ K.T @ (E + Pbar).T, Eq @ Q @ K.T @ (P - Pbar).T


def _directions(w, wrong_seed: int | None) -> dict:
    """The search's singular directions, or (with ``wrong_seed``) random wrong ones of the same
    shapes: the error bounds must hold for any directions."""
    cert = search.directions(w)
    if wrong_seed is None:
        return cert
    g = torch.Generator().manual_seed(wrong_seed)
    return {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in cert.items()}


@pytest.mark.parametrize("mode", list(subcubic.variants.ATTN_ERR_MODES))
@pytest.mark.parametrize("seed", [0, 1])
def test_error_bound_covers_the_residual(mode, seed):
    """eps[q] >= max_i,j |Res[q,i] - Res[q,j]|, Res = EQKE - A, with the search's directions
    and with random (wrong) directions."""
    w = models.random_weights(9, 4, 6, seed=seed, qk_scale=2.0)
    EQKE, _ = _float_paths(w)
    cert = _directions(w, wrong_seed=7 if seed == 1 else None)
    ops = Ops()
    lv = pipeline.common(w, ops).lv
    apx = eqke.approximate(mode, lv, eqke.embeds(lv, ops), cert, ops)
    res = EQKE - apx.A.mid
    ranges = res.amax(1) - res.amin(1)
    eps = apx.eps.mid.expand_as(ranges) + apx.eps.rad
    assert bool((ranges <= eps + 1e-9).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_cauchy_schwarz_error_bound_covers_and_tightens(seed):
    """The recursive modes' Cauchy-Schwarz term alone covers the residual's row ranges (with
    the search's and with random directions) and, on a model with d_model 16, is tighter than
    the recursive row-range bound it is combined with."""
    w = models.random_weights(12, 4, 16, seed=seed, qk_scale=2.0)
    EQKE, _ = _float_paths(w)
    cert = _directions(w, wrong_seed=5 if seed == 1 else None)
    ops = Ops()
    lv = pipeline.common(w, ops).lv
    em = eqke.embeds(lv, ops)
    apx = eqke.approximate("max_diff_subproduct_recursive", lv, em, cert, ops)
    res = EQKE - apx.A.mid
    ranges = res.amax(1) - res.amin(1)
    # rebuild the four residual factors in float64 (as eqke.subproduct peels them)
    E_q, Eb, Q, K = lv.E_q.mid, em.E_bar.mid, lv.Q.mid, lv.K.mid

    def peel(x, d1, d2):
        x1 = x - d1[:, None] * (d1 @ x)[None]
        return x1 - d2[:, None] * (d2 @ x1)[None]

    c = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in cert.items()}
    a2, b2 = peel(E_q, c["qd1"], c["qd2"]), peel(Eb, c["kd1"], c["kd2"])
    Q2 = Q - c["uQ"][:, None] * (c["uQ"] @ Q)[None]
    K2 = K - c["uK"][:, None] * (c["uK"] @ K)[None]
    fs = [ops.exact(t) for t in (a2, Q2, K2.T, b2.T)]
    for mq, mk in ((False, False), (True, False), (True, True)):
        cs = eqke._cs_eps(fs, mq, mk, ops)
        assert bool((ranges <= cs.mid + cs.rad + 1e-9).all())
    if seed == 0:
        rr = eqke.rr_bound(fs, [False, False, False], ops)
        assert bool((eqke._cs_eps(fs, False, False, ops).mid < rr.mid).all())


@pytest.mark.parametrize("mode", list(subcubic.variants.EUPU_MODES))
@pytest.mark.parametrize("seed", [0, 1])
def test_direct_bound_covers_eupu(mode, seed):
    """EUPU[q, x] - EUPU[q, m] <= Ldir[m, x] + gap[q, m] for all q, m, x != m, with the
    search's direction and with a random one."""
    w = models.random_weights(10, 4, 8, seed=seed, scale=1.5)
    E, P, Uw = (t.double() for t in (w.W_E, w.W_pos, w.W_U))
    EU = (E + P[-1]) @ Uw
    g = torch.Generator().manual_seed(seed)
    cert = {"eupu_w": search.directions(w)["eupu_w"]}
    if seed == 1:
        cert = {"eupu_w": torch.randn(8, generator=g, dtype=torch.float64)}
    ops = Ops()
    cm = pipeline.common(w, ops)
    dr = subcubic.eupu.direct(mode, cm.lv, cm.EUPU, cert, ops)
    V = EU.shape[0]
    diff = EU[:, None, :] - EU[:, :, None].expand(V, V, V)  # [q, m, x]
    bound = dr.gap.mid.expand(V, V)[:, :, None] + dr.gap.rad
    if dr.Ldir is not None:
        bound = bound + dr.Ldir.mid[None] + dr.Ldir.rad
    bound = bound.expand(V, V, V)
    off = ~torch.eye(V, dtype=torch.bool)[None].expand(V, V, V)
    assert bool((diff[off] <= bound[off] + 1e-9).all())


def _attention_and_logit_truth(w, tokens):
    """Exact-ish float64 attention to the max and max_{x != m} logit(x) - logit(m)."""
    logits = models.naive_last_logits(w, tokens)
    E, P, Q, K = (t.double() for t in (w.W_E, w.W_pos, w.W_Q, w.W_K))
    resid = E[tokens] + P
    sc = torch.einsum("bh,bph->bp", resid[:, -1] @ Q, resid @ K) / math.sqrt(Q.shape[1])
    att = torch.softmax(sc, -1)
    m = tokens.max(1).values
    a = (att * (tokens == m[:, None])).sum(1)
    own = logits.gather(1, m[:, None])[:, 0]
    worst = logits.scatter(1, m[:, None], -math.inf).amax(1)
    return a, worst - own


@pytest.mark.parametrize(
    "name",
    [
        EXACT,
        "EUPUMaxDiffAttnMeanQueryDiffAttnErrMeanMaxDiffSubproductRecursive",
        "EUPUMaxDiffExactAttnDropAverageQueryPerOutputLogitReasoningAttnErrSvd",
    ],
)
def test_attention_and_logit_bounds_bracket_every_input(name):
    """For every input of every valid key (any gap), a_lo <= a <= a_hi and the largest wrong
    logit difference is <= LW (proven or not): the bounds' claims, input by input, including
    queries attending less than the average (delta < 0, §13.2)."""
    w = models.random_weights(6, 4, 5, seed=3, qk_scale=2.0, pos_scale=1.5)
    V, n = 6, 4
    v = subcubic.BY_NAME[name]
    cert = BY[name].search(w)
    ops = Ops()
    cm = pipeline.common(w, ops)
    at = pipeline.attn_part(v.attn_err, cm, cert, ops)
    mean = v.attn == "mean_query+diff"
    lt = pipeline.logit_part(v.eupu, not mean, cm, cert, ops)
    grid = torch.arange(1, V + 1).view(1, 1, 1, -1).expand(V, V, n - 1, V)
    a, na = bounds.attention(at, grid, ops)
    avg = base = None
    if mean:
        avg = ops.exact(cert["avg"]).map_layout(lambda t: t[:, :, None, :])
        base = bounds.base_mean(lt, avg, ops)
    lw = bounds.largest_wrong_logit(lt, a, na, grid, avg, base, ops)
    tokens = models.all_tokens(V, n)
    true_a, true_lw = _attention_and_logit_truth(w, tokens)
    q, m = tokens[:, -1], tokens.max(1).values
    nonmax = tokens < m[:, None]
    c = nonmax.sum(1)
    top = torch.where(nonmax, tokens, -1).amax(1)
    ok_valid = bounds.valid(grid)
    checked = 0
    for gi in range(V):
        g = gi + 1
        sel = (c > 0) & (top <= m - g)
        ci = (c - 1).clamp(min=0)
        sel &= ok_valid[q, m, ci, gi]
        lo = a.mid[q, m, ci, gi, 0] - a.rad
        hi = a.mid[q, m, ci, gi, 1] + a.rad
        assert bool((true_a[sel] >= lo[sel] - 1e-12).all())
        assert bool((true_a[sel] <= hi[sel] + 1e-12).all())
        assert bool((true_lw[sel] <= lw.mid[q, m, ci, gi][sel] + lw.rad + 1e-9).all())
        checked += int(sel.sum())
    assert checked > 1000


# ---------------------------------------------------------------- the paper's rules vs ours
def test_paper_rule_overclaims_where_ours_does_not():
    """On a small block model the paper's rule (mean_query+diff, as written) declares an input
    correct that is actually wrong; the §13.2 sign fix removes the over-claim; every one of our
    100 variants passes the per-input harness on it and proves something."""
    w = pr.structured_weights(**pr.OVERCLAIM_MODEL, n=2)
    truth = models.truth_mask(w)
    gaps = torch.ones(3, 3, 2, dtype=torch.int64)
    wrong = pr.paper_claims(w, gaps) & ~truth
    assert int(wrong.sum()) >= 1
    assert not bool((pr.paper_claims(w, gaps, fix_delta=True) & ~truth).any())
    assert not bool((pr.paper_claims(w, gaps, fix_delta=True, fix_endpoint=True) & ~truth).any())
    best = 0
    for s in subcubic.STRATEGIES:
        v = models.assert_sound(s, w, truth)
        assert not bool((v.expand() & wrong).any())
        best = max(best, v.correct_count)
    assert best > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: models.planted_weights(7, 4, noise=0.05, pos_noise=0.3, seed=1),
        lambda: models.trained_weights(8, 3, seed=1, steps=300),
        lambda: models.planted_weights(6, 3, noise=0.1, pos_noise=0.5, seed=4),
    ],
)
def test_at_least_the_sound_paper_rule(make):
    """With the paper's own gaps choice (the smallest uniform gap per key its rule accepts) and
    its rule made sound (both fixes), our exact-EQKE variant proves at least as many inputs,
    and the paper's count (m - g choices) never exceeds ours."""
    w = make()
    V, n = w.config.d_vocab, w.config.n_ctx
    truth = models.truth_mask(w)
    best = torch.ones(V, V, n, dtype=torch.int64)
    found = torch.zeros(V, V, n, dtype=torch.bool)
    for g in range(1, V + 1):
        lw = pr.paper_rule_lw(w, torch.full((V, V, n), g), fix_delta=True, fix_endpoint=True)
        new = (lw < 0) & ~found
        best[new] = g
        found |= new
    lw = pr.paper_rule_lw(w, best, fix_delta=True, fix_endpoint=True)
    paper = pr.paper_claims(w, best, fix_delta=True, fix_endpoint=True)
    assert not bool((paper & ~truth).any())
    ours = models.assert_sound(BY[EXACT], w, truth)
    assert ours.correct_count >= int(paper.sum()) >= pr.paper_count(lw < 0, best, n)


@pytest.mark.parametrize("V,n", [(2, 2), (5, 3), (7, 4), (64, 4), (64, 10), (64, 20)])
def test_count_fix_partitions_all_inputs(V, n):
    """All keys proven with gap 1: our count is exactly V^n; the paper's m - g count is capped
    (0.9539 for V 64, n 4, reference-algorithms §8.7)."""
    gaps = torch.ones(V, V, n - 1, dtype=torch.int64)
    proven = bounds.valid(gaps)
    assert count.count(torch.ones(V, dtype=torch.bool), proven, gaps) == V**n
    if (V, n) == (64, 4):
        full = torch.ones(V, V, n, dtype=torch.bool)
        cap = pr.paper_count(full, torch.ones(V, V, n, dtype=torch.int64), n) / V**n
        assert abs(cap - 0.9539) < 1e-4


def test_expand_matches_count():
    w = models.planted_weights(6, 5)
    for name in (EXACT, "EUPUMaxDiffAttnDropAverageQueryPerOutputLogitReasoningAttnErrSvd"):
        v = BY[name].check(w, BY[name].search(w), Ops())
        assert int(v.expand().sum()) == v.correct_count > 0


# --------------------------------------------------------------------- bad certificates
def test_garbage_certificates_stay_sound():
    """Random directions, random gaps and a random reference attention only loosen the bound."""
    w, truth = models.random_weights(6, 4, seed=3, qk_scale=4.0), None
    truth = models.truth_mask(w)
    g = torch.Generator().manual_seed(5)
    for s in subcubic.STRATEGIES[::7]:

        def bad_search(w, s=s):
            cert = dict(s.search(w))
            for k, v in cert.items():
                if k == "gaps":
                    cert[k] = torch.randint(1, 7, v.shape, generator=g)
                else:
                    cert[k] = torch.randn(v.shape, generator=g, dtype=torch.float64)
            return cert

        bad = Strategy(s.name, s.family, s.complexity, bad_search, s.check, s.unexplained_dim)
        models.assert_sound(bad, w, truth)


@pytest.mark.parametrize(
    "forge", [("constant", 1e100), ("constant", 1e300), ("scaled", 1e140), ("scaled", 1e152)]
)
def test_huge_certificate_vectors_stay_sound_and_terminate(forge):
    """A forged certificate's finite but huge vectors (constant, or the search's own scaled up)
    make some bounds infinite: every variant must still finish (the square root of an infinite
    radius once looped forever) and stay sound (an infinite sigma bound was once replaced by
    1e300, no bound at all)."""
    how, value = forge
    import signal

    w = models.random_weights(4, 3, 4, seed=0)
    truth = models.truth_mask(w)

    def too_slow(*args):
        raise TimeoutError("a check ran for more than 60 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        for s in subcubic.STRATEGIES[:: 3 if how == "constant" else 1]:

            def forged(w, s=s):
                cert = dict(s.search(w))
                if how == "scaled":
                    return {k: v if k == "gaps" else v * value for k, v in cert.items()}
                return {k: v if k == "gaps" else torch.full_like(v, value) for k, v in cert.items()}

            forged_strategy = Strategy(
                s.name, s.family, s.complexity, forged, s.check, s.unexplained_dim
            )
            models.assert_sound(forged_strategy, w, truth)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_malformed_certificates_are_refused():
    w = models.random_weights(5, 3, seed=0)
    s = BY[EXACT]
    cert = s.search(w)
    for bad in ({**cert, "gaps": cert["gaps"] * 0}, {**cert, "gaps": cert["gaps"][:2]}):
        with pytest.raises(ProofPreconditionError):
            s.check(w, bad, Ops())
    with pytest.raises(ProofPreconditionError):
        s.check(w, {**cert, "avg": cert["avg"] * math.nan}, Ops())


# ------------------------------------------------------------------ the paper's models
@pytest.mark.slow
def test_paper_model_beats_the_papers_best_subcubic(paper_model):
    w = paper_model(50)
    s = BY["EUPUMaxDiffExactAttnMeanQueryDiffAttnErrExactEqkeMaxDiffExact"]
    bound = s.check(w, s.search(w), Ops()).correct_count / 64**4
    assert bound > 0.75  # the paper's best subcubic: 0.700 +- 0.036 (normalised, Table 1)
