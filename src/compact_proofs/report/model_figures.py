"""Per-model figures and tables of one model (the chosen seed), from its analysis files:
path-matrix heatmaps, EQKE singular values, the path-ablation table and chart, and the
structureless-noise figure of the EQKE residual (reference-algorithms §11.3-11.4)."""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from compact_proofs.report.figures import PALETTE, save

# name -> (title, y label, x label)
HEATMAPS: dict[str, tuple[str, str, str]] = {
    "EQKE": (
        "EQKE = $E_q W_Q W_K^T \\bar{E}^T$: attention score, token part",
        "query token",
        "key token",
    ),
    "EQKP": (
        "EQKP = $E_q W_Q W_K^T \\hat{P}^T$: score, centred position part",
        "query token",
        "key position",
    ),
    "EVOU": (
        "EVOU = $W_E W_V W_O W_U$: logits from attending to a token",
        "attended (key) token",
        "output logit",
    ),
    "PVOU": (
        "PVOU = $W_{pos} W_V W_O W_U$: logits from attending to a position",
        "key position",
        "output logit",
    ),
    "EUPU": ("EUPU = $E_q W_U$: direct path from the query token", "query token", "output logit"),
}


def heatmap(M: np.ndarray, title: str, ylabel: str, xlabel: str) -> Figure:
    """Diverging heatmap centred at 0 (``RdBu_r``, symmetric colour limits)."""
    rows, cols = M.shape
    width = 7.0 if cols > 8 else 4.5
    height = 6.0 if rows > 8 else 3.2
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    vmax = float(np.abs(M).max()) or 1.0
    im = ax.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return fig


def singular_values(S: np.ndarray, title: str) -> Figure:
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    idx = np.arange(1, S.size + 1)
    keep = S > S[0] * 1e-10  # the rest is round-off: EQKE has rank <= min(d_model, d_head)
    ax.semilogy(idx[keep], S[keep], "o-", ms=3, lw=1)
    ratio = S[0] / S[1] if S.size > 1 and S[1] > 0 else math.inf
    dropped = int((~keep).sum())
    note = (
        f" ({dropped} values below $10^{{-10}}\\sigma_1$, i.e. round-off, not shown)"
        if dropped
        else ""
    )
    ax.set_xlabel("singular value index" + note, fontsize=9)
    ax.set_ylabel("singular value (log scale)")
    ax.set_title(f"{title}\n$\\sigma_1 / \\sigma_2$ = {ratio:.3g}", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)
    return fig


def ablation_markdown(info: dict) -> str:
    rows = info.get("ablations") or []
    method = info.get("ablation_method", "?")
    n = info.get("ablation_n_inputs", 0)
    head = (
        f"Path ablations ({method}: {n:,} inputs; ties count as wrong; loss = mean cross-entropy, "
        "p(correct) = mean softmax probability of the max token)\n\n"
        "| removed paths | accuracy | normalised accuracy | loss | p(correct) | correct "
        "| incorrect |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['name']} | {r['accuracy']:.6f} | {r['normalized_accuracy']:.4f} | {r['loss']:.4f} | "
        f"{r['prob_correct']:.4f} | {r['num_correct']:,} | {r['num_incorrect']:,} |\n"
        for r in rows
    )
    return head + body


def ablation_chart(info: dict, title: str) -> Figure:
    rows = info["ablations"]
    names = [r["name"] for r in rows]
    acc = np.array([r["accuracy"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig = Figure(figsize=(10, 0.22 * len(rows) + 1.6))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    ax1.barh(y, acc, color=PALETTE[0])
    ax1.set_yticks(y, names, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("accuracy (ties wrong)")
    ax2.barh(y, loss, color=PALETTE[1])
    ax2.set_xlabel("cross-entropy loss (nats)")
    ax2.set_xlim(0, max(float(loss.max()), 1e-9) * 1.15)  # room for the labels
    for ax, values, fmt in ((ax1, acc, "{:.3f}"), (ax2, loss, "{:.3g}")):
        ax.grid(True, axis="x", alpha=0.3)
        # Every bar's value at its end: a bar of (nearly) zero would look like missing data.
        right = ax.get_xlim()[1]
        for yi, v in zip(y, values, strict=True):
            inside = v > 0.85 * right
            ax.text(
                v - 0.01 * right if inside else v + 0.01 * right,
                yi,
                fmt.format(v),
                va="center",
                ha="right" if inside else "left",
                fontsize=6,
                color="white" if inside else "black",
            )
    fig.suptitle(
        f"{title}: removing paths ({info.get('ablation_method', '?')} evaluation)", fontsize=10
    )
    fig.tight_layout()
    return fig


def mode_bounds_panel(ax, info: dict, actual: float, shuffled_mean: float) -> None:
    """Horizontal log-scale bars: per attention-error mode, the bound on the residual's max row
    range that the checker's eps gives (``noise_bound_<mode>``). For the recursive modes the
    checker's eps is the min of the paper's recursive bound and a Cauchy–Schwarz bound; where the
    analysis has the paper's part (``noise_paper_bound_<mode>``) it is drawn as an outlined bar
    behind the filled one, so the paper's value stays visible without being mistaken for the
    value the proof uses."""
    modes = [k.removeprefix("noise_bound_") for k in info if k.startswith("noise_bound_")]
    vals = [info[f"noise_bound_{m}"] for m in modes]
    paper = {m: info[f"noise_paper_bound_{m}"] for m in modes if f"noise_paper_bound_{m}" in info}
    y = np.arange(len(modes))
    if paper:
        py = [y[modes.index(m)] for m in paper]
        ax.barh(
            py,
            list(paper.values()),
            height=0.8,
            fill=False,
            edgecolor=PALETTE[4],
            hatch="///",
            lw=0.8,
            label="paper's recursive bound (the proof\nuses its min with Cauchy–Schwarz)",
        )
    ax.barh(y, vals, height=0.8, color=PALETTE[4], label="used by the proof (checker's eps)")
    for m, v in paper.items():
        ax.annotate(
            f"paper {v:.3g} → {info[f'noise_bound_{m}']:.3g}",
            (max(v, info[f"noise_bound_{m}"]), y[modes.index(m)]),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=6.5,
        )
    ax.set_yticks(y, modes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    lo = min([v for v in vals if v > 0] + [actual, shuffled_mean])
    ax.set_xlim(lo / 2, max(vals + list(paper.values()) + [actual]) * 30)  # the annotations
    ax.axvline(actual, color="k", lw=2, label="actual max row range")
    ax.axvline(shuffled_mean, color=PALETTE[2], lw=1.5, ls="--", label="mean shuffled")
    ax.set_xlabel("bound on the max row range (log scale)")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("used by"))
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=2,
    )
    ax.set_title("what each attention-error mode proves", fontsize=10)


def noise_figure(info: dict, tensors: dict, title: str) -> Figure:
    """Factor histograms with fitted normals; resampled max-row-range distributions against the
    actual residual value; and each attention-error mode's bound (log scale)."""
    fig = Figure(figsize=(13, 7.5))
    outer = fig.add_gridspec(2, 1, height_ratios=(1, 1.25), hspace=0.45)
    top = outer[0].subgridspec(1, 4, wspace=0.35)
    bottom = outer[1].subgridspec(1, 2, wspace=0.75)
    names = (
        "$E_{q}^{\\perp\\perp}$",
        "$W_Q^{\\perp}$",
        "$W_K^{\\perp T}$",
        "$\\bar{E}^{\\perp\\perp T}$",
    )
    for i, name in enumerate(names):
        ax = fig.add_subplot(top[0, i])
        x = tensors[f"noise.m{i}"].numpy().ravel()
        ax.hist(x, bins=40, density=True, color=PALETTE[0], alpha=0.7)
        mu, sd = float(x.mean()), float(x.std())
        if sd > 0:
            grid = np.linspace(x.min(), x.max(), 200)
            ax.plot(
                grid,
                np.exp(-0.5 * ((grid - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
                "k-",
                lw=1,
            )
        ax.set_title(f"entries of {name}\nN({mu:.2g}, {sd:.2g}²)", fontsize=9)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(bottom[0, 0])
    actual = info["noise_residual_max_row_diff"]
    shuf = tensors["noise.resample_shuffle"].numpy()
    gauss = tensors["noise.resample_gaussian"].numpy()
    bins = np.linspace(
        min(shuf.min(), gauss.min(), actual) * 0.95, max(shuf.max(), gauss.max(), actual) * 1.05, 30
    )
    ax.hist(shuf, bins=bins, alpha=0.6, color=PALETTE[2], label=f"shuffled factors ({shuf.size})")
    ax.hist(gauss, bins=bins, alpha=0.6, color=PALETTE[3], label=f"Gaussian factors ({gauss.size})")
    ax.axvline(actual, color="k", lw=2, label=f"actual residual: {actual:.3g}")
    ax.set_xlabel("max row range of the residual product")
    ax.set_ylabel("resamples")
    ax.legend(fontsize=8)
    ax.set_title("actual residual vs resampled (structureless) factors", fontsize=10)
    mode_bounds_panel(fig.add_subplot(bottom[0, 1]), info, actual, float(np.mean(shuf)))
    fig.suptitle(f"{title}: is the EQKE residual structureless noise?", fontsize=11)
    return fig


def write_model_figures(
    info: dict, tensors: dict, out_dir: Path, tag: str, title: str
) -> list[Path]:
    """Every per-model figure/table available in ``info``/``tensors``; returns the files."""
    written: list[Path] = []
    for name, (ttl, ylabel, xlabel) in HEATMAPS.items():
        if name in tensors:
            fig = heatmap(tensors[name].numpy(), f"{title}\n{ttl}", ylabel, xlabel)
            written += save(fig, out_dir, f"{tag}-{name}")
    if "EQKE_singular_values" in tensors:
        fig = singular_values(
            tensors["EQKE_singular_values"].numpy(), f"{title}: singular values of EQKE"
        )
        written += save(fig, out_dir, f"{tag}-EQKE-singular-values")
    if info.get("ablations"):
        md = out_dir / f"{tag}-ablations.md"
        md.write_text(f"# {title}: path ablations\n\n" + ablation_markdown(info))
        written.append(md)
        written += save(ablation_chart(info, title), out_dir, f"{tag}-ablations")
    if "noise_residual_max_row_diff" in info and "noise.m0" in tensors:
        written += save(noise_figure(info, tensors, title), out_dir, f"{tag}-noise")
    return written
