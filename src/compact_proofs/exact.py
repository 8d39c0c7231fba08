"""Exact, rounding-safe accuracy of the model over all d_vocab**n_ctx inputs.

An input t (query q = t[n-1], max m) is CORRECT iff, in exact real arithmetic with the float32
weights read as exact reals, logit(m) > logit(x) for every x != m (ties are wrong). Inputs are
indexed as in the paper: index i has token (i // V**j) % V at position j.

Method (see ``accuracy_tables`` for the tables and the error analysis):

1. Float32 screen of every input, one query token q at a time. The per-position terms
   B_p[k, x] = exp(S[q, p, k] - c_q) A[q, p, k, x] are tabulated, so the numerator
   N[x] = Z logit(x) = sum_p B_p[t_p, x] is an outer sum over positions: prefixes
   j = (t_0 .. t_{n-3}) get P[j, x] = B_{n-1}[q, x] + sum_{p<n-2} B_p[t_p, x], and the input
   (j, k = t_{n-2}) has N[x] = P[j, x] + C[k, x] with C = B_{n-2}. Its max token is
   m = max(a_j, k), a_j = max(q, t_0 .. t_{n-3}).
   a. Cheap bound, O(1) per input: max_{x != m} N[x] <= max_{x != m} P[j, x] + max_{x != m} C[k, x],
      both read off row-wise top-2 tables. This certifies ~99.8 % of a trained model's inputs.
   b. The rest: the exact largest wrong numerator from the V sums P[j, x] + C[k, x].
   Each margin is compared with a rigorous a-priori bound on its rounding error, proportional to
   the input's Z = sum_p w_p (``screen_constants``): a margin above it is certainly correct, one
   below minus it certainly incorrect.
2. Float64 re-check of the few inputs inside that band, with a per-input shift and a per-input,
   per-logit rigorous bound (``accuracy_tables.eval_batch``).
3. Exact decision with python-flint of the logits still undecided (``exact_tie``): exact ties are
   detected exactly (Lindemann-Weierstrass) and count as incorrect, reported as ``undecided``.

Cost: O(V^n) elementwise work plus O(V) per input left to step 1b, against O(V^(n+1) d) for a
forward pass per input. The query tokens are processed by a pool of threads, each running
single-threaded torch ops.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from compact_proofs import accuracy_screen as scr
from compact_proofs import accuracy_tables as at
from compact_proofs.accuracy_decide import Decider, Decisions
from compact_proofs.accuracy_decide import margins as margins
from compact_proofs.accuracy_sampled import SampledAccuracy as SampledAccuracy
from compact_proofs.accuracy_sampled import sampled_accuracy as sampled_accuracy
from compact_proofs.accuracy_screen import refine_flops as refine_flops
from compact_proofs.accuracy_screen import screen_flops as screen_flops
from compact_proofs.config import ModelConfig
from compact_proofs.core.ledger import FlopLedger
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import UserError
from compact_proofs.task import index_to_tokens
from compact_proofs.weights import Weights

Progress = Callable[[int, int], None] | None

MAX_PREFIX_ELEMS = 1 << 27  # d_vocab**(n_ctx-1) float32 prefix table per query: at most 512 MiB
MASK_LIMIT = 1 << 24
SCREEN_LABEL = "accuracy-screen"
REFINE_LABEL = "accuracy-refine"
RECHECK_LABEL = "recheck"


class TooLargeError(UserError):
    """The model has too many inputs for exhaustive evaluation."""


@dataclass(frozen=True)
class ExactAccuracy:
    """Exact verdict counts over all inputs.

    ``undecided`` counts exact ties (and, in principle, sums not decided within the precision cap,
    which never happened in testing); they are not correct. ``n_near_ties_resolved`` counts inputs
    the float32 screen could not decide that the float64 or exact stage then decided;
    ``n_exact`` counts those that needed the exact (flint) stage; ``n_refined`` counts inputs
    whose largest wrong logit the screen computed exactly because the cheap bound did not
    certify them (it enters ``exact_accuracy_flops``).
    """

    correct: int
    incorrect: int
    undecided: int
    total: int
    seconds: float
    n_near_ties_resolved: int
    n_exact: int
    n_refined: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def _check_size(cfg: ModelConfig) -> None:
    if cfg.d_vocab ** (cfg.n_ctx - 1) > MAX_PREFIX_ELEMS:
        raise TooLargeError(
            f"d_vocab**n_ctx = {cfg.n_inputs:.3g} inputs is too many to enumerate exactly; "
            "use sampled_accuracy (compact-proofs accuracy --sampled)"
        )


def exact_accuracy_flops(cfg: ModelConfig, n_refined: int = 0) -> int:
    """FLOPs of ``exact_accuracy`` outside the near-tie re-check: tables, screen, and the exact
    largest-wrong-logit step of the ``n_refined`` inputs the cheap bound did not certify
    (``ExactAccuracy.n_refined``). Near-tie re-checks are charged to the ``"recheck"`` label."""
    return (
        at.tables_flops(cfg.d_vocab, cfg.n_ctx, cfg.d_model, cfg.d_head)
        + screen_flops(cfg)
        + refine_flops(cfg.d_vocab, n_refined)
    )


def _recheck(w: Weights, t: at.Tables, indices: Tensor) -> Decisions:
    """Rigorous verdicts (float64, then exact) of the inputs the screen left undecided."""
    return Decider(w, t)(index_to_tokens(indices, t.d_vocab, t.n_ctx))


def exact_accuracy(
    weights: Weights,
    *,
    progress: Progress = None,
    ledger: FlopLedger | None = None,
    workers: int | None = None,
) -> ExactAccuracy:
    """Exact, rounding-safe count of correct inputs over all ``d_vocab**n_ctx`` inputs.

    Args:
        weights: the model.
        progress: optional ``callback(done, total)`` called after each query token.
        ledger: optional FLOP ledger; receives the tables and screen cost (equal to
            ``exact_accuracy_flops(weights.config, result.n_refined)``) and the near-tie
            re-check cost (label ``"recheck"``).
        workers: threads for the screen (default ``torch.get_num_threads()``).

    Returns:
        ``ExactAccuracy`` with ``correct + incorrect + undecided == total``.

    Raises:
        TooLargeError: when the per-query prefix table would exceed ``MAX_PREFIX_ELEMS``.
    """
    start = time.perf_counter()
    cfg = weights.config
    _check_size(cfg)
    ledger = ledger if ledger is not None else FlopLedger()
    t = at.build_tables(weights, Ops(ledger))
    sc = scr.screen(t, at.screen_constants(t), mask=None, progress=progress, workers=workers)
    ledger.add(sc.flops, label=SCREEN_LABEL)
    ledger.add(sc.ref_flops, label=REFINE_LABEL)
    n_ok, n_bad, und = sc.n_ok, sc.n_bad, sc.undecided
    n_und = sum(x.numel() for x in und)
    n_tie = n_exact = 0
    if n_und:
        res = _recheck(weights, t, torch.cat(und))
        ledger.add(res.flops, label=RECHECK_LABEL)
        c = int(res.correct.sum())
        n_tie = int(res.tie.sum())
        n_ok += c
        n_bad += n_und - c - n_tie
        n_exact = res.n_exact
    return ExactAccuracy(
        correct=n_ok,
        incorrect=n_bad,
        undecided=n_tie,
        total=cfg.n_inputs,
        seconds=time.perf_counter() - start,
        n_near_ties_resolved=n_und - n_tie,
        n_exact=n_exact,
        n_refined=sc.n_refined,
    )


def correct_mask(weights: Weights) -> Bool[Tensor, " n_inputs"]:
    """Exact per-input verdict (True iff correct; ties are False), indexed like the paper.

    Raises:
        TooLargeError: if ``d_vocab**n_ctx > 2**24``.
    """
    cfg = weights.config
    if cfg.n_inputs > MASK_LIMIT:
        raise TooLargeError(
            f"correct_mask needs d_vocab**n_ctx <= 2**24, got {cfg.n_inputs:.3g}; "
            "use exact_accuracy for counts"
        )
    t = at.build_tables(weights, Ops())
    mask = torch.zeros(cfg.n_inputs, dtype=torch.bool)
    und = scr.screen(t, at.screen_constants(t), mask=mask, progress=None).undecided
    if und:
        idx = torch.cat(und)
        mask[idx] = _recheck(weights, t, idx).correct
    return mask
