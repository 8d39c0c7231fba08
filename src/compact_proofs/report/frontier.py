"""Pareto frontier of bound against proof cost, and the brute-force linear baseline of the
bound-vs-FLOPs figure.

The frontier is the paper's: a proof is dominated only by one of the same model with BOTH a
strictly larger bound and strictly fewer FLOPs. So a proof matched in bound by a cheaper one stays
(brute force stays beside an exact adaptive proof), unlike the usual definition, which drops a
proof that another equals in one measure and beats in the other. Kept for comparability with the
paper's figures; ``FRONTIER_NOTE`` says so in every report."""

import math

import numpy as np
import pandas as pd

from compact_proofs.report import naming

FRONTIER_NOTE = (
    "Pareto frontier (frontier.csv, *-frontier figures): the paper's definition, under which a "
    "proof is dropped only if another proof of the same model has both a strictly larger bound "
    "and strictly fewer FLOPs; a proof matched in bound by a cheaper one stays (e.g. brute force "
    "beside an exact adaptive proof)."
)


def pareto_mask(values, costs) -> np.ndarray:
    """True for entries not dominated by another with a strictly larger value AND a strictly
    smaller cost. NaN values are never on the frontier and dominate nothing.

    Vectorised: sort by cost; an entry is dominated iff the running max of values over all
    strictly cheaper entries exceeds its value.
    """
    v = np.asarray(values, dtype=float)
    c = np.asarray(costs, dtype=float)
    n = v.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(c, kind="stable")
    vs, cs = v[order], c[order]
    vv = np.where(np.isfinite(vs), vs, -np.inf)
    running = np.maximum.accumulate(vv)
    # index of the first entry of each entry's cost level: everything before it is strictly cheaper
    first = np.searchsorted(cs, cs, side="left")
    best_cheaper = np.where(first > 0, running[np.maximum(first - 1, 0)], -np.inf)
    on = np.isfinite(vs) & np.isfinite(cs) & ~(best_cheaper > vs)
    out = np.empty(n, dtype=bool)
    out[order] = on
    return out


def frontier(df: pd.DataFrame, value: str = "accuracy_bound", cost: str = "flops") -> pd.Series:
    """Per (K, d_vocab, seed) Pareto mask of ``df`` (boolean Series aligned with ``df``).

    The accuracy bound and the normalised bound order a seed's rows identically (same divisor),
    so the default uses the accuracy bound, which is always present.
    """
    mask = pd.Series(False, index=df.index)
    for _, g in df.groupby(["k", "d_vocab", "seed"], sort=False):
        mask.loc[g.index] = pareto_mask(g[value].to_numpy(), g[cost].to_numpy())
    return mask


def brute_force_slope(df: pd.DataFrame, value: str = "normalized_bound") -> float:
    """``mean(value / FLOPs)`` over the brute-force rows: the baseline is ``y = slope * FLOPs``
    (NaN when there is no brute-force row)."""
    bf = df[df["family"] == naming.BRUTE_FORCE]
    ratio = (bf[value] / bf["flops"]).to_numpy(dtype=float)
    ratio = ratio[np.isfinite(ratio)]
    return float(ratio.mean()) if ratio.size else math.nan
