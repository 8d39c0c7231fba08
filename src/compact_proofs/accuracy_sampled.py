"""Sampled accuracy estimate with a 95 % confidence interval, for when d_vocab**n_ctx inputs are
too many to enumerate (the paper's K >= 5 "brute force", reference-algorithms §9.1, but with the
positional attention term that its cached model drops, §13.5).

Design: strata by the max token m. Stratum m holds N_m = (m+1)^n - m^n inputs (weight
W_m = N_m / V^n). A stratum small enough is enumerated exactly; otherwise n_m inputs are drawn
uniformly from it, with replacement, rejection-free: the number c >= 1 of positions equal to m
has P(c) = C(n, c) m^(n-c) / N_m, the c positions are a uniformly random subset, and the other
positions are uniform in [0, m). Every drawn input is judged exactly (``accuracy_decide``: float64
with a rigorous bound, then python-flint), so the only uncertainty is sampling error.

Estimate: p = sum_m W_m p_m (p_m exact for enumerated strata, the sample fraction otherwise).
Interval: Wilson score interval with the Kish effective sample size of the sampled part (the
usual adaptation of Wilson's interval to stratified / complex samples): with sampled strata S,
W_S = sum_S W_m, p_S = sum_S W_m p_m / W_S,
smoothed p~_m = (x_m + 1/2) / (n_m + 1) (so that all-correct strata still carry variance),
var = sum_S (W_m / W_S)^2 p~_m (1 - p~_m) / n_m and n_eff = p~_S (1 - p~_S) / var, the Wilson
interval for p_S with n_eff trials at z = 1.96 is mapped back as
(exact part) + W_S [lo, hi]. With a single stratum this is the ordinary Wilson interval.
The interval is approximate (as every normal-theory interval is), not a bound: proofs never use it.
"""

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import torch
from jaxtyping import Int
from torch import Tensor

from compact_proofs import accuracy_tables as at
from compact_proofs.accuracy_decide import Decider
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import UserError
from compact_proofs.weights import Weights

Z95 = 1.959963984540054
METHOD = "stratified by max token; Wilson interval with Kish effective sample size"
ENUM_FACTOR = 4  # enumerate a stratum when its bounding box has <= 4 n_m inputs,
ENUM_BOX_LIMIT = 1 << 22  # or when it is no larger than its sample and its box is small


@dataclass(frozen=True)
class SampledAccuracy:
    """Stratified estimate of the exact accuracy, with a 95 % confidence interval."""

    estimate: float
    ci_low: float
    ci_high: float
    n_samples: int  # randomly drawn inputs judged
    n_enumerated: int  # inputs of exhaustively enumerated small strata
    total: int  # d_vocab ** n_ctx
    seconds: float
    seed: int
    method: str = METHOD


def stratum_size(m: int, n: int) -> int:
    """Number of inputs of length n over {0..} whose max is exactly m."""
    return (m + 1) ** n - m**n


def sample_stratum(
    m: int, n: int, count: int, generator: torch.Generator
) -> Int[Tensor, "count n"]:
    """``count`` inputs drawn uniformly (with replacement) from those whose max token is m."""
    if m == 0:
        return torch.zeros((count, n), dtype=torch.int64)
    N = stratum_size(m, n)
    probs = torch.tensor(
        [float(Fraction(math.comb(n, c) * m ** (n - c), N)) for c in range(1, n + 1)],
        dtype=torch.float64,
    )
    cs = torch.multinomial(probs, count, replacement=True, generator=generator) + 1
    u = torch.rand((count, n), generator=generator)
    ranks = u.argsort(dim=1).argsort(dim=1)  # a uniformly random permutation of positions
    others = torch.randint(0, m, (count, n), generator=generator)
    return torch.where(ranks < cs[:, None], torch.full_like(others, m), others)


def enumerate_stratum(m: int, n: int) -> Int[Tensor, "N n"]:
    """All inputs whose max token is exactly m (index order of the (m+1)^n box)."""
    box = (m + 1) ** n
    idx = torch.arange(box, dtype=torch.int64)
    powers = (m + 1) ** torch.arange(n, dtype=torch.int64)
    toks = (idx[:, None] // powers) % (m + 1)
    return toks[toks.max(dim=1).values == m]


def wilson(p: float, n_eff: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion p observed with n_eff effective trials."""
    if n_eff <= 0 or not math.isfinite(n_eff):
        return (p, p)
    z2 = z * z
    denom = 1 + z2 / n_eff
    center = (p + z2 / (2 * n_eff)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n_eff + z2 / (4 * n_eff * n_eff))
    return (max(0.0, center - half), min(1.0, center + half))


def _interval(strata: list[tuple[float, int, int, bool]]) -> tuple[float, float, float]:
    """(estimate, low, high) from (weight, correct, judged, enumerated) per stratum."""
    est = sum(W * x / k for W, x, k, _ in strata if k)
    exact_part = sum(W * x / k for W, x, k, enum in strata if enum and k)
    sampled = [(W, x, k) for W, x, k, enum in strata if not enum and k]
    W_S = sum(W for W, _, _ in sampled)
    if not sampled or W_S == 0:
        return est, est, est
    p_S = sum(W * x / k for W, x, k in sampled) / W_S
    smooth = [(W / W_S, (x + 0.5) / (k + 1), k) for W, x, k in sampled]
    var = sum(w * w * ps * (1 - ps) / k for w, ps, k in smooth)
    ps_S = sum(w * ps for w, ps, _ in smooth)
    lo, hi = wilson(p_S, ps_S * (1 - ps_S) / var)
    return est, exact_part + W_S * lo, exact_part + W_S * hi


def _count_correct(decide: Decider, toks: Tensor) -> int:
    return int(decide(toks).correct.sum())


def _single_thread() -> None:
    torch.set_num_threads(1)  # per pool thread (OpenMP thread counts are per calling thread)


def sampled_accuracy(
    weights: Weights,
    *,
    n_samples: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    min_per_stratum: int = 32,
    workers: int | None = None,
) -> SampledAccuracy:
    """Stratified sampled estimate of the exact accuracy (see the module docstring).

    Args:
        weights: the model.
        n_samples: about how many random inputs to judge (allocated proportionally to the strata
            sizes, at least ``min_per_stratum`` each; small strata are enumerated instead).
        seed: seed of the private ``torch.Generator`` (the global RNG is never touched).
        progress: optional ``callback(done, total)`` over the strata's inputs.
        min_per_stratum: smallest per-stratum sample.
        workers: threads judging the inputs (default ``torch.get_num_threads()``).

    Returns:
        ``SampledAccuracy``; exact ties count as incorrect.
    """
    if n_samples < 1:
        raise UserError(f"n_samples must be at least 1, got {n_samples}")
    start = time.perf_counter()
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    total = cfg.n_inputs
    g = torch.Generator().manual_seed(seed)
    decide = Decider(weights, at.build_tables(weights, Ops()))
    plan = []
    for m in range(V):
        N_m = stratum_size(m, n)
        W = float(Fraction(N_m, total))
        k = max(min_per_stratum, math.ceil(n_samples * W))
        box = (m + 1) ** n  # enumeration filters this box
        plan.append((m, W, k, box <= ENUM_FACTOR * k or (N_m <= k and box <= ENUM_BOX_LIMIT)))
    work = sum(stratum_size(m, n) if enum else k for m, _, k, enum in plan)
    strata, done, n_drawn, n_enum = [], 0, 0, 0
    workers = max(1, min(workers or torch.get_num_threads(), V))
    pool = ThreadPoolExecutor(workers, initializer=_single_thread)
    try:
        futures = []
        for m, W, k, enum in plan:  # draws happen here, in order: deterministic given the seed
            toks = enumerate_stratum(m, n) if enum else sample_stratum(m, n, k, g)
            futures.append((W, toks.shape[0], enum, pool.submit(_count_correct, decide, toks)))
        for W, size, enum, fut in futures:
            strata.append((W, fut.result(), size, enum))
            n_enum += size if enum else 0
            n_drawn += 0 if enum else size
            done += size
            if progress is not None:
                progress(done, work)
    finally:  # on an error or Ctrl-C, drop the strata not yet started
        pool.shutdown(wait=True, cancel_futures=True)
    est, lo, hi = _interval(strata)
    return SampledAccuracy(
        estimate=est,
        ci_low=min(lo, est),
        ci_high=max(hi, est),
        n_samples=n_drawn,
        n_enumerated=n_enum,
        total=total,
        seconds=time.perf_counter() - start,
        seed=seed,
    )
