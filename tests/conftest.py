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
