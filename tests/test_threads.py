"""Proofs run with the requested number of torch threads (by default each strategy's own: one,
or torch's setting for brute force) and leave torch's setting as it was."""

import dataclasses

import pytest
import torch
from models import random_weights

from compact_proofs import api, certificates
from compact_proofs.errors import UserError
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.threads import TORCH_DEFAULT


def _recording(name: str, seen: list[int]):
    """Strategy ``name``, noting torch's thread count in its search and its check."""
    strategy = STRATEGIES[name]

    def search(w):
        seen.append(torch.get_num_threads())
        return strategy.search(w)

    def check(w, cert, ops):
        seen.append(torch.get_num_threads())
        return strategy.check(w, cert, ops)

    return dataclasses.replace(strategy, search=search, check=check)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "name, threads, inside",
    [
        ("cubic", None, 1),  # the strategy's own default
        ("brute-force", None, 2),  # brute force keeps torch's setting
        ("cubic", TORCH_DEFAULT, 2),
        ("brute-force", 1, 1),
        ("cubic", 3, 3),
    ],
)
def test_prove_one_uses_the_requested_threads_and_restores(name, threads, inside, two_threads):
    w = random_weights(5, 3, seed=0)
    seen: list[int] = []
    api.prove_one(w, _recording(name, seen), threads=threads)
    assert seen == [inside, inside]
    assert torch.get_num_threads() == 2


def test_each_strategy_names_its_default_and_bad_counts_are_refused(two_threads):
    assert STRATEGIES["brute-force"].threads == TORCH_DEFAULT
    assert {s.threads for n, s in STRATEGIES.items() if n != "brute-force"} == {1}
    w = random_weights(5, 3, seed=0)
    for bad in (-2, 1.5, True):
        with pytest.raises(UserError, match="threads must be a positive integer, or 0"):
            api.prove_one(w, _recording("cubic", []), threads=bad)
        assert torch.get_num_threads() == 2


def test_check_certificate_uses_the_requested_threads(tmp_path, two_threads, monkeypatch):
    w = random_weights(5, 3, seed=0)
    path = tmp_path / "c.json"
    certificates.certify(w, "cubic", path)
    seen: list[int] = []
    monkeypatch.setitem(STRATEGIES, "cubic", _recording("cubic", seen))
    certificates.check_certificate(w, path, threads=3)
    certificates.check_certificate(w, path)
    certificates.check_certificate(w, path, threads=TORCH_DEFAULT)
    assert seen == [3, 1, 2] and torch.get_num_threads() == 2
