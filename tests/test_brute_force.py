"""The brute-force strategy: exact counts against the independent truth, near ties, FLOPs equal
to the evaluator's closed form, and its metadata."""

import models
import pytest

from compact_proofs.config import ModelConfig
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs import brute_force

exact = pytest.importorskip("compact_proofs.exact")

MODELS = {
    "random-V7-K3": lambda: models.random_weights(7, 3, seed=1),
    "sharp-V5-K4": lambda: models.random_weights(5, 4, seed=2, qk_scale=8.0, pos_scale=2.0),
    "planted-V6-K4": lambda: models.planted_weights(6, 4, noise=0.05, pos_noise=0.3, seed=1),
    "near-ties": lambda: models.near_tie(
        models.near_tie(models.planted_weights(6, 3), [2, 2, 5], -1e-15), [1, 3, 4], 1e-15
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_count_and_mask(name):
    w = MODELS[name]()
    truth = models.truth_mask(w)
    v = models.assert_sound(brute_force.STRATEGY, w, truth)  # count == truth, mask within truth
    assert v.correct_count == int(truth.sum())
    assert v.details["incorrect"] + v.details["ties"] + v.correct_count == w.config.n_inputs


@pytest.mark.parametrize("name", list(MODELS))
def test_flops_equal_evaluator_closed_form(name):
    w = MODELS[name]()
    ops = Ops()
    v = brute_force.check(w, {}, ops)
    recheck = ops.ledger.by_label.get(exact.RECHECK_LABEL, 0)
    assert ops.ledger.flop - recheck == exact.exact_accuracy_flops(w.config, v.details["n_refined"])


def test_metadata_and_certificate():
    s = brute_force.STRATEGY
    assert s.name == "brute-force" and s.search(models.random_weights(3, 2, seed=0)) == {}
    assert s.unexplained_dim(ModelConfig(d_vocab=64, n_ctx=4)) == 2**30
    assert s.max_inputs is not None and s.max_inputs >= 64**4
    with pytest.raises(ProofPreconditionError):
        s.check(models.random_weights(3, 2, seed=0), {"bogus": 1}, Ops())
