"""Counting the covered inputs (reference-algorithms §8.7 with the §13.4 fix) and expanding them
into an input mask for small models.

Claim: the inputs with query q, max m and c non-max tokens (c counts the query when q != m) whose
non-max tokens are all <= m - g number C(n-1, c') (m - g + 1)^c' with c' = c (q = m) or c - 1
(q != m, the query being one of them and fixed): the c' non-max non-query positions are chosen
among the n-1 non-query ones and each takes one of the m - g + 1 values 0 .. m - g. Different
(q, m, c) describe disjoint sets of inputs (q, m, c are functions of the input), and with
g = 1 everywhere the sets partition all V^n inputs (sum_c C(n-1, c) m^c = (m+1)^(n-1) for q = m,
(m+1)^(n-1) - m^(n-1) for q < m, summed over q <= m gives (m+1)^n - m^n, over m V^n). The c = 0
key of m is the single input (m, ..., m). Counts are exact Python ints.               QED
"""

import math

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.ledger import FlopLedger


def count(
    proven0: Bool[Tensor, " d_vocab_max"],
    proven: Bool[Tensor, "d_vocab_q d_vocab_max n_c"],
    gaps: Int[Tensor, "d_vocab_q d_vocab_max n_c"],
) -> int:
    """sum of proven0 + sum over proven keys of C(n-1, c') (m - g + 1)^c'."""
    V, _, n_c = proven.shape
    n = n_c + 1
    total = int(proven0.sum())
    m = torch.arange(V).view(1, V).expand(V, V)
    isq = torch.arange(V)[:, None] == torch.arange(V)[None, :]
    for ci in range(n_c):
        c = ci + 1
        for on_diag, cp in ((True, c), (False, c - 1)):
            sel = proven[:, :, ci] & (isq if on_diag else ~isq)
            base = (m - gaps[:, :, ci] + 1)[sel]
            values, mult = torch.unique(base, return_counts=True)
            pairs = zip(values.tolist(), mult.tolist(), strict=True)
            inner = sum(int(k) * int(v) ** cp for v, k in pairs)
            total += math.comb(n - 1, cp) * inner
    return total


def n_keys(V: int, n: int) -> int:
    """Keys with c >= 1 over all q <= m, plus the V single inputs."""
    return V * (V + 1) // 2 * (n - 1) + V


def tally_int_ops(ledger: FlopLedger, V: int, n: int) -> None:
    """The paper's integer work: one ``count_sequences`` per key, (n - 1) + 3 + 1 int ops and
    2 branches."""
    ledger.add(int_op=n_keys(V, n) * ((n - 1) + 3 + 1), branch=2 * n_keys(V, n), label="count")


def covered_mask(
    proven0: Bool[Tensor, " d_vocab_max"],
    proven: Bool[Tensor, "d_vocab_q d_vocab_max n_c"],
    gaps: Int[Tensor, "d_vocab_q d_vocab_max n_c"],
    chunk: int = 1 << 20,
) -> Bool[Tensor, " n_inputs"]:
    """Inputs covered by the proof, in the paper's index order (token j = (i // V^j) % V)."""
    V, _, n_c = proven.shape
    n = n_c + 1
    total = V**n
    out = torch.empty(total, dtype=torch.bool)
    powers = V ** torch.arange(n, dtype=torch.int64)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(total, start + chunk), dtype=torch.int64)
        t = (idx[:, None] // powers) % V
        q, m = t[:, -1], t.max(dim=1).values
        nonmax = t < m[:, None]
        c = nonmax.sum(dim=1)
        ci = (c - 1).clamp(min=0)
        g = gaps[q, m, ci]
        ok = proven[q, m, ci] & (torch.where(nonmax, t, -1) <= (m - g)[:, None]).all(dim=1)
        out[start : start + idx.numel()] = torch.where(c == 0, proven0[m], ok)
    return out
