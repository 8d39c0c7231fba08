"""Rigorous per-input verdicts for arbitrary token batches: the float64 test of ``eval_batch``,
then the exact (python-flint) decision of whatever it leaves open. Used for the near-ties of the
exact enumeration and for every input of the sampled estimate.

Shape glossary: ``batch`` inputs, ``n_ctx`` positions.
"""

import threading
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from compact_proofs import accuracy_tables as at
from compact_proofs.errors import UserError
from compact_proofs.exact_tie import ExactModel, exact_cost
from compact_proofs.weights import Weights

BATCH_ELEMS = 1 << 20  # float64 elements of the [batch, n_ctx, d_vocab] value block (8 MiB)


@dataclass(frozen=True)
class Decisions:
    """Verdicts for a batch: ``correct`` and ``tie`` are disjoint; the rest are incorrect."""

    correct: Bool[Tensor, " batch"]
    tie: Bool[Tensor, " batch"]
    n_exact: int  # inputs that needed the exact stage
    flops: int


def batch_size(n: int, V: int) -> int:
    return max(1, BATCH_ELEMS // (n * V))


class Decider:
    """Decides inputs of one model; keeps the exact model (and its row cache) between calls."""

    def __init__(self, weights: Weights, tables: at.Tables):
        self.weights = weights
        self.tables = tables
        self.consts = at.f64_constants(tables)
        self._exact: ExactModel | None = None
        self._lock = threading.Lock()

    def __call__(self, tokens: Int[Tensor, "batch n_ctx"]) -> Decisions:
        """Exact verdict (correct / tie / incorrect) of every input in ``tokens``."""
        t = self.tables
        V, n = t.d_vocab, t.n_ctx
        tokens = tokens.to(torch.int64)
        N = tokens.shape[0]
        correct = torch.zeros(N, dtype=torch.bool)
        tie = torch.zeros(N, dtype=torch.bool)
        flops = 0
        todo: list[tuple[int, list[int], list[int]]] = []
        B = batch_size(n, V)
        for s in range(0, N, B):
            toks = tokens[s : s + B]
            ev = at.eval_batch(t, self.consts, toks)
            pos, neg = ev.positive(), ev.negative()
            all_pos, any_neg = pos.all(dim=1), neg.any(dim=1)
            flops += at.eval_flops(toks.shape[0], n, V)
            correct[s : s + toks.shape[0]] = all_pos
            for b in (~all_pos & ~any_neg).nonzero(as_tuple=True)[0].tolist():
                xs = (~pos[b]).nonzero(as_tuple=True)[0].tolist()
                todo.append((s + b, toks[b].tolist(), xs))
        if todo:
            with self._lock:  # one exact model (and row cache) per Decider, shared by threads
                if self._exact is None:
                    self._exact = ExactModel(self.weights)
            em = self._exact
            rows_before, n_terms = len(em.rows_cache), 0
            for i, toks, xs in todo:
                v = em.verdict(toks, xs)
                n_terms += len(xs)
                correct[i] = v > 0
                tie[i] = v == 0
            d = int(self.weights.W_E.shape[1])
            flops += exact_cost(n, d, V, len(em.rows_cache) - rows_before, n_terms)
        return Decisions(correct=correct, tie=tie, n_exact=len(todo), flops=flops)


def margins(weights: Weights, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, " batch"]:
    """Computed float64 ``logit(m) - max_{x != m} logit(x)`` per input (diagnostics only: not a
    rigorous verdict; use ``exact.correct_mask`` or ``Decider`` for that)."""
    from compact_proofs.core.rigorous import Ops

    t = at.build_tables(weights, Ops())
    tokens = torch.as_tensor(tokens, dtype=torch.int64)
    if tokens.ndim != 2 or tokens.shape[1] != t.n_ctx:
        raise UserError(f"tokens must have shape [batch, {t.n_ctx}], got {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= t.d_vocab):
        raise UserError(f"tokens must lie in [0, {t.d_vocab})")
    consts = at.f64_constants(t)
    out = []
    for s in range(0, tokens.shape[0], batch_size(t.n_ctx, t.d_vocab)):
        ev = at.eval_batch(t, consts, tokens[s : s + batch_size(t.n_ctx, t.d_vocab)])
        out.append(ev.diff.min(dim=1).values / ev.Z)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
