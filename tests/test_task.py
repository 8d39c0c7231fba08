"""Max-of-K truth, enumeration order, the paper's data stream and its derived seeds."""

import itertools

import pytest
import torch

from compact_proofs import task
from compact_proofs.config import TrainConfig, reseed


def test_reseed_check_values():
    # reference-algorithms §1.5 (613947648 is hard-coded in the paper's repository).
    assert reseed(123, "model") == 613947648
    cfg = TrainConfig(seed=123)
    assert (cfg.model_seed, cfg.dataset_seed, cfg.train_seed, cfg.test_seed) == (
        613947648,
        1914904320,
        3402695680,
        3741094656,
    )
    cfg50 = TrainConfig(seed=50)
    assert (cfg50.model_seed, cfg50.dataset_seed) == (736526336, 1372813824)


@pytest.mark.parametrize("V,n", [(3, 2), (5, 3), (2, 5)])
def test_all_inputs_order_matches_digit_expansion(V, n):
    got = task.all_inputs(V, n)
    assert got.shape == (V**n, n)
    # Independent truth: itertools.product varies the LAST coordinate fastest, and position 0
    # is the least significant digit, so reverse each product tuple.
    want = torch.tensor([tuple(reversed(t)) for t in itertools.product(range(V), repeat=n)])
    assert torch.equal(got, want)


def test_index_to_tokens_examples_and_range():
    toks = task.index_to_tokens(torch.tensor([0, 1, 7, 10 * 7 + 3]), 10, 3)
    assert toks.tolist() == [[0, 0, 0], [1, 0, 0], [7, 0, 0], [3, 7, 0]]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 64**4, (1000,), generator=g)
    toks = task.index_to_tokens(idx, 64, 4)
    assert torch.equal((toks * 64 ** torch.arange(4)).sum(-1), idx)
    with pytest.raises(ValueError, match="must lie in"):
        task.index_to_tokens(torch.tensor([64**4]), 64, 4)
    with pytest.raises(ValueError, match="too many"):
        task.all_inputs(64, 5)


def test_max_labels():
    toks = torch.tensor([[3, 1, 2], [0, 0, 0], [5, 9, 9]])
    assert task.max_labels(toks).tolist() == [3, 0, 9]


def test_sample_batch_is_the_per_sample_stream():
    """One (n, K) randint call gives exactly the paper's one-call-per-sample stream."""
    for V, n in ((64, 4), (6, 3), (512, 20)):
        g1 = torch.Generator().manual_seed(3402695680)
        g2 = torch.Generator().manual_seed(3402695680)
        for size in (128, 7):  # consecutive batches: the generator state must agree too
            a, la = task.sample_batch(g1, V, n, size)
            literal = torch.stack([torch.randint(0, V, (n,), generator=g2) for _ in range(size)])
            assert torch.equal(a, literal)
            assert torch.equal(la, literal.max(dim=-1).values)
        b, _ = task.sample_batch_per_sample(torch.Generator().manual_seed(3402695680), V, n, 135)
        c, _ = task.sample_batch(torch.Generator().manual_seed(3402695680), V, n, 135)
        assert torch.equal(b, c)


def test_training_stream_uses_train_seed_and_fresh_generator():
    cfg = TrainConfig(seed=123, steps=3, batch_size=5)
    batches = list(task.training_stream(cfg.train_seed, 64, 4, cfg.batch_size, cfg.steps))
    assert len(batches) == 3
    g = torch.Generator().manual_seed(3402695680)
    first = torch.stack([torch.randint(0, 64, (4,), generator=g) for _ in range(5)])
    assert torch.equal(batches[0][0], first)
    again = list(task.training_stream(cfg.train_seed, 64, 4, cfg.batch_size, cfg.steps))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(batches, again, strict=True))
