"""The report (compact_proofs.report) on a synthetic sweep directory: every file is produced,
Table 1 numbers equal independently computed statistics, the Pareto frontier, LaTeX names and
percentiles."""

import csv
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from compact_proofs import analysis
from compact_proofs.report import frontier, latex, make_report, naming, stats, tables
from compact_proofs.report.data import load_sweep
from compact_proofs.weights import Weights

RESULT_FIELDS = (
    "k d_vocab seed strategy family complexity correct_count total accuracy_bound true_correct "
    "true_accuracy normalized_bound flops int_ops unexplained_dim search_seconds check_seconds "
    "model_sha256 version"
).split()
MODEL_FIELDS = (
    "k d_vocab seed model_sha256 accuracy accuracy_method correct ci95_low ci95_high train_loss "
    "train_accuracy train_seconds accuracy_seconds"
).split()
# (EUPU mode, attention mode, attention-error mode): one per §8.9 group, plus extras
SUBCUBIC_SAMPLE = (
    ("global_max_diff_exact", "mean_query+diff", "exact_EQKE+max_diff_exact"),
    ("max_diff_exact", "mean_query+diff", "svd"),
    ("mean_query+max_diff", "mean_query+diff", "max_diff_exact"),
    ("mean_query+max_diff", "drop_average_query_per_output_logit_reasoning", "max_diff"),
    ("max_diff_exact", "mean_query+diff", "max_diff_subproduct_recursive"),
    ("max_diff", "mean_query+diff", "mean+max_diff_subproduct_recursive"),
    ("global_max_diff_exact", "mean_query+diff", "svd"),
)
REL_LEVEL = {  # rough normalised bound per group, for plausible fake data
    "subcubic": 0.8,
    "subcubic (attention-vocab-model-squared)": 0.68,
    "subcubic (direct-quadratic)": 0.63,
    "subcubic (attention-vocab-model-squared, direct-quadratic)": 0.61,
    "subcubic (attention-quadratic)": 0.32,
    "subcubic (attention-quadratic, direct-quadratic)": 0.28,
}


def fake_rows(
    k: int, v: int, seed: int, rng: np.random.Generator, variants
) -> tuple[list[dict], dict]:
    total = v**k
    true_correct = int(total * (0.999 - 0.002 * rng.random()))
    true_acc = true_correct / total
    sha = f"{seed:064x}"
    model = {
        "k": k,
        "d_vocab": v,
        "seed": seed,
        "model_sha256": sha,
        "accuracy": true_acc,
        "accuracy_method": "exact",
        "correct": true_correct,
        "ci95_low": "",
        "ci95_high": "",
        "train_loss": 0.01 + 0.01 * rng.random(),
        "train_accuracy": 0.99 + 0.01 * rng.random(),
        "train_seconds": 20 + rng.random(),
        "accuracy_seconds": 2 + rng.random(),
    }

    def row(strategy, family, complexity, correct, flops, ed):
        return {
            "k": k,
            "d_vocab": v,
            "seed": seed,
            "strategy": strategy,
            "family": family,
            "complexity": complexity,
            "correct_count": correct,
            "total": total,
            "accuracy_bound": correct / total,
            "true_correct": true_correct,
            "true_accuracy": true_acc,
            "normalized_bound": correct / true_correct,
            "flops": flops,
            "int_ops": 10 * v,
            "unexplained_dim": ed,
            "search_seconds": rng.random(),
            "check_seconds": rng.random(),
            "model_sha256": sha,
            "version": "0.1.0",
        }

    rows = [
        row(
            "brute-force",
            "brute force",
            "O(d_vocab^n_ctx)",
            true_correct,
            52221 * total,
            v ** (k + 1),
        ),
        row(
            "cubic",
            "cubic",
            "O(d_vocab^3 n_ctx^2)",
            int(true_correct * (0.95 + 0.01 * rng.random())),
            35181664,
            3 * v * v + 2 * k * v,
        ),
    ]
    for eu, at, er in variants:
        fam = naming.group_label(eu, er)
        rel = min(1.0, max(0.0, REL_LEVEL[fam] + 0.04 * rng.standard_normal()))
        flops = int(2e6 + 3e6 * rng.random())
        ed = 4290 + int(6000 * rng.random())
        rows.append(
            row(
                naming.subcubic_name(eu, at, er),
                fam,
                "O(d_vocab^2 n_ctx^2 + d_vocab^2 d_model)",
                int(true_correct * rel),
                flops,
                ed,
            )
        )
    return rows, model


def write_fake_sweep(
    root: Path,
    *,
    k: int,
    v: int,
    seeds,
    variants=SUBCUBIC_SAMPLE,
    real_analysis: bool = True,
    d: int = 8,
) -> Path:
    """A sweep directory in the formats of sweep.py. With ``real_analysis`` every seed gets a real
    ``analyze_model`` of a random model of matching shape; otherwise only JSON with a sigma ratio
    (and one real analysis, without ablations, for seed 123 if present)."""
    rng = np.random.default_rng(0)
    results, models = [], []
    for seed in seeds:
        rows, model = fake_rows(k, v, seed, rng, variants)
        results += rows
        models.append(model)
    root.mkdir(parents=True, exist_ok=True)
    for name, fields, data in (
        ("results.csv", RESULT_FIELDS, results),
        ("models.csv", MODEL_FIELDS, models),
    ):
        with (root / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(data)
    for seed in seeds:
        key = analysis.analysis_key(k, v, seed)
        if real_analysis or seed == 123:
            w = random_weights(v, k, d, seed)
            info, tensors = analysis.analyze_model(
                w, ablations=real_analysis, ablation_samples=4096
            )
        else:
            info, tensors = (
                {"eqke_sigma_ratio": 1 + 20 * float(rng.random()), "eqke_sigma1": 1.0},
                {},
            )
        analysis.save_analysis(root / "analysis", key, info, tensors)
    return root


def random_weights(V: int, n: int, d: int, seed: int) -> Weights:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).float()

    W_E = r(V, d)
    W_E[:, 0] += torch.arange(V) * 0.5  # some structure: a size direction
    return Weights(
        W_E=W_E, W_pos=r(n, d), W_Q=r(d, d), W_K=r(d, d), W_V=r(d, d), W_O=r(d, d), W_U=r(d, V)
    )


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("sweep"), k=3, v=6, seeds=(50, 104, 123))


@pytest.fixture(scope="module")
def report_dir(sweep_dir) -> Path:
    return make_report(sweep_dir)


def test_every_file_is_written(report_dir: Path):
    expected = [
        "table1.md",
        "table1.tex",
        "values.tex",
        "values.csv",
        "values-k3-v6.tex",
        "index.md",
        "frontier.csv",
        "report.html",
    ]
    stems = [
        "bound-vs-flops-all",
        "bound-vs-flops-frontier",
        "unexplained-dim-vs-flops",
        "bound-vs-sigma-ratio",
    ]
    stems += [
        f"s123-{x}"
        for x in (
            "EQKE",
            "EQKP",
            "EVOU",
            "PVOU",
            "EUPU",
            "EQKE-singular-values",
            "ablations",
            "noise",
        )
    ]
    expected += [f"figures/k3-v6-{s}.{ext}" for s in stems for ext in ("png", "pdf")]
    expected.append("figures/k3-v6-s123-ablations.md")
    for name in expected:
        p = report_dir / name
        assert p.is_file() and p.stat().st_size > 0, name
    html = (report_dir / "report.html").read_text()
    assert "plotly" in html and "<script" in html and "Table 1" in html
    assert not re.search(r"<script[^>]*\ssrc=", html)  # plotly.js inlined: works offline


def test_index_names_the_sweep_directory_not_a_local_path(report_dir: Path, sweep_dir: Path):
    index = (report_dir / "index.md").read_text()
    assert f"`{sweep_dir.name}`" in index and str(sweep_dir.parent) not in index
    for line in index.splitlines():
        if line.startswith("- ["):
            assert (report_dir / line.split("](")[1].rstrip(")")).is_file(), line


def _row(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r}")


def test_table1_numbers_equal_independent_statistics(sweep_dir: Path, report_dir: Path):
    md = (report_dir / "table1.md").read_text()
    with (sweep_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_seed: dict[int, list[dict]] = {}
    for r in rows:
        if r["family"].startswith("subcubic"):
            by_seed.setdefault(int(r["seed"]), []).append(r)
    best = [
        max(rs, key=lambda r: (float(r["accuracy_bound"]), -float(r["flops"])))
        for rs in by_seed.values()
    ]
    nb = [int(r["correct_count"]) / int(r["true_correct"]) for r in best]
    cells = _row(md, "best subcubic (per seed)")
    assert cells[4] == f"{statistics.mean(nb):.4f} ± {statistics.stdev(nb):.4f}"
    assert cells[2] == "3"
    cubic = [r for r in rows if r["family"] == "cubic"]
    acc = [float(r["accuracy_bound"]) for r in cubic]
    rel = [float(r["normalized_bound"]) for r in cubic]
    cells = _row(md, "cubic")
    assert cells[3] == f"{statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f}"
    assert cells[4] == f"{statistics.mean(rel):.4f} ± {statistics.stdev(rel):.4f}"
    assert cells[5] == "3.52e7"
    fl = [float(r["flops"]) for r in best]
    assert cells[6] == f"{3 * 36 + 2 * 3 * 6:,}"
    assert (
        _row(md, "best subcubic (per seed)")[5]
        == f"{tables.fmt_sci(min(fl))} – {tables.fmt_sci(max(fl))}"
    )
    # every §8.9 group in the data has its row, with the paper's name
    for group in REL_LEVEL:
        assert _row(md, naming.family_label(group))[1] == group


def test_values_tex_names_are_valid_and_match_csv(report_dir: Path):
    tex = (report_dir / "values.tex").read_text().splitlines()[1:]
    names = []
    for line in tex:
        m = re.fullmatch(r"\\newcommand\{\\([A-Za-z]+)\}\{([^{}]*)\}", line)
        assert m, line
        names.append(m.group(1))
    assert len(names) == len(set(names)) > 100
    with (report_dir / "values.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["name"] for r in csv_rows] == names
    values = {r["name"]: r["value"] for r in csv_rows}
    assert values["MaxOfThreeVocabSixNumSeeds"] == "3"
    assert values["MaxOfThreeVocabSixSelectedSeed"] == "123"
    assert "MaxOfThreeVocabSixAblateNothingAccuracyMeanFloat" in values
    assert "MaxOfThreeVocabSixEQKEErrBoundMaxDiffSubproductRecursiveMaxFloat" in values
    unprefixed = (report_dir / "values-k3-v6.tex").read_text()
    assert "\\newcommand{\\CubicNormalizedAccuracyMeanFloat}" in unprefixed
    df = pd.read_csv(Path(report_dir).parent / "results.csv")
    cubic = df[df["family"] == "cubic"]["normalized_bound"]
    assert float(values["MaxOfThreeVocabSixCubicNormalizedAccuracyMeanFloat"]) == pytest.approx(
        cubic.mean(), rel=1e-12
    )
    assert float(values["MaxOfThreeVocabSixCubicNormalizedAccuracyMedianFloat"]) == pytest.approx(
        cubic.median(), rel=1e-12
    )


def test_data_summary_percentiles():
    x = np.arange(101, dtype=float)  # percentile p of 0..100 is p
    s = stats.data_summary(x, "X")
    assert s["XLen"] == 101
    assert s["XMedianFloat"] == pytest.approx(50.0)
    assert s["XQuartileOneFloat"] == pytest.approx(25.0)
    assert s["XQuartileThreeFloat"] == pytest.approx(75.0)
    assert s["XLowerWhiskerBottomEndFloat"] == pytest.approx(
        100 * 0.5 * math.erfc(3 * 0.6745 / math.sqrt(2))
    )
    assert s["XUpperWhiskerCrosshatchFloat"] == pytest.approx(91.13, abs=0.01)
    assert s["XStdDevFloat"] == pytest.approx(statistics.stdev(x))
    rng = np.random.default_rng(1)
    y = rng.normal(size=37)
    assert stats.data_summary(y, "Y")["YMedianFloat"] == pytest.approx(float(np.median(y)))


def test_latex_names():
    assert naming.latex_name("MaxOf", 4) == "MaxOfFour"
    assert naming.latex_name("Vocab", 512) == "VocabFiveHundredTwelve"
    assert naming.latex_name("subcubic (attention-quadratic, direct-quadratic)") == (
        "SubcubicAttentionQuadraticDirectQuadratic"
    )
    assert naming.latex_name("noise_bound_mean+max_diff", "x2") == "NoiseBoundMeanMaxDiffXTwo"
    assert naming.spell_number(128) == "OneHundredTwentyEight"
    assert naming.spell_number(1_000_000) == "OneMillion"
    with pytest.raises(ValueError):
        latex.write_values({"Bad1": 1}, Path("/dev/null"))


def test_pareto_frontier_hand_made():
    # (bound, flops): a=(0.5,10) b=(0.7,20) c=(0.6,30) dominated by b; d=(0.7,20) ties b (kept);
    # e=(0.4,10) dominated? no: nothing strictly cheaper than 10. f=(0.9,5) dominates everything
    # with cost > 5 and bound < 0.9: a, b, c, d. g=(nan,1) never on the frontier.
    values = [0.5, 0.7, 0.6, 0.7, 0.4, 0.9, math.nan]
    costs = [10, 20, 30, 20, 10, 5, 1]
    assert frontier.pareto_mask(values, costs).tolist() == [
        False,
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    values = [0.5, 0.7, 0.6, 0.7, 0.4]
    costs = [10, 20, 30, 20, 10]
    assert frontier.pareto_mask(values, costs).tolist() == [True, True, False, True, True]
    # per seed: a row is only dominated by rows of the same seed
    df = pd.DataFrame(
        {
            "k": 4,
            "d_vocab": 64,
            "seed": [1, 1, 2],
            "accuracy_bound": [0.5, 0.9, 0.4],
            "flops": [10, 5, 100],
        }
    )
    assert frontier.frontier(df).tolist() == [False, True, True]


def test_frontier_matches_brute_force_definition(sweep_dir: Path, report_dir: Path):
    df = load_sweep(sweep_dir).results
    on = set(
        pd.read_csv(report_dir / "frontier.csv")[["seed", "strategy"]].itertuples(
            index=False, name=None
        )
    )
    for seed, g in df.groupby("seed"):
        for r in g.itertuples():
            dominated = ((g["accuracy_bound"] > r.accuracy_bound) & (g["flops"] < r.flops)).any()
            assert ((seed, r.strategy) in on) == (not dominated)


def test_group_labels_and_counts():
    groups = [naming.group_label(e, r) for e, _, r in naming.SUBCUBIC_AXES.values()]
    assert len(naming.SUBCUBIC_AXES) == 100
    assert set(groups) == set(naming.SUBCUBIC_GROUPS)
    assert groups.count("subcubic (attention-quadratic, direct-quadratic)") == 3 * 2 * 3
    assert groups.count("subcubic (attention-vocab-model-squared, direct-quadratic)") == 3 * 2 * 5
    name = naming.subcubic_name("mean_query+max_diff", "mean_query+diff", "max_diff")
    assert name == "EUPUMeanQueryMaxDiffAttnMeanQueryDiffAttnErrMaxDiff"
    assert naming.attn_err_mode(name) == "max_diff"
    assert naming.attn_err_mode("cubic") is None


def test_bad_input_is_a_user_error(tmp_path: Path, sweep_dir: Path):
    from compact_proofs.errors import UserError

    with pytest.raises(UserError, match="not found"):
        make_report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        make_report(tmp_path / "nope")
    with pytest.raises(UserError, match="seed 7 is not in"):
        make_report(sweep_dir, seed=7, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # validated before writing anything
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="a-file exists and is not a directory"):
        make_report(sweep_dir, out=tmp_path / "a-file" / "r")
    with pytest.raises(UserError, match="is not a directory; pass the --out"):
        make_report(tmp_path / "a-file")
    (tmp_path / "results.csv").write_text("k,d_vocab\n4,64\n")
    with pytest.raises(UserError, match="lacks column"):
        make_report(tmp_path)


def test_without_plotly_everything_else_is_written(sweep_dir: Path, tmp_path: Path, monkeypatch):
    from compact_proofs.report import html

    monkeypatch.setattr(html, "available", lambda: False)
    out = make_report(sweep_dir, seed=50, out=tmp_path / "r")
    assert not (out / "report.html").exists()
    assert (out / "table1.md").is_file() and (out / "values.tex").is_file()
    assert "plotly is not installed" in (out / "index.md").read_text()
    assert not (out / "figures" / "k3-v6-s123-EQKE.png").exists()
    assert (out / "figures" / "k3-v6-s50-EQKE.png").is_file()


def test_unsound_results_are_left_out_and_named(sweep_dir: Path, tmp_path: Path, monkeypatch):
    """A row claiming more than the exact correct count is no theorem: it must not reach Table 1,
    the frontier or the figures (it would top every frontier), and the index must say so."""
    from compact_proofs.report import html

    monkeypatch.setattr(html, "available", lambda: False)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in ("results.csv", "models.csv"):
        (sweep / name).write_text((sweep_dir / name).read_text())
    df = pd.read_csv(sweep / "results.csv")
    liar = df[(df["seed"] == 50) & (df["strategy"] == "cubic")].assign(
        strategy="liar", family="liar family", flops=1
    )
    liar["correct_count"] = liar["total"]
    liar["accuracy_bound"] = 1.0
    pd.concat([df, liar]).to_csv(sweep / "results.csv", index=False)
    out = make_report(sweep, seed=50, out=tmp_path / "r")
    assert "liar" not in (out / "table1.md").read_text()
    assert "liar" not in set(pd.read_csv(out / "frontier.csv")["strategy"])
    index = (out / "index.md").read_text()
    assert "UNSOUND result left out of every table and figure: liar on Max-of-3" in index


def test_paper_numbers_printed_for_k4(tmp_path: Path):
    root = write_fake_sweep(tmp_path / "s", k=4, v=64, seeds=(1, 2), real_analysis=False)
    out = make_report(root)
    md = (out / "table1.md").read_text()
    assert "rel 0.9539 ± 0.0080" in _row(md, "cubic")
    assert "rel 0.283 ± 0.037" in _row(md, "quadratic QK & EU")
    assert "seed 1 has no per-model data" in (out / "index.md").read_text()


def test_unbudgeted_adaptive_points_stay_visible_over_budgeted_ones():
    """The unbudgeted adaptive proof ends where its largest budget ends (same FLOPs, bound and
    unexplained dimension), so both families' points coincide. In the FLOPs figures the
    unbudgeted one is an opaque ring drawn above the filled budget dots and larger than them."""
    from matplotlib.colors import to_rgba_array

    from compact_proofs.report import figures

    rows = []
    for seed in (1, 2):
        for fam, strategy, flops in (
            ("cubic", "cubic", 4e7),
            ("adaptive (budget)", "adaptive-budget-2e7", 2e7),
            ("adaptive (budget)", "adaptive-budget-1e8", 3e7),
            ("adaptive", "adaptive", 3e7),
        ):
            rows.append(
                {
                    "k": 3,
                    "d_vocab": 6,
                    "seed": seed,
                    "strategy": strategy,
                    "family": fam,
                    "accuracy_bound": 0.9 if flops == 3e7 else 0.7,
                    "normalized_bound": 0.95 if flops == 3e7 else 0.75,
                    "flops": flops,
                    "unexplained_dim": 5000.0,
                    "on_frontier": True,
                }
            )
    df = pd.DataFrame(rows)
    made = [
        figures.bound_vs_flops(df, frontier_only=False, title="t"),
        figures.bound_vs_flops(df, frontier_only=True, title="t"),
        figures.unexplained_dim_vs_flops(df, title="t"),
    ]
    for fig in made:
        ax = fig.axes[0]
        by_label = {c.get_label().split(" (rel")[0]: c for c in ax.collections}
        ring, dots = by_label["adaptive"], by_label["adaptive (budget)"]
        ring_xy = {tuple(p) for p in ring.get_offsets().tolist()}
        assert ring_xy <= {tuple(p) for p in dots.get_offsets().tolist()}  # same places
        assert ring.get_zorder() > max(c.get_zorder() for c in ax.collections if c is not ring)
        face = to_rgba_array(ring.get_facecolor())
        assert face.size == 0 or float(face[:, 3].max()) == 0.0  # hollow: the dot shows through
        assert float(to_rgba_array(ring.get_edgecolor())[:, 3].min()) == 1.0  # opaque edge
        assert ring.get_linewidths()[0] > 0
        assert float(min(ring.get_sizes())) > float(max(dots.get_sizes()))
        legend_labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("adaptive (rel") or t == "adaptive" for t in legend_labels)
    pytest.importorskip("plotly")
    from compact_proofs.report import html

    for fig in (
        html.bound_figure(df, frontier_only=False, title="t"),
        html.bound_figure(df, frontier_only=True, title="t"),
        html.dim_figure(df, title="t"),
    ):
        traces = [t for t in fig.data if t.mode == "markers"]
        names = [t.name.split(" (rel")[0] for t in traces]
        ring, dots = traces[names.index("adaptive")], traces[names.index("adaptive (budget)")]
        assert names[-1] == "adaptive"  # drawn last, on top
        assert ring.marker.symbol == "circle-open" and ring.marker.size > dots.marker.size
        ranks = {n: t.legendrank for n, t in zip(names, traces, strict=True)}
        assert ranks["adaptive"] < ranks["adaptive (budget)"]  # legend order unchanged


def test_noise_figure_plots_the_recursive_bounds_the_proof_uses():
    """In the noise figure's "what each attention-error mode proves" panel the filled bar of a
    recursive mode is the checker's eps (min of the paper's recursive bound and Cauchy–Schwarz,
    recomputed here from the analysis' two parts), and the paper's bound alone is a separate,
    hollow bar that is never shorter."""
    from compact_proofs.analysis import noise
    from compact_proofs.report import model_figures

    w = random_weights(12, 3, 8, 7)
    info, tensors = noise.noise_analysis(w, n_resamples=5)
    fig = model_figures.noise_figure(info, tensors, "t")
    ax = next(a for a in fig.axes if a.get_title() == "what each attention-error mode proves")
    modes = [t.get_text() for t in ax.get_yticklabels()]
    filled = [b for b in ax.patches if b.get_fill()]
    hollow = {round(b.get_y() + b.get_height() / 2): b for b in ax.patches if not b.get_fill()}
    assert [round(b.get_y() + b.get_height() / 2) for b in filled] == list(range(len(modes)))
    recursive = [m for m in modes if m.endswith("_recursive")]
    assert len(recursive) == 3 and set(hollow) == {modes.index(m) for m in recursive}
    for i, mode in enumerate(modes):
        assert filled[i].get_width() == info[f"noise_bound_{mode}"]
    for mode in recursive:
        i = modes.index(mode)
        paper, cs = info[f"noise_paper_bound_{mode}"], info[f"noise_cs_bound_{mode}"]
        assert filled[i].get_width() == min(paper, cs)
        assert hollow[i].get_width() == paper >= filled[i].get_width()


def test_family_colours_are_fixed_and_distinct():
    """A family keeps its colour whatever else a report holds; your own families get colours no
    built-in family uses."""
    from compact_proofs.report import figures

    every = [*naming.FAMILY_ORDER, "adaptive", "adaptive (budget)", "mine", "yours"]
    full = figures.family_colors(every)
    assert len(set(full.values())) == len(every)
    assert figures.family_colors(["adaptive", "mine"]) == {k: full[k] for k in ("adaptive", "mine")}
    assert list(full)[:2] == [naming.BRUTE_FORCE, naming.CUBIC]


def test_table1_says_when_it_normalises_by_a_sampled_estimate(sweep_dir: Path, tmp_path: Path):
    from compact_proofs.report import tables
    from compact_proofs.report.data import load_sweep

    exact_md = tables.markdown(load_sweep(sweep_dir))
    assert tables.SAMPLED_NOTE not in exact_md
    root = tmp_path / "sampled"
    shutil.copytree(sweep_dir, root)
    models = pd.read_csv(root / "models.csv")
    models["accuracy_method"] = "sampled"
    models.to_csv(root / "models.csv", index=False)
    sweep = load_sweep(root)
    assert tables.markdown(sweep).count(tables.SAMPLED_NOTE) == len(sweep.configs())
    assert tables.latex(sweep).count(tables.tex_escape(tables.SAMPLED_NOTE)) == len(sweep.configs())


def test_latex_table1_has_one_cell_per_column_and_compiles(sweep_dir: Path, tmp_path: Path):
    """Every row has as many cells as the tabular has columns, powers are math, and (where
    pdflatex is installed) the tables compile with the packages the header names, at a natural
    width under twice a page's."""
    tex = tables.latex(load_sweep(sweep_dir))
    spec = re.search(r"\\begin\{tabular\}\{(.*)\}\n", tex).group(1)
    n_cols = len(re.sub(r">\{[^}]*\}|\{[^}]*\}", "", spec))
    body = re.findall(r"\\midrule\n(.*?)\\bottomrule", tex, flags=re.S)
    assert body and all(row.count(" & ") == n_cols - 1 for b in body for row in b.splitlines())
    assert tables.tex_escape("64^5 = 2^30 d_vocab^3") == r"$64^{5}$ = $2^{30}$ d\_vocab\^{}3"
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    packages = re.search(r"\\usepackage\{([a-z,]+)\}", tex).group(1)
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage{" + packages + "}\n"
        "\\renewcommand{\\resizebox}[3]{\\sbox0{#3}\\typeout{WIDTH \\the\\wd0}\\usebox0}\n"
        "\\begin{document}\n" + tex + "\\end{document}\n"
    )
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:]
    widths = [float(w) for w in re.findall(r"WIDTH ([\d.]+)pt", run.stdout)]
    assert widths and max(widths) < 2 * 345  # article's \linewidth is 345pt


def test_ablation_chart_labels_every_bar_with_its_value():
    """A bar of zero (accuracy with every path removed) or nearly zero (a small loss) reads as
    its value, not as missing data."""
    from compact_proofs.report.model_figures import ablation_chart

    rows = [
        {"name": "none", "accuracy": 0.9991, "loss": 0.0041},
        {"name": "EVOU", "accuracy": 0.031, "loss": 4.13},
        {"name": "EU+EVOU+PVOU", "accuracy": 0.0, "loss": 4.16},
    ]
    fig = ablation_chart({"ablations": rows, "ablation_method": "exact"}, "t")
    acc_ax, loss_ax = fig.axes
    assert [t.get_text() for t in acc_ax.texts] == ["0.999", "0.031", "0.000"]
    assert [t.get_text() for t in loss_ax.texts] == ["0.0041", "4.13", "4.16"]
    assert loss_ax.get_xlim()[1] > 4.16  # the largest label fits


@pytest.mark.slow  # a second report: about 25 s
def test_a_regenerated_report_is_byte_identical(report_dir: Path, sweep_dir: Path, tmp_path):
    """Same rows, same files (index.md's generation time aside, which may also come out equal):
    no date in the PDFs, no random element ids in report.html, so an unchanged figure makes no
    diff in version control."""
    again = make_report(sweep_dir, out=tmp_path / "again")
    names = sorted(p.relative_to(report_dir) for p in report_dir.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    differ = [n for n in names if (report_dir / n).read_bytes() != (again / n).read_bytes()]
    assert differ in ([], [Path("index.md")])
