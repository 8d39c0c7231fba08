"""Max-of-K: ground truth, input enumeration and the paper's training data stream
(reference-algorithms §1).

An input is a sequence of ``n_ctx`` tokens in ``{0, ..., d_vocab - 1}``; its label is the maximum
token. Inputs are numbered as in the paper's ``SequenceDataset``: index ``i`` has token
``(i // d_vocab**j) % d_vocab`` at position ``j`` (position 0 is the least significant digit).
"""

import torch
from jaxtyping import Int
from torch import Tensor

# Enumerating more inputs than this in one tensor is refused (Max-of-4 at d_vocab 64 is 2**24).
MAX_ENUMERATE = 2**26


def index_to_tokens(
    indices: Int[Tensor, " batch"], d_vocab: int, n_ctx: int
) -> Int[Tensor, "batch n_ctx"]:
    """Tokens of the inputs with the given indices (position 0 = least significant digit).

    Args:
        indices: int64 indices in ``[0, d_vocab**n_ctx)``.
        d_vocab: number of tokens.
        n_ctx: sequence length K.

    Returns:
        ``[batch, n_ctx]`` int64 tokens.

    Raises:
        ValueError: if an index is out of range.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64)
    total = d_vocab**n_ctx
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= total):
        raise ValueError(
            f"input indices must lie in [0, {total}) for d_vocab={d_vocab}, n_ctx={n_ctx}"
        )
    powers = d_vocab ** torch.arange(n_ctx, dtype=torch.int64)  # [n_ctx]
    return (indices[:, None] // powers) % d_vocab


def all_inputs(d_vocab: int, n_ctx: int) -> Int[Tensor, "n_inputs n_ctx"]:
    """All ``d_vocab**n_ctx`` inputs in index order (for small cases only).

    Raises:
        ValueError: if there are more than ``MAX_ENUMERATE`` inputs.
    """
    total = d_vocab**n_ctx
    if total > MAX_ENUMERATE:
        raise ValueError(
            f"d_vocab**n_ctx = {total} inputs is too many to enumerate at once "
            f"(limit {MAX_ENUMERATE}); "
            "use index_to_tokens on chunks of indices"
        )
    return index_to_tokens(torch.arange(total, dtype=torch.int64), d_vocab, n_ctx)


def max_labels(tokens: Int[Tensor, "batch n_ctx"]) -> Int[Tensor, " batch"]:
    """The Max-of-K label of each input: its largest token."""
    return tokens.max(dim=-1).values


def sample_batch(
    generator: torch.Generator, d_vocab: int, n_ctx: int, n: int
) -> tuple[Int[Tensor, "n n_ctx"], Int[Tensor, " n"]]:
    """The next ``n`` samples of the paper's training stream, and their labels.

    The paper's dataset draws each sample with its own ``torch.randint(0, d_vocab, (n_ctx,),
    generator=g)`` call and stacks them in order. torch's CPU integer sampler is a serial kernel
    that takes one 32-bit draw per element (for ranges below 2**32), so a single ``(n, n_ctx)``
    call yields exactly the same tokens and leaves the generator in the same state, at a fraction
    of the cost (384,000 separate calls take ~25 s). ``sample_batch_per_sample`` is the literal
    recipe; tests assert that the two agree. ``generator`` is advanced.

    Args:
        generator: a CPU ``torch.Generator`` (seeded with the train seed for the paper's stream).
        d_vocab: number of tokens (must be below 2**32).
        n_ctx: sequence length K.
        n: number of samples.

    Returns:
        ``(tokens [n, n_ctx] int64, labels [n] int64)``.
    """
    if d_vocab >= 2**32:
        raise ValueError("d_vocab must be below 2**32")
    tokens = torch.randint(0, d_vocab, (n, n_ctx), generator=generator)
    return tokens, max_labels(tokens)


def sample_batch_per_sample(
    generator: torch.Generator, d_vocab: int, n_ctx: int, n: int
) -> tuple[Int[Tensor, "n n_ctx"], Int[Tensor, " n"]]:
    """The paper's literal recipe: one ``randint`` call per sample, stacked (slow; for tests)."""
    samples = [torch.randint(0, d_vocab, (n_ctx,), generator=generator) for _ in range(n)]
    tokens = torch.stack(samples) if samples else torch.empty((0, n_ctx), dtype=torch.int64)
    return tokens, max_labels(tokens)


def training_stream(seed: int, d_vocab: int, n_ctx: int, batch_size: int, steps: int):
    """Yield the paper's ``steps`` training batches ``(tokens, labels)`` from a fresh generator.

    Args:
        seed: the train stream seed (``TrainConfig.train_seed``).
        d_vocab, n_ctx: task shape.
        batch_size, steps: ``steps`` batches of ``batch_size`` samples each.
    """
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield sample_batch(g, d_vocab, n_ctx, batch_size)
