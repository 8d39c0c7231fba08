"""Shared (across seeds) figures of one (K, d_vocab) configuration, as PNG and PDF.

Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot: no global backend or state.

1. ``bound_vs_flops_all``: normalised bound vs FLOPs to check (log2 axis), every row, coloured
   by family; legend: family (normalised bound of its best variant per seed, mean ± std).
   Families in ``RING_FAMILIES`` are drawn as rings above the filled dots (``point_style``).
2. ``bound_vs_flops_frontier``: only rows on their seed's Pareto frontier (``frontier``), with
   the dashed brute-force linear baseline ``y = mean(normalised bound / FLOPs of brute force) · x``.
3. ``unexplained_dim_vs_flops``: unexplained dimension vs FLOPs (log2-log2).
4. ``bound_vs_sigma_ratio``: normalised bound of the best variant per (seed, attention-error
   mode) vs sigma1/sigma2 of EQKE, with a least-squares line per mode (exact_EQKE excluded).
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from compact_proofs.report import naming
from compact_proofs.report.data import best_per_seed
from compact_proofs.report.frontier import brute_force_slope
from compact_proofs.report.stats import LinearFit, linear_fit, mean_std

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


# Families drawn as open rings above every filled dot. The unbudgeted adaptive proof stops where
# its largest FLOP budget stops too, so its points coincide with "adaptive (budget)" points: as a
# filled dot drawn in family order it would be hidden under them, leaving a legend entry with no
# visible points. A ring around the filled dot keeps both visible.
ADAPTIVE, ADAPTIVE_BUDGET = "adaptive", "adaptive (budget)"
RING_FAMILIES: frozenset[str] = frozenset({ADAPTIVE})
# Families with a few points per seed (one per seed, or one per budget): drawn larger.
FEW_POINT_FAMILIES: frozenset[str] = frozenset(
    {naming.BRUTE_FORCE, naming.CUBIC, ADAPTIVE, ADAPTIVE_BUDGET}
)


def point_style(family: str, color: str, size: float, alpha: float) -> dict:
    """``scatter`` keywords of a family: a filled dot of area ``size`` (zorder 3), or for
    ``RING_FAMILIES`` an opaque ring (no face, 1.3 pt edge) of 2.5 times that area, at least
    60, at zorder 4, i.e. drawn on top and around a filled dot at the same place."""
    if family in RING_FAMILIES:
        return {
            "s": max(2.5 * size, 60.0),
            "facecolors": "none",
            "edgecolors": color,
            "linewidths": 1.3,
            "alpha": 1.0,
            "zorder": 4,
        }
    return {"s": size, "color": color, "alpha": alpha, "linewidths": 0, "zorder": 3}


# Other families (your own strategies): colours none of the built-in families use.
EXTRA_PALETTE = ("#000000", "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2")


def family_colors(families) -> dict[str, str]:
    """One colour per family, the same in every report: the built-in families (paper order, then
    the adaptive ones) each have their own; others take ``EXTRA_PALETTE`` in name order."""
    known = (*naming.FAMILY_ORDER, ADAPTIVE, ADAPTIVE_BUDGET)
    colors = {f: PALETTE[i] for i, f in enumerate(known) if f in set(families)}
    others = sorted(set(families) - set(known))
    colors |= {f: EXTRA_PALETTE[i % len(EXTRA_PALETTE)] for i, f in enumerate(others)}
    return colors


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf``; return both paths. The PDF carries no
    creation date, so an unchanged figure is byte-identical when the report is regenerated."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out_dir / f"{stem}.{ext}"
        meta = {"CreationDate": None} if ext == "pdf" else None
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(p)
    return paths


def log2_axis(ax, axis: str, lo: float, hi: float, max_ticks: int = 9) -> None:
    """Log base-2 axis with ticks ``2^k`` at a stride that keeps at most ``max_ticks`` ticks."""
    lo_e, hi_e = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    if hi_e - lo_e < 2:
        lo_e, hi_e = lo_e - 1, hi_e + 1
    stride = max(1, math.ceil((hi_e - lo_e + 1) / max_ticks))
    ticks = [2.0**e for e in range(lo_e, hi_e + 1) if (e - lo_e) % stride == 0]
    labels = [f"$2^{{{round(math.log2(t))}}}$" for t in ticks]
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    set_scale("log", base=2)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)(labels)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(2.0**lo_e / 1.2, 2.0**hi_e * 1.2)


def legend_label(df: pd.DataFrame, family: str) -> str:
    best = best_per_seed(df[df["family"] == family])
    if family == naming.BRUTE_FORCE:
        m, s, _ = mean_std(best["accuracy_bound"])
        stat = f"acc {m:.4f}" + (f" ± {s:.4f}" if math.isfinite(s) else "")
    else:
        m, s, _ = mean_std(best["normalized_bound"])
        stat = f"rel {m:.3f}" + (f" ± {s:.3f}" if math.isfinite(s) else "")
    return f"{naming.family_label(family)} ({stat})"


def _finish(ax, title: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for handle in legend.legend_handles:  # legend markers at a readable size, opaque
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([30])
        handle.set_alpha(1)


def _families(df: pd.DataFrame) -> list[str]:
    present = set(df["family"])
    return [f for f in naming.FAMILY_ORDER if f in present] + sorted(
        present - set(naming.FAMILY_ORDER)
    )


def bound_vs_flops(df: pd.DataFrame, *, frontier_only: bool, title: str) -> Figure:
    """Figures 1 and 2 (see module docstring); ``df`` carries an ``on_frontier`` column."""
    colors = family_colors(df["family"])
    fig = Figure(figsize=(10, 5.2))
    ax = fig.add_subplot()
    shown = df[df["on_frontier"]] if frontier_only else df
    for fam in _families(df):
        rows = shown[shown["family"] == fam]
        if rows.empty:
            continue
        few = fam in FEW_POINT_FAMILIES  # a few points per seed, stacked: draw larger
        ax.scatter(
            rows["flops"],
            rows["normalized_bound"],
            label=legend_label(df, fam),
            rasterized=True,
            **point_style(
                fam,
                colors[fam],
                30 if few else (18 if frontier_only else 6),
                0.8 if frontier_only or few else 0.45,
            ),
        )
    flops = df["flops"][df["flops"] > 0]
    if not flops.empty:
        log2_axis(ax, "x", float(flops.min()), float(flops.max()))
    if frontier_only:
        slope = brute_force_slope(df)
        if math.isfinite(slope) and not flops.empty:
            xs = np.geomspace(float(flops.min()) / 1.2, float(flops.max()) * 1.2, 200)
            ax.plot(xs, slope * xs, "k--", lw=1, label="brute-force linear baseline", zorder=2)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("FLOPs to verify proof (log scale)")
    ax.set_ylabel("normalised accuracy bound")
    _finish(ax, title + (" — Pareto frontier per seed" if frontier_only else " — all proofs"))
    return fig


def unexplained_dim_vs_flops(df: pd.DataFrame, *, title: str) -> Figure:
    colors = family_colors(df["family"])
    fig = Figure(figsize=(10, 5.2))
    ax = fig.add_subplot()
    for fam in _families(df):
        rows = df[df["family"] == fam]
        ax.scatter(
            rows["flops"],
            rows["unexplained_dim"],
            label=naming.family_label(fam),
            rasterized=True,
            **point_style(fam, colors[fam], 30 if fam in FEW_POINT_FAMILIES else 8, 0.5),
        )
    ok = df[(df["flops"] > 0) & (df["unexplained_dim"] > 0)]
    if not ok.empty:
        log2_axis(ax, "x", float(ok["flops"].min()), float(ok["flops"].max()))
        log2_axis(ax, "y", float(ok["unexplained_dim"].min()), float(ok["unexplained_dim"].max()))
    ax.set_xlabel("FLOPs to verify proof (log scale)")
    ax.set_ylabel("unexplained dimension (log scale)")
    _finish(ax, title + " — unexplained dimension vs proof cost")
    return fig


def sigma_ratio_data(df: pd.DataFrame) -> pd.DataFrame:
    """Best variant per (seed, attention-error mode), exact_EQKE excluded, rows with a ratio."""
    sub = df[df["attn_err"].notna() & (df["attn_err"] != "exact_EQKE+max_diff_exact")]
    sub = sub[np.isfinite(sub["sigma_ratio"].to_numpy(dtype=float))]
    if sub.empty:
        return sub
    ordered = sub.sort_values(
        ["seed", "attn_err", "accuracy_bound", "flops"], ascending=[True, True, False, True]
    )
    return ordered.drop_duplicates(["k", "d_vocab", "seed", "attn_err"])


def sigma_fits(data: pd.DataFrame) -> dict[str, LinearFit]:
    fits = {}
    for mode, rows in data.groupby("attn_err"):
        fit = linear_fit(rows["sigma_ratio"], rows["normalized_bound"])
        if fit is not None:
            fits[str(mode)] = fit
    return fits


def bound_vs_sigma_ratio(data: pd.DataFrame, fits: dict[str, LinearFit], *, title: str) -> Figure:
    fig = Figure(figsize=(10, 5.2))
    ax = fig.add_subplot()
    modes = [m for m in naming.ATTN_ERR_MODES if m in set(data["attn_err"])]
    xs = np.linspace(float(data["sigma_ratio"].min()), float(data["sigma_ratio"].max()), 50)
    for i, mode in enumerate(modes):
        rows = data[data["attn_err"] == mode]
        color = PALETTE[i % len(PALETTE)]
        fit = fits.get(mode)
        label = (
            mode if fit is None else f"{mode} (slope {fit.slope:.2g}, $R^2$ {fit.r_squared:.2f})"
        )
        ax.scatter(
            rows["sigma_ratio"], rows["normalized_bound"], s=10, alpha=0.6, color=color, label=label
        )
        if fit is not None:
            ax.plot(xs, fit.slope * xs + fit.intercept, color=color, lw=1)
    # The data's own range: on [0, 1] the modes' bands (often within 0.1) hide each other.
    lo, hi = float(data["normalized_bound"].min()), float(data["normalized_bound"].max())
    pad = max(0.02, 0.05 * (hi - lo))
    ax.set_ylim(max(-0.02, lo - pad), min(1.05, hi + pad))
    ax.set_xlabel(r"$\sigma_1 / \sigma_2$ of EQKE $= E_q W_Q W_K^T \bar{E}^T$")
    ax.set_ylabel("normalised accuracy bound (best variant per seed and mode)")
    _finish(ax, title + " — bound vs EQKE singular-value ratio, by attention-error mode")
    return fig
