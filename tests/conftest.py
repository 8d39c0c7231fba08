"""Shared fixtures: tiny models for the soundness harness, built once per session.

``soundness_model(name)`` returns ``(weights, truth)`` for a name in ``models.CATALOGUE``
(trained, random, planted and adversarial near-tie models), caching the weights and the
independent per-input truth so that every strategy reuses them.
"""

import models
import pytest


@pytest.fixture(scope="session")
def soundness_model():
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            w = models.CATALOGUE[name]()
            cache[name] = (w, models.truth_mask(w))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def paper_model():
    """``paper_model(seed)``: the Max-of-4 (d_vocab 64) model of that paper seed, trained here with
    the paper's recipe (about 15 s each), cached for the session. For slow tests."""
    from compact_proofs import api

    cache: dict[int, object] = {}

    def get(seed: int):
        if seed not in cache:
            cache[seed] = api.train_model(k=4, seed=seed)[0]
        return cache[seed]

    return get
