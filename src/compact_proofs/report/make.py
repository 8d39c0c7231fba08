"""``make_report``: everything the report writes, from a sweep directory's files alone."""

import logging
import os
import time
from pathlib import Path

from compact_proofs import storage
from compact_proofs.errors import UserError
from compact_proofs.report import figures, latex, model_figures, tables
from compact_proofs.report import html as html_mod
from compact_proofs.report.data import Config, Sweep, load_sweep, sigma_ratio_column
from compact_proofs.report.frontier import FRONTIER_NOTE, brute_force_slope, frontier

log = logging.getLogger(__name__)
PREFERRED_SEED = 123


def choose_seed(sweep: Sweep, seed: int | None) -> int:
    seeds = sorted(int(s) for s in sweep.results["seed"].unique())
    if seed is None:
        return PREFERRED_SEED if PREFERRED_SEED in seeds else seeds[0]
    if seed not in seeds:
        shown = ", ".join(map(str, seeds[:10])) + (", ..." if len(seeds) > 10 else "")
        raise UserError(
            f"seed {seed} is not in {sweep.root / 'results.csv'}; choose one of {shown}"
        )
    return seed


def _tag(cfg: Config) -> str:
    return f"k{cfg[0]}-v{cfg[1]}"


def _title(cfg: Config) -> str:
    return f"Max-of-{cfg[0]} (d_vocab {cfg[1]})"


def make_report(
    sweep_dir: str | os.PathLike, *, seed: int | None = None, out: str | os.PathLike | None = None
) -> Path:
    """Write Table 1, figures, ``values.tex``/``values.csv``, ``report.html`` and ``index.md``.

    Args:
        sweep_dir: a directory written by ``compact-proofs sweep`` (``results.csv``; optionally
            ``models.csv`` and ``analysis/``).
        seed: the model whose per-model figures are drawn (default 123 if present, else the
            smallest seed).
        out: output directory (default ``sweep_dir/report``).

    Returns:
        The output directory. ``index.md`` there lists every file written and any notes (e.g.
        "report.html skipped: plotly is not installed").

    Raises:
        UserError: missing or malformed sweep files, or a ``seed`` not in the sweep. Input is
            validated before anything is written.
    """
    t0 = time.perf_counter()
    sweep = load_sweep(sweep_dir)
    chosen = choose_seed(sweep, seed)
    out_dir = Path(out) if out is not None else sweep.root / "report"
    storage.refuse_file_on_path(out_dir, "report output")
    fig_dir = out_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    res = sweep.results
    res["on_frontier"] = frontier(res)
    res["sigma_ratio"] = sigma_ratio_column(sweep, res)
    notes = list(sweep.notes)
    written: list[Path] = []

    (out_dir / "table1.md").write_text(tables.markdown(sweep), encoding="utf-8")
    (out_dir / "table1.tex").write_text(tables.latex(sweep), encoding="utf-8")
    written += [out_dir / "table1.md", out_dir / "table1.tex"]
    frontier_path = out_dir / "frontier.csv"
    res[res["on_frontier"]].drop(columns=["on_frontier"]).to_csv(frontier_path, index=False)
    written.append(frontier_path)

    all_values: dict = {}
    html_sections: list[tuple[str, list]] = []
    plotly_ok = html_mod.available()
    for cfg in sweep.configs():
        df = sweep.results_for(cfg)
        tag, title = _tag(cfg), _title(cfg)
        fig = figures.bound_vs_flops(df, frontier_only=False, title=title)
        written += figures.save(fig, fig_dir, f"{tag}-bound-vs-flops-all")
        fig = figures.bound_vs_flops(df, frontier_only=True, title=title)
        written += figures.save(fig, fig_dir, f"{tag}-bound-vs-flops-frontier")
        written += figures.save(
            figures.unexplained_dim_vs_flops(df, title=title),
            fig_dir,
            f"{tag}-unexplained-dim-vs-flops",
        )
        sigma_data = figures.sigma_ratio_data(df)
        fits = figures.sigma_fits(sigma_data) if not sigma_data.empty else {}
        if sigma_data.empty:
            notes.append(
                f"{title}: no subcubic rows with a sigma1/sigma2 value; sigma-ratio figure skipped"
            )
        else:
            fig = figures.bound_vs_sigma_ratio(sigma_data, fits, title=title)
            written += figures.save(fig, fig_dir, f"{tag}-bound-vs-sigma-ratio")

        values = latex.proof_values(sweep, cfg) | {"SelectedSeed": chosen}
        values["BruteForceLinearBaselineSlopeFloat"] = brute_force_slope(df)
        values |= latex.fit_values(fits) | latex.analysis_values(sweep, cfg)

        info = sweep.analysis.get((cfg[0], cfg[1], chosen))
        model_figs: list = []
        if info is None:
            notes.append(f"{title}: no analysis file for seed {chosen}; per-model figures skipped")
        else:
            tensors = sweep.analysis_tensors(cfg, chosen)
            mtitle = f"{title}, seed {chosen}"
            model_files = model_figures.write_model_figures(
                info, tensors, fig_dir, f"{tag}-s{chosen}", mtitle
            )
            if not model_files:
                notes.append(
                    f"{title}: the analysis of seed {chosen} has no per-model data; figures skipped"
                )
            written += model_files
            values |= latex.selected_seed_values(tensors)
            if plotly_ok:
                model_figs = html_mod.model_figures(info, tensors, mtitle)
        config_tex = out_dir / f"values-{tag}.tex"
        latex.write_values(values, config_tex)
        written.append(config_tex)
        prefix = latex.config_prefix(cfg)
        all_values |= {prefix + k: v for k, v in values.items()}
        if plotly_ok:
            html_sections.append(
                (title, html_mod.config_sections(df, sigma_data, title) + model_figs)
            )

    latex.write_values(all_values, out_dir / "values.tex", out_dir / "values.csv")
    written += [out_dir / "values.tex", out_dir / "values.csv"]
    if plotly_ok:
        html_mod.write_html(
            out_dir / "report.html", html_sections, tables.html_tables(sweep), notes
        )
        written.append(out_dir / "report.html")
    else:
        notes.append(
            "report.html skipped: plotly is not installed (pip install 'compact-proofs[html]')"
        )
    for n in notes:
        log.warning(n)
    _write_index(out_dir, sweep, chosen, written, notes, time.perf_counter() - t0)
    return out_dir


def _write_index(
    out_dir: Path, sweep: Sweep, seed: int, written: list[Path], notes: list[str], secs: float
) -> None:
    n_rows = len(sweep.results)
    lines = [
        "# compact-proofs report",
        "",
        f"Sweep directory `{Path(sweep.root).name}` ({n_rows:,} proof rows; configurations: "
        + ", ".join(_title(c) for c in sweep.configs())
        + f"). Per-model figures: seed {seed}. Generated in {secs:.1f} s.",
        "",
        "## Files",
        "",
    ]
    lines += [f"- [{p.relative_to(out_dir)}]({p.relative_to(out_dir)})" for p in written]
    lines += ["", "## Notes", "", f"- {FRONTIER_NOTE}"] + [f"- {n}" for n in notes]
    (out_dir / "index.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


__all__ = ["choose_seed", "make_report"]
