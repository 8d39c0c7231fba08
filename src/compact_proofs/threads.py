"""Torch intra-op threads for the proofs.

Most proofs' searches and checks are many small tensor operations. On an idle 2-core machine
two threads make them only 0.9 - 1.3x faster (adaptive, 8 paper seeds of Max-of-4), and when
the cores are shared with other work (another sweep, a training run) OpenMP's thread barriers
make them 2 - 40x slower. Brute force is a few large tensor operations: two threads make it
1.3 - 1.8x faster on an idle machine and no slower on a busy one (Max-of-4 seed 123 beside one
busy core: 0.56 - 0.65 s with two threads, 0.65 - 0.75 s with one).

So each strategy names its default (``Strategy.threads``): 1, or ``TORCH_DEFAULT`` (torch's
own setting, all cores unless set otherwise) for brute force. Callers may override it for every
strategy. Sweeps scale out with processes (``--jobs``) or Dask.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from compact_proofs.errors import UserError

TORCH_DEFAULT = 0  # leave torch's thread count as it is


def resolve(threads: int | None, strategy_threads: int) -> int:
    """The thread count to use: the caller's ``threads``, or the strategy's own when None."""
    return strategy_threads if threads is None else threads


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` torch intra-op threads (``TORCH_DEFAULT``: torch's current
    setting), restoring the previous count afterwards."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UserError(
            f"threads must be a positive integer, or 0 for torch's own setting; got {threads!r}"
        )
    if threads == TORCH_DEFAULT:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
