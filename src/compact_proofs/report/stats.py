"""Summary statistics (the paper's ``data_summary`` family, with its percentile bug fixed) and
least-squares line fits.

Percentiles: the box-plot quantiles Phi(j * 0.6745) for j = -3..3 (Phi = standard normal CDF),
i.e. 0.0215, 0.0887, 0.25, 0.5, 0.75, 0.9113, 0.9785, passed to ``np.percentile`` *times 100*
(reference-algorithms §13.7: the reference passed fractions to a function that expects 0-100).
Standard deviations are sample standard deviations (``ddof=1``; NaN for a single value).
"""

import math
from dataclasses import dataclass

import numpy as np

PERCENTILE_NAMES: tuple[str, ...] = (
    "LowerWhiskerBottomEnd",
    "LowerWhiskerCrosshatch",
    "QuartileOne",
    "Median",
    "QuartileThree",
    "UpperWhiskerCrosshatch",
    "UpperWhiskerTopEnd",
)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# Quantiles as fractions in [0, 1]; Phi(+-0.6745) rounds to exactly 0.25 / 0.75 by convention.
QUANTILES: tuple[float, ...] = tuple(
    {-1: 0.25, 0: 0.5, 1: 0.75}.get(j, _phi(j * 0.6745)) for j in (-3, -2, -1, 0, 1, 2, 3)
)


def data_summary(values, prefix: str) -> dict[str, float | int]:
    """``{prefix}Len``, ``…MinFloat``, ``…MaxFloat``, ``…MeanFloat``, ``…StdDevFloat`` and the
    seven percentiles ``…{Name}Float`` of the finite entries of ``values`` (empty: only ``Len``)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    out: dict[str, float | int] = {f"{prefix}Len": int(x.size)}
    if x.size == 0:
        return out
    out[f"{prefix}MinFloat"] = float(x.min())
    out[f"{prefix}MaxFloat"] = float(x.max())
    out[f"{prefix}MeanFloat"] = float(x.mean())
    out[f"{prefix}StdDevFloat"] = float(x.std(ddof=1)) if x.size > 1 else math.nan
    pct = np.percentile(x, [100.0 * q for q in QUANTILES])
    for name, v in zip(PERCENTILE_NAMES, pct, strict=True):
        out[f"{prefix}{name}Float"] = float(v)
    return out


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample std (NaN if fewer than 2) and count of the finite entries."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    r_squared: float
    n: int


def linear_fit(x, y) -> LinearFit | None:
    """Least-squares line ``y = slope x + intercept`` over finite pairs (None if < 2 distinct x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return LinearFit(float(slope), float(intercept), r2, int(x.size))
