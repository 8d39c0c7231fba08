"""The soundness contract, input by input, for every registered strategy (style.md §3.8).

Every strategy in ``compact_proofs.proofs.registry.STRATEGIES`` is run on each small model of
``models.CATALOGUE``: trained (fully and partially), random (several scales, sharp attention),
planted Max-of-K models, and adversarial models with inputs a hair (1e-9 .. 1e-16) on either
side of a tie. For each, ``models.assert_sound`` checks
``mask.sum() == correct_count <= exact count`` and that every input the proof covers is truly
correct (independent float64 + python-flint truth).

The second half shows the harness has teeth: deliberately broken checkers are caught.
"""

import models
import pytest
import torch

from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs import cubic, subcubic
from compact_proofs.proofs.protocol import Strategy
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.weights import Weights

_ALL = dict(STRATEGIES)


# The 100 subcubic variants run on these catalogue models by default; the full product of the
# variants with every catalogue model (~2.5 min) is marked slow. Every other strategy (the near
# tier too) runs on every catalogue model by default.
SUBCUBIC_FAST_MODELS = ("trained-V8-K3", "neartie-planted-V7-K4", "random-V6-K4-sharp")
VARIANT_NAMES = {s.name for s in subcubic.STRATEGIES}


def _cases():
    for strategy in _ALL.values():
        for model_name in models.CATALOGUE:
            slow = strategy.name in VARIANT_NAMES and model_name not in SUBCUBIC_FAST_MODELS
            yield pytest.param(
                strategy,
                model_name,
                marks=[pytest.mark.slow] if slow else [],
                id=f"{strategy.name}-{model_name}",
            )


@pytest.mark.parametrize("strategy,model_name", list(_cases()))
def test_sound(strategy: Strategy, model_name: str, soundness_model):
    weights, truth = soundness_model(model_name)
    models.assert_sound(strategy, weights, truth)


FUZZ_STRATEGIES = (
    "brute-force",
    "cubic",
    "adaptive",
    "adaptive-budget-2e7",
    "EUPUMaxDiffExactAttnMeanQueryDiffAttnErrExactEqkeMaxDiffExact",
    "subcubic-near-tier",
    "EUPUGlobalMaxDiffExactAttnDropAverageQueryPerOutputLogitReasoningAttnErrSvd",
    "EUPUMeanQueryMaxDiffAttnMeanQueryDiffAttnErrMeanMaxDiffSubproductRecursive",
)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100))
def test_sound_on_random_models(seed):
    """Beyond the catalogue: 100 more random small models (shapes and scales drawn from the
    seed), each through brute force, cubic, adaptive (exact and budgeted), three subcubic
    variants of different groups and the near tier, input by input. (A 30-minute run of this
    kind, over 2,433 models with randomly chosen subcubic variants, found no violation.)"""
    w = models.random_small_model(seed)
    truth = models.truth_mask(w)
    for name in FUZZ_STRATEGIES:
        models.assert_sound(_ALL[name], w, truth)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_sound_on_models_with_exact_ties(seed):
    """Models in which one token duplicates another (``models.exact_ties_model``): every input
    whose max is either of the two is an exact tie, so wrong; each strategy above proves none
    of them, and the adaptive proof still reaches the exact count."""
    w = models.exact_ties_model(seed)
    truth = models.truth_mask(w)
    V, n = w.config.d_vocab, w.config.n_ctx
    tokens = models.all_tokens(V, n)
    top = tokens.max(dim=1).values
    assert not bool(truth[(top == V - 2) | (top == V - 3)].any())  # all ties: all wrong
    for name in FUZZ_STRATEGIES:
        verdict = models.assert_sound(_ALL[name], w, truth)
        if name == "adaptive":
            assert verdict.correct_count == int(truth.sum())


def test_near_tie_construction_hits_its_targets():
    """The adversarial models really put inputs within ~1e-20 of the requested margins."""
    w = models.planted_weights(7, 4)
    for toks, target in (([2, 2, 2, 3], 1e-12), ([5, 5, 5, 6], -1e-16)):
        w2 = models.near_tie(w, toks, target)
        margin = models.exact_margin(w2, toks)
        assert abs(float(margin.mid()) - target) < 1e-20
        assert models.decide_correct(w2, toks) == (target > 0)


def test_truth_matches_float64_away_from_ties():
    """The independent truth agrees with a plain float64 argmax wherever margins are large."""
    w = models.random_weights(6, 3, seed=11)
    tokens = models.all_tokens(6, 3)
    logits = models.naive_last_logits(w, tokens)
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-6
    argmax_ok = logits.argmax(dim=1) == tokens.max(dim=1).values
    assert torch.equal(models.truth_mask(w)[clear], argmax_ok[clear])


def test_truth_is_exact_when_float64_rounds_the_attention_scores():
    """Scores near 1e16 whose exact difference is 1: float64 makes it 2, which flips input
    (token 1, token 0) to correct by a margin far beyond logit-level rounding. The truth must
    escalate such inputs to exact arithmetic (found by an adversarial review)."""

    def f(a):
        return torch.tensor(a, dtype=torch.float64).float()

    w = Weights(
        W_E=f([[1e8, 0, 0, 1], [1e8, 0, 1, 1]]),  # dim 2: the token's value, dim 3: constant
        W_pos=f([[0, 1, 0, 0], [0, 0, 0, 0]]),  # dim 1 tags position 0
        W_Q=f([[1], [0], [0], [0]]),  # q = 1e8
        W_K=f([[1], [1e-8], [0], [0]]),  # exact score difference between the positions: 1
        W_V=f([[0], [0], [1], [0]]),
        W_O=f([[0, 0, 1, 0]]),
        W_U=f([[0, 0], [0, 0], [-1, 1], [0.8, -0.8]]),  # logit 1 - logit 0 = 2 a_0 value - 1.6
    )
    naive = models.naive_last_logits(w, torch.tensor([[1, 0]]))[0]
    assert naive[1] > naive[0]  # float64 alone calls input (1, 0) correct ...
    assert not models.decide_correct(w, [1, 0])  # ... exactly it is not: 2 sigmoid(1) < 1.6
    truth = models.truth_mask(w)
    expected = [models.decide_correct(w, t) for t in models.all_tokens(2, 2).tolist()]
    assert truth.tolist() == expected and int(truth.sum()) == 3
    for name in ("brute-force", "cubic", "adaptive"):
        models.assert_sound(STRATEGIES[name], w, truth)


# ------------------------------------------------------------------- broken checkers are caught
class NoMarginOps(Ops):
    """Decides on the float value alone: the rounding margin removed."""

    def proven_negative(self, a, label="decide"):
        self.upper(a, label=label)
        return a.mid < 0


class FlippedOps(Ops):
    """Every max becomes a min: the pessimal choices (placements, outputs) flipped."""

    def amax(self, a, dim, label="max"):
        return Ops.amin(self, a, dim, label=label)


def _broken(name: str, check) -> Strategy:
    s = cubic.STRATEGY
    return Strategy(name, s.family, s.complexity, s.search, check, s.unexplained_dim)


def _no_positions(w: Weights) -> Weights:
    return Weights(
        W_E=w.W_E,
        W_pos=torch.zeros_like(w.W_pos),
        W_Q=w.W_Q,
        W_K=w.W_K,
        W_V=w.W_V,
        W_O=w.W_O,
        W_U=w.W_U,
    )


BROKEN = {
    "no-rounding-margin": _broken(
        "cubic-no-margin", lambda w, c, ops: cubic.check(w, c, NoMarginOps(ops.ledger))
    ),
    "flipped-max": _broken(
        "cubic-flipped", lambda w, c, ops: cubic.check(w, c, FlippedOps(ops.ledger))
    ),
    "drops-positional-term": _broken(
        "cubic-no-pos", lambda w, c, ops: cubic.check(_no_positions(w), c, ops)
    ),
}


def _rounding_candidates():
    """Planted models with one class wrong by 1e-17 .. 4e-16: far below float64 resolution of
    the logits, so a checker without rounding margins claims some of them."""
    base = models.planted_weights(7, 4)
    for m, k in ((3, 1), (3, 2), (4, 2), (5, 1), (5, 3), (6, 2)):
        for eps in (1e-17, 1e-16, 4e-16):
            yield models.near_tie(base, [k, k, k, m], -eps)


CANDIDATES = {
    "no-rounding-margin": _rounding_candidates,
    "flipped-max": lambda: [models.random_weights(6, 4, seed=3, qk_scale=4.0)],
    "drops-positional-term": lambda: [
        models.random_weights(5, 4, seed=s, pos_scale=4.0, qk_scale=2.0) for s in range(6)
    ],
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_harness_catches_broken_checker(kind):
    """Some candidate model makes the harness reject the broken checker (the real checker
    passes on every candidate tried)."""
    for w in CANDIDATES[kind]():
        truth = models.truth_mask(w)
        models.assert_sound(cubic.STRATEGY, w, truth)
        try:
            models.assert_sound(BROKEN[kind], w, truth)
        except AssertionError:
            return
    pytest.fail(f"the harness never caught the {kind} checker")
