"""Proofs run with the requested number of torch threads (one by default) and leave torch's
setting as it was."""

import dataclasses

import pytest
import torch
from models import random_weights

from compact_proofs import api, certificates
from compact_proofs.errors import UserError
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.threads import DEFAULT_THREADS


def _recording(seen: list[int]):
    """The cubic strategy, noting torch's thread count in its search and its check."""
    cubic = STRATEGIES["cubic"]

    def search(w):
        seen.append(torch.get_num_threads())
        return cubic.search(w)

    def check(w, cert, ops):
        seen.append(torch.get_num_threads())
        return cubic.check(w, cert, ops)

    return dataclasses.replace(cubic, search=search, check=check)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads, inside", [(None, 2), (1, 1), (3, 3)])
def test_prove_one_uses_the_requested_threads_and_restores(threads, inside, two_threads):
    w = random_weights(5, 3, seed=0)
    seen: list[int] = []
    api.prove_one(w, _recording(seen), threads=threads)
    assert seen == [inside, inside]
    assert torch.get_num_threads() == 2


def test_the_default_is_one_thread_and_bad_counts_are_refused(two_threads):
    w = random_weights(5, 3, seed=0)
    seen: list[int] = []
    api.prove_one(w, _recording(seen))
    assert DEFAULT_THREADS == 1 and seen == [1, 1]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(UserError, match="threads must be a positive integer"):
            api.prove_one(w, _recording(seen), threads=bad)
        assert torch.get_num_threads() == 2


def test_check_certificate_uses_the_requested_threads(tmp_path, two_threads, monkeypatch):
    w = random_weights(5, 3, seed=0)
    path = tmp_path / "c.json"
    certificates.certify(w, "cubic", path)
    seen: list[int] = []
    monkeypatch.setitem(STRATEGIES, "cubic", _recording(seen))
    certificates.check_certificate(w, path, threads=3)
    certificates.check_certificate(w, path)
    assert seen == [3, 1] and torch.get_num_threads() == 2
