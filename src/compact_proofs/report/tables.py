"""Table 1: one row per proof family, statistics over seeds, the paper's numbers beside ours.

Rows (only those with data): brute force, cubic, best subcubic (per seed, over every subcubic
variant), then each §8.9 group's best variant per seed (labelled with the paper's row names, see
``naming``), then any other family (e.g. "adaptive"), best per seed. Per row: number of seeds,
accuracy bound and normalised bound (mean ± sample std over seeds), FLOPs (range over seeds; one
value if constant), unexplained dimension (range), asymptotic complexity, and the paper's bound,
FLOPs and unexplained dimension.
"""

import html as html_mod
import math
import re
from dataclasses import dataclass

import pandas as pd

from compact_proofs.report import naming, targets
from compact_proofs.report.data import Config, Sweep, best_per_seed
from compact_proofs.report.stats import mean_std


@dataclass(frozen=True)
class Table1Row:
    key: str  # "brute force", "cubic", "best subcubic", a subcubic group or another family
    label: str  # printed name
    group: str  # the subcubic group, "any subcubic", or "" (brute force, cubic, other families)
    n_seeds: int
    acc_mean: float
    acc_std: float
    nb_mean: float
    nb_std: float
    flops_min: float
    flops_max: float
    flops_mean: float
    ed_min: float
    ed_max: float
    complexity: str
    paper: targets.PaperRow | None


def _row(key: str, label: str, group: str, rows: pd.DataFrame, cfg: Config) -> Table1Row:
    best = best_per_seed(rows)
    acc_mean, acc_std, n = mean_std(best["accuracy_bound"])
    nb_mean, nb_std, _ = mean_std(best["normalized_bound"])
    comp = " / ".join(sorted(c for c in best["complexity"].unique() if c))
    paper_key = naming.PAPER_ROW.get(key, key)
    return Table1Row(
        key=key,
        label=label,
        group=group,
        n_seeds=n,
        acc_mean=acc_mean,
        acc_std=acc_std,
        nb_mean=nb_mean,
        nb_std=nb_std,
        flops_min=float(best["flops"].min()),
        flops_max=float(best["flops"].max()),
        flops_mean=float(best["flops"].mean()),
        ed_min=float(best["unexplained_dim"].min()),
        ed_max=float(best["unexplained_dim"].max()),
        complexity=comp,
        paper=targets.paper_row(cfg, paper_key),
    )


def table1_rows(sweep: Sweep, cfg: Config) -> list[Table1Row]:
    """The rows of Table 1 for one (K, d_vocab) configuration."""
    df = sweep.results_for(cfg)
    out = []
    fam = df["family"]
    if (fam == naming.BRUTE_FORCE).any():
        out.append(_row("brute force", "brute force", "", df[fam == naming.BRUTE_FORCE], cfg))
    if (fam == naming.CUBIC).any():
        out.append(_row("cubic", "cubic", "", df[fam == naming.CUBIC], cfg))
    sub = fam.map(naming.is_subcubic)
    if sub.any():
        out.append(_row("best subcubic", "best subcubic (per seed)", "any subcubic", df[sub], cfg))
    for group in naming.SUBCUBIC_GROUPS:
        if (fam == group).any():
            out.append(_row(group, naming.family_label(group), group, df[fam == group], cfg))
    known = {naming.BRUTE_FORCE, naming.CUBIC, *naming.SUBCUBIC_GROUPS}
    for other in sorted(set(fam) - known):
        rows = df[fam == other]
        n = rows["strategy"].nunique()
        label = other if n == 1 else f"{other}: best of {n} per seed"
        out.append(_row(other, label, "", rows, cfg))
    return out


# ------------------------------------------------------------------------------------------------
# Formatting


def fmt_pm(mean: float, std: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_sci(x: float) -> str:
    """``35181664`` -> ``"3.52e7"``."""
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant}e{int(exp)}"


def fmt_range(lo: float, hi: float, fmt) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    a, b = fmt(lo), fmt(hi)
    return a if a == b else f"{a} – {b}"


def fmt_int(x: float) -> str:
    return f"{int(round(x)):,}"


def cells(r: Table1Row) -> list[str]:
    """Formatted cells in ``HEADER`` order."""
    p = r.paper or ("", "", "")
    return [
        r.label,
        r.group,
        str(r.n_seeds),
        fmt_pm(r.acc_mean, r.acc_std),
        fmt_pm(r.nb_mean, r.nb_std),
        fmt_range(r.flops_min, r.flops_max, fmt_sci),
        fmt_range(r.ed_min, r.ed_max, fmt_int),
        r.complexity,
        p[0],
        p[1],
        p[2],
    ]


HEADER: tuple[str, ...] = (
    "proof",
    "group",
    "seeds",
    "accuracy bound",
    "normalised bound",
    "FLOPs to check",
    "unexplained dim",
    "complexity",
    "paper bound",
    "paper FLOPs",
    "paper unexpl. dim",
)


def title(cfg: Config, n_seeds: int) -> str:
    return f"Max-of-{cfg[0]}, d_vocab {cfg[1]} ({n_seeds} seed{'' if n_seeds == 1 else 's'})"


SAMPLED_NOTE = (
    "Normalised by a sampled accuracy estimate (the inputs are too many to enumerate; 95% CI "
    "in models.csv), not an exact count."
)


def sampled_truth(sweep: Sweep, cfg: Config) -> bool:
    """Whether some model of ``cfg`` has a sampled (not exact) accuracy in ``models.csv``."""
    m = sweep.models
    if m is None or "accuracy_method" not in m.columns:
        return False
    mine = m[(m["k"] == cfg[0]) & (m["d_vocab"] == cfg[1])]
    return bool((mine["accuracy_method"].astype(str) == "sampled").any())


def markdown(sweep: Sweep) -> str:
    """All configurations' Table 1 as Markdown (one table per (K, d_vocab))."""
    parts = [
        "# Table 1: proof families",
        "",
        "Mean ± sample std over seeds; per seed the best variant of the family (largest bound, "
        "then fewest FLOPs). Normalised bound = bound / that seed's true accuracy (exact where "
        "the inputs can be enumerated). The paper's row "
        "names map to its groups of subcubic proofs as documented in "
        "`compact_proofs/report/naming.py` (our reading of the paper's naming).",
        "",
    ]
    for cfg in sweep.configs():
        rows = table1_rows(sweep, cfg)
        parts += [f"## {title(cfg, len(sweep.seeds(cfg)))}", ""]
        if sampled_truth(sweep, cfg):
            parts += [SAMPLED_NOTE, ""]
        parts.append("| " + " | ".join(HEADER) + " |")
        parts.append("|" + "|".join("---" for _ in HEADER) + "|")
        for r in rows:
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |")
        parts.append("")
    return "\n".join(parts)


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "^": r"\^{}", "~": r"\~{}"}


def tex_escape(s: str) -> str:
    """LaTeX for a cell: special characters escaped, a power of integers (2^30) as math."""
    powers = re.split(r"(\d+\^\d+)", s)
    if len(powers) > 1:
        return "".join(
            f"${p.replace('^', '^{')}}}$" if i % 2 else tex_escape(p) for i, p in enumerate(powers)
        )
    s = "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)
    return s.replace("±", r"$\pm$").replace("–", "--").replace("§", r"\S{}")


# LaTeX Table 1 leaves out HEADER's two long text columns, group and complexity (they are in
# table1.md and report.html), and wraps the proof names and headers: its natural width is then
# about that of a page, not four.
_TEX_LEFT_OUT = ("group", "complexity")
_TEX_KEPT = [i for i, h in enumerate(HEADER) if h not in _TEX_LEFT_OUT]
_TEX_COLUMNS = ">{\\raggedright\\arraybackslash}p{2.3cm}" + "r" * 5 + "l" * 3  # of _TEX_KEPT
_TEX_ALIGN = "lrrrrrlll"


def _tex_header(text: str, align: str) -> str:
    """A header of several words on two lines."""
    words = text.split(" ")
    if len(words) == 1:
        return tex_escape(text)
    cut = (len(words) + 1) // 2
    lines = (" ".join(words[:cut]), " ".join(words[cut:]))
    return (
        f"\\begin{{tabular}}[b]{{@{{}}{align}@{{}}}}"
        f"{tex_escape(lines[0])}\\\\{tex_escape(lines[1])}\\end{{tabular}}"
    )


def latex(sweep: Sweep) -> str:
    """All configurations' Table 1 as LaTeX ``table`` environments (booktabs, graphicx, array),
    without the group and complexity columns."""
    out = [
        "% Table 1 generated by compact-proofs report; needs \\usepackage{booktabs,graphicx,array}",
        "",
    ]
    header = [_tex_header(HEADER[i], a) for i, a in zip(_TEX_KEPT, _TEX_ALIGN, strict=True)]
    for cfg in sweep.configs():
        rows = table1_rows(sweep, cfg)
        out += [
            "\\begin{table}[t]",
            "\\centering\\scriptsize\\setlength{\\tabcolsep}{4pt}",
            f"\\caption{{{tex_escape(title(cfg, len(sweep.seeds(cfg))))}: accuracy bounds, "
            "mean $\\pm$ std over seeds."
            + (" " + tex_escape(SAMPLED_NOTE) if sampled_truth(sweep, cfg) else "")
            + "}",
            "\\resizebox{\\linewidth}{!}{%",
            "\\begin{tabular}{" + _TEX_COLUMNS + "}",
            "\\toprule",
            " & ".join(header) + " \\\\",
            "\\midrule",
        ]
        for r in rows:
            row = cells(r)
            out.append(" & ".join(tex_escape(row[i]) for i in _TEX_KEPT) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(out)


def html_tables(sweep: Sweep) -> str:
    """Table 1 as HTML fragments (for report.html)."""
    out = []
    for cfg in sweep.configs():
        rows = table1_rows(sweep, cfg)
        out.append(f"<h3>{html_mod.escape(title(cfg, len(sweep.seeds(cfg))))}</h3>")
        if sampled_truth(sweep, cfg):
            out.append(f"<p>{html_mod.escape(SAMPLED_NOTE)}</p>")
        out.append("<table><thead><tr>" + "".join(f"<th>{html_mod.escape(h)}</th>" for h in HEADER))
        out.append("</tr></thead><tbody>")
        for r in rows:
            out.append(
                "<tr>" + "".join(f"<td>{html_mod.escape(c)}</td>" for c in cells(r)) + "</tr>"
            )
        out.append("</tbody></table>")
    return "\n".join(out)
