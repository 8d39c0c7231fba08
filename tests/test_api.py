"""The library entry points of ``compact_proofs.api``: strategies by name or as objects, result
order, and what happens when a proof exceeds an exact count."""

import dataclasses

import models
import pytest
import torch

import compact_proofs as cp
from compact_proofs import api, exact
from compact_proofs.errors import UnsupportedModelError, UserError
from compact_proofs.proofs.protocol import Verdict
from compact_proofs.proofs.registry import STRATEGIES


@pytest.fixture(scope="module")
def weights():
    w = models.trained_weights(6, 3, seed=4, steps=40)
    assert 0 < exact.exact_accuracy(w).correct < w.config.n_inputs  # room for a liar
    return w


def _claims_everything(w, certificate, ops) -> Verdict:
    ops.ledger.add(1, label="liar")
    return Verdict(w.config.n_inputs)


LIAR = dataclasses.replace(STRATEGIES["cubic"], name="liar", check=_claims_everything)


def test_strategy_objects_and_names_mix_each_once_in_the_given_order(weights):
    mine = dataclasses.replace(STRATEGIES["cubic"], name="my-cubic")
    results = cp.prove(weights, ["cubic", mine, "brute-force", "cubic", mine])
    assert [r.strategy for r in results] == ["cubic", "my-cubic", "brute-force"]
    truth = exact.exact_accuracy(weights).correct
    assert results[2].correct_count == truth  # brute force ran first: every result has the truth
    assert all(r.true_correct == truth for r in results)
    assert results[0].correct_count == results[1].correct_count <= truth
    [alone] = cp.prove(weights, mine)
    assert alone.strategy == "my-cubic" and alone.correct_count == results[1].correct_count


def test_a_bad_strategy_item_is_a_user_error(weights):
    with pytest.raises(UserError, match="a strategy must be a name or a Strategy, got a int"):
        cp.prove(weights, ["cubic", 3])
    with pytest.raises(UserError, match="unknown strategy 'nope'"):
        cp.prove(weights, "cubic,nope")


def test_a_proof_above_brute_force_is_reported_after_every_strategy_ran(weights):
    with pytest.raises(api.TruthConflict) as caught:
        cp.prove(weights, [LIAR, "cubic", "brute-force"])
    message = str(caught.value)
    truth = exact.exact_accuracy(weights).correct
    assert f"more than brute force's exact count ({truth:,})" in message
    assert message.endswith("either that count is wrong or liar is unsound")
    assert [r.strategy for r in caught.value.results] == ["liar", "cubic", "brute-force"]
    assert caught.value.results[0].correct_count == weights.config.n_inputs
    assert isinstance(caught.value, UserError)


def test_of_several_strategies_one_that_refuses_the_model_is_skipped_with_a_note():
    """Brute force refuses scores beyond 2^100 (its error analysis) and more than 2^30 inputs:
    asked alone it fails, among others it is left out and reported; all refusing fails."""
    huge = models.random_weights(5, 3, seed=1, qk_scale=2.0**55)
    with pytest.raises(UnsupportedModelError, match=r"exceed 2\^100"):
        cp.prove(huge, "brute-force")
    skipped = []
    results = cp.prove(huge, ["brute-force", "cubic"], on_skip=lambda *s: skipped.append(s))
    assert [r.strategy for r in results] == ["cubic"] and results[0].true_correct is None
    [(name, reason)] = skipped
    assert name == "brute-force" and "exceed 2^100" in reason
    with pytest.warns(UserWarning, match="brute-force skipped: .*exceed 2"):
        assert len(cp.prove(huge, "cubic,brute-force")) == 1
    renamed = dataclasses.replace(STRATEGIES["brute-force"], name="my-brute-force")
    with pytest.raises(UnsupportedModelError, match=r"exceed 2\^100"):  # no skip notes then
        cp.prove(huge, ["brute-force", renamed], on_skip=lambda *s: pytest.fail("noted"))
    large = models.random_weights(64, 6, seed=2)  # 64^6 inputs
    skipped.clear()
    results = cp.prove(large, ["brute-force", "cubic"], on_skip=lambda *s: skipped.append(s))
    assert [r.strategy for r in results] == ["cubic"]
    assert skipped == [("brute-force", skipped[0][1])] and "refuses d_vocab**n_ctx" in skipped[0][1]


def test_a_given_count_below_a_proof_is_reported(weights):
    [cubic] = cp.prove(weights, "cubic")
    with pytest.raises(api.TruthConflict, match=r"more than the given true count \(0\)"):
        cp.prove(weights, "cubic", true_correct=0)
    assert cubic.correct_count > 0
    # a count at or above every proof is accepted and normalises
    [again] = cp.prove(weights, "cubic", true_correct=cubic.correct_count)
    assert again.normalized_bound == 1.0


def test_prove_and_accuracy_take_a_config_for_a_foreign_checkpoint(weights, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(weights.to_state_dict(), path)
    config = {
        "n_layers": 1,
        "n_heads": 1,
        "d_model": weights.config.d_model,
        "d_head": weights.config.d_head,
        "d_vocab": weights.config.d_vocab,
        "n_ctx": weights.config.n_ctx,
        "attn_only": True,
        "normalization_type": None,
    }
    assert cp.accuracy(path, config=config)["correct"] == exact.exact_accuracy(weights).correct
    [res] = cp.prove(path, "cubic", config=config)
    assert res.model_sha256 == weights.sha256()


def test_certify_and_check_take_a_config_for_a_foreign_checkpoint(weights, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(weights.to_state_dict(), path)
    config = {"n_layers": 1, "n_heads": 1, "d_model": weights.config.d_model,
              "d_head": weights.config.d_head, "d_vocab": weights.config.d_vocab,
              "n_ctx": weights.config.n_ctx, "attn_only": True,
              "normalization_type": None}  # fmt: skip
    cert = tmp_path / "proof.json"
    made = cp.certify(path, "cubic", cert, config=config)
    assert made.model_sha256 == weights.sha256()
    confirmed = cp.check_certificate(path, cert, config=config)
    assert confirmed.correct_count == made.correct_count


def test_a_config_beside_a_model_object_and_a_bad_true_accuracy_are_refused(weights):
    with pytest.raises(UserError, match="config= is for checkpoint files only"):
        cp.prove(weights, "cubic", config={"n_layers": 1})
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(UserError, match=r"true accuracy must be in \(0, 1\]"):
            cp.prove(weights, "cubic", true_accuracy=bad)
    [r] = cp.prove(weights, "cubic", true_accuracy=0.5)
    assert r.normalized_bound == pytest.approx(r.accuracy_bound / 0.5)


def test_your_strategy_may_not_take_a_built_in_name_nor_share_one(weights):
    """Results and sweep files are stored by name: a modified "cubic" would pass for the real
    one, and two strategies with one name would overwrite each other."""
    impostor = dataclasses.replace(STRATEGIES["cubic"], check=_claims_everything)
    with pytest.raises(UserError, match="named 'cubic', a built-in strategy's name"):
        cp.prove(weights, [impostor])
    mine = dataclasses.replace(STRATEGIES["cubic"], name="mine")
    with pytest.raises(UserError, match="two different strategies are named 'mine'"):
        cp.prove(weights, [mine, dataclasses.replace(mine, family="other")])
    budget = "adaptive-budget-5e7"  # built on demand, but one object per name
    assert api.resolve_strategies([budget, budget]) == api.resolve_strategies(budget)
    every = api.resolve_strategies(["all", mine, "cubic"])
    assert [s.name for s in every] == [*STRATEGIES, "mine"]


def test_brute_force_below_a_given_count_is_reported(weights):
    truth = exact.exact_accuracy(weights).correct
    with pytest.raises(api.TruthConflict, match=f"brute force counts {truth:,} correct inputs"):
        cp.prove(weights, "brute-force,cubic", true_correct=truth + 1)
    [bf] = cp.prove(weights, "brute-force", true_correct=truth)
    assert bf.normalized_bound == 1.0


def test_the_package_exports_its_api_and_every_user_error():
    assert all(hasattr(cp, name) for name in cp.__all__)
    for exc in (cp.ModelFormatError, cp.UnsupportedModelError, cp.CertificateError):
        assert issubclass(exc, cp.UserError)
    assert issubclass(cp.TruthConflict, cp.UserError)
    with pytest.raises(cp.UserError, match="does not exist"):
        cp.prove("no/such/model")
