"""Torch intra-op threads for the proofs.

A proof's search and check are mostly many small tensor operations. On an idle 2-core machine
two threads make them only 1.1 - 2.2x faster (the 8 paper seeds of Max-of-4: brute force
1.4 - 2.2x, adaptive 1.1 - 1.7x), but when the cores are shared with other work (another sweep,
a training run) OpenMP's thread barriers make them 10 - 40x slower. So proofs run
single-threaded unless asked otherwise; sweeps scale out with processes (``--jobs``) or Dask.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from compact_proofs.errors import UserError

DEFAULT_THREADS = 1


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` torch intra-op threads (None: torch's current setting),
    restoring the previous count afterwards."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a positive integer (or None), got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
