"""One self-contained interactive ``report.html`` (plotly, the optional ``html`` extra).

plotly.js is inlined once (``include_plotlyjs=True`` on the first figure), so the page works
offline. Callers check ``available()`` first; without plotly the report skips this file.
"""

import html as html_mod
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd

from compact_proofs.report import naming
from compact_proofs.report.figures import (
    PALETTE,
    RING_FAMILIES,
    family_colors,
    legend_label,
    sigma_fits,
)
from compact_proofs.report.frontier import brute_force_slope


def available() -> bool:
    return importlib.util.find_spec("plotly") is not None


def _log2_ticks(lo: float, hi: float) -> dict:
    lo_e, hi_e = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    stride = max(1, math.ceil((hi_e - lo_e + 1) / 10))
    es = list(range(lo_e, hi_e + 1, stride))
    return {"type": "log", "tickvals": [2.0**e for e in es], "ticktext": [f"2^{e}" for e in es]}


def _hover(rows: pd.DataFrame) -> list[str]:
    return [
        f"{s}<br>seed {sd}<br>bound {a:.5f} (rel {nb:.4f})<br>FLOPs {f:.3g}"
        f"<br>unexpl. dim {ed:,.0f}"
        for s, sd, a, nb, f, ed in zip(
            rows["strategy"],
            rows["seed"],
            rows["accuracy_bound"],
            rows["normalized_bound"],
            rows["flops"],
            rows["unexplained_dim"],
            strict=True,
        )
    ]


def _drawing_order(families) -> list[tuple[int, str]]:
    """(legend rank, family): ``RING_FAMILIES`` drawn last, i.e. on top (as in ``figures``)."""
    ranked = list(enumerate(families))
    return [r for r in ranked if r[1] not in RING_FAMILIES] + [
        r for r in ranked if r[1] in RING_FAMILIES
    ]


def _marker(family: str, color: str, size: float, opacity: float) -> dict:
    """A filled dot, or for ``RING_FAMILIES`` an open ring twice its size around it."""
    if family in RING_FAMILIES:
        return {"color": color, "size": 2 * size + 2, "symbol": "circle-open", "line": {"width": 2}}
    return {"color": color, "size": size, "opacity": opacity}


def bound_figure(df: pd.DataFrame, *, frontier_only: bool, title: str):
    import plotly.graph_objects as go

    colors = family_colors(df["family"])
    fig = go.Figure()
    shown = df[df["on_frontier"]] if frontier_only else df
    for rank, fam in _drawing_order(colors):
        rows = shown[shown["family"] == fam]
        if rows.empty:
            continue
        fig.add_trace(
            go.Scattergl(
                x=rows["flops"],
                y=rows["normalized_bound"],
                mode="markers",
                name=legend_label(df, fam),
                legendrank=rank,
                marker=_marker(fam, colors[fam], 7 if frontier_only else 4, 0.7),
                hovertext=_hover(rows),
                hoverinfo="text",
            )
        )
    flops = df["flops"][df["flops"] > 0]
    if frontier_only and not flops.empty:
        slope = brute_force_slope(df)
        if math.isfinite(slope):
            xs = np.geomspace(float(flops.min()), float(flops.max()), 200)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=slope * xs,
                    mode="lines",
                    name="brute-force linear baseline",
                    line={"dash": "dash", "color": "black"},
                )
            )
    xaxis = _log2_ticks(float(flops.min()), float(flops.max())) if not flops.empty else {}
    fig.update_layout(
        title=title,
        xaxis={**xaxis, "title": "FLOPs to verify proof"},
        yaxis={"title": "normalised accuracy bound", "range": [-0.02, 1.05]},
        height=520,
    )
    return fig


def dim_figure(df: pd.DataFrame, title: str):
    import plotly.graph_objects as go

    colors = family_colors(df["family"])
    fig = go.Figure()
    for rank, fam in _drawing_order(colors):
        rows = df[df["family"] == fam]
        fig.add_trace(
            go.Scattergl(
                x=rows["flops"],
                y=rows["unexplained_dim"],
                mode="markers",
                name=naming.family_label(fam),
                legendrank=rank,
                marker=_marker(fam, colors[fam], 4, 1.0),
                hovertext=_hover(rows),
                hoverinfo="text",
            )
        )
    ok = df[(df["flops"] > 0) & (df["unexplained_dim"] > 0)]
    if not ok.empty:
        fig.update_xaxes(**_log2_ticks(float(ok["flops"].min()), float(ok["flops"].max())))
        fig.update_yaxes(
            **_log2_ticks(float(ok["unexplained_dim"].min()), float(ok["unexplained_dim"].max()))
        )
    fig.update_layout(
        title=title,
        xaxis_title="FLOPs to verify proof",
        yaxis_title="unexplained dimension",
        height=520,
    )
    return fig


def sigma_figure(data: pd.DataFrame, title: str):
    import plotly.graph_objects as go

    fits = sigma_fits(data)
    fig = go.Figure()
    xs = np.linspace(float(data["sigma_ratio"].min()), float(data["sigma_ratio"].max()), 50)
    for i, mode in enumerate(m for m in naming.ATTN_ERR_MODES if m in set(data["attn_err"])):
        rows = data[data["attn_err"] == mode]
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=rows["sigma_ratio"],
                y=rows["normalized_bound"],
                mode="markers",
                name=mode,
                marker={"color": color, "size": 5},
                legendgroup=mode,
                hovertext=_hover(rows),
                hoverinfo="text",
            )
        )
        if mode in fits:
            f = fits[mode]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=f.slope * xs + f.intercept,
                    mode="lines",
                    legendgroup=mode,
                    name=f"fit: R² {f.r_squared:.2f}",
                    line={"color": color},
                )
            )
    fig.update_layout(
        title=title,
        xaxis_title="σ1/σ2 of EQKE",
        yaxis_title="normalised accuracy bound",
        yaxis_range=[-0.02, 1.05],
        height=520,
    )
    return fig


def model_figures(info: dict, tensors: dict, title: str) -> list:
    import plotly.graph_objects as go

    figs = []
    for name, (yl, xl) in {
        "EQKE": ("query token", "key token"),
        "EVOU": ("attended token", "output logit"),
    }.items():
        if name in tensors:
            M = tensors[name].numpy()
            vmax = float(np.abs(M).max()) or 1.0
            fig = go.Figure(
                go.Heatmap(z=M, colorscale="RdBu", reversescale=True, zmin=-vmax, zmax=vmax)
            )
            fig.update_layout(
                title=f"{title}: {name}", xaxis_title=xl, yaxis_title=yl, height=560, width=640
            )
            fig.update_yaxes(autorange="reversed")
            figs.append(fig)
    if info.get("ablations"):
        rows = info["ablations"]
        fig = go.Figure(
            go.Bar(
                y=[r["name"] for r in rows],
                x=[r["accuracy"] for r in rows],
                orientation="h",
                hovertext=[f"loss {r['loss']:.4f}" for r in rows],
            )
        )
        fig.update_layout(
            title=f"{title}: accuracy with paths removed",
            xaxis_title="accuracy",
            yaxis={"autorange": "reversed"},
            height=760,
        )
        figs.append(fig)
    return figs


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
</style></head><body><h1>{title}</h1>
{body}
</body></html>
"""


def write_html(
    path: Path, sections: list[tuple[str, list]], table_html: str, notes: list[str]
) -> None:
    """Assemble ``sections`` ([(heading, [plotly figures])]) and Table 1 into one offline page.
    Each figure's element id is numbered (not plotly's random one), so the page is the same file
    when regenerated from the same rows."""
    body = ["<h2>Table 1</h2>", table_html]
    if notes:
        body.append(
            "<h2>Notes</h2><ul>"
            + "".join(f"<li>{html_mod.escape(n)}</li>" for n in notes)
            + "</ul>"
        )
    first, number = True, 0
    for heading, figs in sections:
        body.append(f"<h2>{html_mod.escape(heading)}</h2>")
        for fig in figs:
            number += 1
            html = fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"figure-{number}")
            body.append(html)
            first = False
    path.write_text(
        PAGE.format(title="compact-proofs report", body="\n".join(body)), encoding="utf-8"
    )


def config_sections(df: pd.DataFrame, sigma_data: pd.DataFrame, title: str) -> list:
    figs = [
        bound_figure(df, frontier_only=False, title=f"{title}: all proofs"),
        bound_figure(df, frontier_only=True, title=f"{title}: Pareto frontier per seed"),
        dim_figure(df, f"{title}: unexplained dimension vs FLOPs"),
    ]
    if not sigma_data.empty:
        figs.append(sigma_figure(sigma_data, f"{title}: bound vs σ1/σ2 of EQKE"))
    return figs
