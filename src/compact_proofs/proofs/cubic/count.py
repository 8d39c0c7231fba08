"""Cubic proof, step (7): exact counting of the covered inputs (Python ints), and the covered-input
mask for small models. See the package docstring for the proof.
"""

import math

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.ledger import FlopLedger
from compact_proofs.proofs.cubic.cases import Chunk, n_triples


class KeyCounts:
    """Accumulates N[q, m, c] = #{k < m : key (q, m, k, c) proven} over chunks (int64, exact)."""

    def __init__(self, V: int, n: int):
        self.V, self.n = V, n
        self.N = torch.zeros(V * V, n, dtype=torch.int64)  # [(q, m), c]

    def add(self, ch: Chunk) -> None:
        V, n = self.V, self.n
        key = ch.q * V + ch.m
        if ch.proven.shape[1]:
            self.N[:, 1 : n - 1].index_add_(0, key, ch.proven.to(torch.int64))
        if ch.last_idx.numel():
            self.N[:, n - 1].index_add_(0, key[ch.last_idx], ch.proven_last.to(torch.int64))

    def total(self, proven0: Bool[Tensor, "d_vocab_q d_vocab_max"]) -> int:
        """sum over keys: [proven0[q, m]] for c = 0, C(n-1, c) N[q, m, c]^c for c >= 1.

        Valid keys: q <= m; c <= n-2 if q < m. N is 0 on invalid keys (nothing was added there),
        and proven0 is False for q > m, so summing over all entries is exact. Each distinct value
        of N is raised to the power once (a histogram over at most V + 1 values per c).
        """
        n = self.n
        count = int(proven0.sum())
        for c in range(1, n):
            values, mult = torch.unique(self.N[:, c], return_counts=True)
            pairs = zip(values.tolist(), mult.tolist(), strict=True)
            inner = sum(int(mult_v) * int(v) ** c for v, mult_v in pairs)
            count += math.comb(n - 1, c) * inner
        return count


def tally_int_ops(ledger: FlopLedger, V: int, n: int) -> None:
    """Integer work of counting, tallied as the paper does for one ``count_sequences`` call per
    key with c >= 1 ((n - 1) + 3 + 1 int ops, 2 branches), plus one int add per proven flag and
    per c = 0 key."""
    ledger.add(int_op=cubic_int_ops(V, n), branch=cubic_branches(V, n), label="cubic:count")


def _keys(V: int, n: int) -> int:
    """Keys with c >= 1: every q <= m pair for c = 1 .. n-2, plus q = m for c = n-1."""
    return V * (V + 1) // 2 * (n - 2) + V


def cubic_int_ops(V: int, n: int) -> int:
    flags = n_triples(V) * (n - 2) + V * (V - 1) // 2 + V * (V + 1) // 2
    return flags + _keys(V, n) * ((n - 1) + 3 + 1)


def cubic_branches(V: int, n: int) -> int:
    return _keys(V, n) * 2


class Covered:
    """Dense proof status for small models, to expand the covered set into an input mask."""

    def __init__(self, V: int, n: int):
        self.V, self.n = V, n
        self.proven = torch.zeros(V, V, V, n, dtype=torch.bool)  # [q, m, k, c], c >= 1

    def add(self, ch: Chunk) -> None:
        n = self.n
        for c in range(1, n - 1):
            self.proven[ch.q, ch.m, ch.k, c] = ch.proven[:, c - 1]
        d = ch.last_idx
        self.proven[ch.q[d], ch.m[d], ch.k[d], n - 1] = ch.proven_last

    def mask(
        self, proven0: Bool[Tensor, "d_vocab_q d_vocab_max"], chunk: int = 1 << 20
    ) -> Bool[Tensor, " n_inputs"]:
        """Inputs covered by the proof, in the paper's index order (token j = (i // V^j) % V).

        An input with query q, max m and c non-max non-query tokens is covered iff c = 0 and
        proven0[q, m], or c >= 1 and every non-max non-query token k has key (q, m, k, c) proven.
        """
        V, n = self.V, self.n
        total = V**n
        out = torch.empty(total, dtype=torch.bool)
        powers = V ** torch.arange(n, dtype=torch.int64)
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(total, start + chunk), dtype=torch.int64)
            tokens = (idx[:, None] // powers) % V  # [B, n]
            out[start : start + idx.numel()] = _covered(tokens, self.proven, proven0)
        return out


def _covered(
    tokens: Int[Tensor, "batch n_ctx"],
    proven: Bool[Tensor, "q m k c"],
    proven0: Bool[Tensor, "q m"],
) -> Bool[Tensor, " batch"]:
    q = tokens[:, -1]
    m = tokens.max(dim=1).values
    others = tokens[:, :-1]
    nonmax = others < m[:, None]
    c = nonmax.sum(dim=1)
    ok = ~nonmax | proven[q[:, None], m[:, None], others, c[:, None]]
    return torch.where(c == 0, proven0[q, m], ok.all(dim=1))
