"""Path ablations (reference-algorithms §9.2, with its two bugs fixed).

Five paths can be removed (zero-ablated) from the exact path decomposition of ``paths.py``:

* ``EU``   the direct path ``EUPU[q, x]``;
* ``EQKE`` the token part of the attention score (with the mean position folded in);
* ``EQKP`` the centred positional part of the score (ablating it = every key at the mean position);
* ``EVOU`` the token part of the attended value;
* ``PVOU`` the positional part of the attended value.

Attention is ``softmax((EQKE[q, t_p] + EQKP[q, p]) / sqrt(d_head))`` with removed terms set to 0
(so removing both gives uniform attention), and
``logit(x) = EU[q, x] + sum_p alpha_p (EVOU[t_p, x] + PVOU[p, x])`` with removed terms set to 0.
All 2^5 = 32 combinations are evaluated on every input (or, above ``max_exhaustive`` inputs, on a
fixed random sample), in float64. Fixes relative to the reference code:

1. ``loss`` is the true mean cross-entropy ``-log softmax(logits)[max]``; the mean probability of
   the correct token is reported separately as ``prob_correct``.
2. No closed form for "EU only": every combination is evaluated by enumeration.

An input counts as correct iff ``logit[max] > logit[x]`` for every ``x != max`` (ties are wrong, as
in the soundness contract), so removing every path (all logits equal) gives accuracy 0.
"""

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.analysis.paths import path_matrices
from compact_proofs.weights import Weights

PATHS: tuple[str, ...] = ("EU", "EQKE", "EQKP", "EVOU", "PVOU")
DEFAULT_MAX_EXHAUSTIVE = 2**24
SAMPLE_LOGITS = 2**28  # sampled mode: about this many logits per combination
SAMPLE_SEED = 0


def combinations() -> list[tuple[str, ...]]:
    """All 32 subsets of ``PATHS`` (the ablated paths), by size, then in ``PATHS`` order."""
    out: list[tuple[str, ...]] = []
    for r in range(len(PATHS) + 1):
        out.extend(itertools.combinations(PATHS, r))
    return out


def combination_name(ablated: tuple[str, ...]) -> str:
    """``"none"`` or the ablated paths joined by ``+`` (e.g. ``"EQKP+PVOU"``)."""
    return "+".join(ablated) if ablated else "none"


@dataclass
class _Accumulator:
    correct: int = 0
    loss: float = 0.0
    prob: float = 0.0
    count: int = 0


def _token_chunks(
    V: int, n: int, *, exhaustive: bool, n_samples: int, chunk: int, seed: int
) -> Iterator[Tensor]:
    """Batches of input tokens [batch, n_ctx]: all V**n inputs in index order (token at position j
    is ``(i // V**j) % V``), or ``n_samples`` uniform inputs from a generator seeded ``seed``."""
    if exhaustive:
        powers = V ** torch.arange(n)
        total = V**n
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(total, start + chunk))
            yield (idx[:, None] // powers) % V
    else:
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, n_samples, chunk):
            b = min(chunk, n_samples - start)
            yield torch.randint(0, V, (b, n), generator=gen)


# Rows whose largest wrong-minus-right logit exceeds this take the exact float64 loss path.
_FAST_LOSS_MAX = 60.0


class _Evaluator:
    """Reusable float32 buffer for the loss (allocation and denormals dominate otherwise)."""

    def __init__(self, chunk: int, V: int) -> None:
        self.E32 = torch.empty(chunk, V, dtype=torch.float32)

    def add(self, D: Tensor, acc: _Accumulator) -> None:
        """Accumulate correctness, cross-entropy and p(correct) of one batch.

        ``D[i, x] = logit[x] - logit[max_i]`` (float64), with ``-inf`` at ``x = max_i``.
        Correct iff ``max_x D < 0`` (strict, decided in float64). Loss
        ``= log(1 + sum_{x != max} exp(D))``: summed in float32 (relative error ~1e-6) for rows
        with ``max D <= 60``; the rare other rows use an exact float64 ``logsumexp``.
        """
        b = D.shape[0]
        M = D.amax(dim=1)
        acc.correct += int((M < 0).sum())
        E32 = self.E32[:b]
        E32.copy_(D)
        # exp(-80) ~ 2e-35 is negligible beside the term exp(0) = 1 of the max token; clamping
        # keeps exp away from float32 denormals (and -inf), which are ~10x slower to evaluate
        E32.clamp_(min=-80.0, max=_FAST_LOSS_MAX).exp_()
        loss = torch.log1p(E32.sum(dim=1).double())
        big = torch.nonzero(M > _FAST_LOSS_MAX).squeeze(1)
        if big.numel():
            lse = torch.logsumexp(D[big], dim=1)
            loss[big] = torch.logaddexp(torch.zeros_like(lse), lse)
        acc.loss += float(loss.sum())
        acc.prob += float(torch.exp(-loss).sum())
        acc.count += b


def _centre(X: Tensor, m_flat: Tensor) -> Tensor:
    """In place: ``X[i] -= X[i, max_i]``, then ``X[i, max_i] = -inf``."""
    X.sub_(X.view(-1)[m_flat][:, None])
    X.view(-1)[m_flat] = -math.inf
    return X


def default_samples(d_vocab: int) -> int:
    """Sample size when not exhaustive: ``2**28 / d_vocab`` logits (2**22 inputs at d_vocab 64)."""
    return max(2**16, SAMPLE_LOGITS // d_vocab)


def ablation_table(
    w: Weights,
    *,
    max_exhaustive: int = DEFAULT_MAX_EXHAUSTIVE,
    n_samples: int | None = None,
    seed: int = SAMPLE_SEED,
    chunk: int = 2**14,
) -> dict:
    """Accuracy, loss and p(correct) of the model with each of the 32 path subsets removed.

    Args:
        w: the model.
        max_exhaustive: evaluate all ``d_vocab**n_ctx`` inputs when there are at most this many;
            otherwise evaluate ``n_samples`` (default ``default_samples(d_vocab)``) uniform random
            inputs drawn with a ``torch.Generator`` seeded ``seed`` (the same for every
            combination).
        chunk: inputs per vectorised batch.

    Returns:
        ``{"method": "exact" | "sampled", "n_inputs": int, "rows": [...]}`` with one row per
        combination (order of ``combinations()``): ``ablated`` (list of path names), ``name``,
        ``accuracy``, ``loss`` (mean cross-entropy), ``prob_correct``, ``num_correct``,
        ``num_incorrect``, ``normalized_accuracy`` (accuracy / accuracy with nothing removed).

    Cost: per input, ``4 n`` gathers for the attention variants and ``26`` evaluations of a
    ``d_vocab``-vector (the 32 combinations less the 6 duplicates whose logits ignore attention).
    About 40-80 s for all 2**24 inputs at K=4, d_vocab=64 on one idle core.
    """
    cfg = w.config
    V, n = cfg.d_vocab, cfg.n_ctx
    exhaustive = V**n <= max_exhaustive
    n_samples = default_samples(V) if n_samples is None else n_samples
    pm = path_matrices(w)
    tables = _Tables(
        scores=_score_tables(pm["EQKE"] / cfg.attn_scale, pm["EQKP"] / cfg.attn_scale),
        EVOU=pm["EVOU"],
        PVOU=pm["PVOU"],
        EU=pm["EUPU"],
        buf={
            k: torch.empty(chunk, V, dtype=torch.float64) for k in ("D", "G", "EU", "EV", "PV", "Z")
        },
        ev=_Evaluator(chunk, V),
    )
    accs = {(a, v): _Accumulator() for a in ATTN_VARIANTS for v in VALUE_VARIANTS}
    for t in _token_chunks(
        V, n, exhaustive=exhaustive, n_samples=n_samples, chunk=chunk, seed=seed
    ):
        _add_chunk(t, tables, accs)
    for av in ATTN_VARIANTS:
        for vv in VALUE_VARIANTS:
            if not (vv[1] or vv[2]):
                accs[(av, vv)] = accs[((True, True), vv)]
    return _rows(accs, exhaustive=exhaustive)


ATTN_VARIANTS = list(itertools.product((True, False), repeat=2))  # (EQKE kept, EQKP kept)
VALUE_VARIANTS = list(itertools.product((True, False), repeat=3))  # (EU, EVOU, PVOU) kept


@dataclass
class _Tables:
    scores: dict  # attention variant -> flattened [q, p, k] score table
    EVOU: Tensor
    PVOU: Tensor
    EU: Tensor
    buf: dict
    ev: _Evaluator


def _score_tables(S_tok: Tensor, S_pos: Tensor) -> dict:
    """Per attention variant, ``[q, p, k] -> score of key token k at position p for query q``
    (flattened), with removed terms zero."""
    V, n = S_pos.shape
    zeros = torch.zeros(V, n, V, dtype=torch.float64)
    return {
        (a, b): (
            zeros + (S_tok[:, None, :] if a else 0.0) + (S_pos[:, :, None] if b else 0.0)
        ).reshape(-1)
        for a, b in ATTN_VARIANTS
    }


def _add_chunk(t: Tensor, tb: _Tables, accs: dict) -> None:
    """Evaluate the 26 distinct combinations on one batch of inputs ``t`` [b, n_ctx]."""
    b, n = t.shape
    V = tb.EU.shape[1]
    buf = tb.buf
    q = t[:, -1]
    m_flat = torch.arange(b) * V + t.amax(dim=1)
    flat = (q[:, None] * n * V) + torch.arange(n) * V + t  # index of [q, p, t_p] in score tables
    # Each logit part is centred on the max token's logit, with -inf there: sums of parts are
    # then the D of _Evaluator.add directly (-inf + -inf = -inf; no +inf anywhere).
    eu = _centre(torch.index_select(tb.EU, 0, q, out=buf["EU"][:b]), m_flat)
    nothing = _centre(buf["Z"][:b].zero_(), m_flat)
    for av in ATTN_VARIANTS:
        alpha = torch.softmax(tb.scores[av][flat], dim=1)  # [b, n]
        pv = _centre(torch.mm(alpha, tb.PVOU, out=buf["PV"][:b]), m_flat)
        evc = buf["EV"][:b].zero_()
        for p in range(n):
            rows = torch.index_select(tb.EVOU, 0, t[:, p], out=buf["G"][:b])
            evc.addcmul_(alpha[:, p : p + 1], rows)
        _centre(evc, m_flat)
        for vv in VALUE_VARIANTS:
            if not (vv[1] or vv[2]) and av != (True, True):
                continue  # logits ignore attention: computed once, copied by the caller
            parts = [x for x, on in zip((eu, evc, pv), vv, strict=True) if on]
            if not parts:
                D = nothing
            elif len(parts) == 1:
                D = parts[0]
            else:
                D = torch.add(parts[0], parts[1], out=buf["D"][:b])
                if len(parts) == 3:
                    D.add_(parts[2])
            tb.ev.add(D, accs[(av, vv)])


def _rows(accs: dict, *, exhaustive: bool) -> dict:
    rows = []
    base = None
    for ablated in combinations():
        kept = {p: p not in ablated for p in PATHS}
        key = ((kept["EQKE"], kept["EQKP"]), (kept["EU"], kept["EVOU"], kept["PVOU"]))
        a = accs[key]
        accuracy = a.correct / a.count
        if not ablated:
            base = accuracy
        rows.append(
            {
                "name": combination_name(ablated),
                "ablated": list(ablated),
                "accuracy": accuracy,
                "loss": a.loss / a.count,
                "prob_correct": a.prob / a.count,
                "num_correct": a.correct,
                "num_incorrect": a.count - a.correct,
                "normalized_accuracy": accuracy / base if base else math.nan,
            }
        )
    n_inputs = next(iter(accs.values())).count
    return {"method": "exact" if exhaustive else "sampled", "n_inputs": n_inputs, "rows": rows}
