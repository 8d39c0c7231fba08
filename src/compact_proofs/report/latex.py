"""LaTeX ``\\newcommand`` values (reference-algorithms §11.2, statistics bugs of §13.7 fixed).

Every name is letters only (digits spelled out). ``values.tex`` prefixes each configuration's
names with ``MaxOf<K>`` (plus ``Vocab<d_vocab>`` when d_vocab != 64), e.g.
``\\MaxOfFourCubicNormalizedAccuracyMeanFloat``; ``values-k4-v64.tex`` holds the same values of
one configuration without the prefix (``\\CubicNormalizedAccuracyMeanFloat``). A ``…Float`` name
comes from ``stats.data_summary`` (Len, Min, Max, Mean, StdDev and seven percentiles).

Families (per configuration): ``NumSeeds``, ``SelectedSeed``; ``Train{Accuracy,Loss,Time}``,
``TrueAccuracy`` (models.csv); ``BruteForce{Accuracy,NumCorrect,NumIncorrect,FLOPs,ProofTime}``;
``Cubic{Accuracy,NormalizedAccuracy,CorrectCount,FLOPs,UnexplainedDimension,ProofTime}``;
``{Filter}OnlyBestAccBoundPerSeed{Accuracy,NormalizedAccuracy,FLOPs,UnexplainedDimension,
ProofTime,ProofSearchTime}`` for ``AnySubcubic``, each §8.9 group (e.g.
``SubcubicAttentionQuadraticDirectQuadratic``) and any other family; ``FrontierNumRows`` and
``Frontier{Family}NumRows``; ``BruteForceLinearBaselineSlopeFloat``;
``NormalizedAccuracyBoundVsEQKESingularRatio{Mode}LinearFit{Slope,Intercept,RSquared}Float``;
from the analysis files (over seeds): ``EQKE{FirstSingular,SecondSingular,RatioFirstTwoSingular}``,
``Ablate{Paths}{Accuracy,NormalizedAccuracy,Loss,ProbCorrect}`` (``AblateNothing``,
``AblateEUAndEQKP``, ...), ``EQKEErr{...}`` (noise scalars); and for the selected seed
``SelectedSeedResample{Shuffle,Normal}EQKEErr`` (the 100 resampled max row ranges).
"""

import csv
import math
import re
from pathlib import Path

import numpy as np

from compact_proofs.report import naming
from compact_proofs.report.data import Config, Sweep, best_per_seed
from compact_proofs.report.stats import LinearFit, data_summary

Value = int | float | str


def config_prefix(cfg: Config) -> str:
    k, v = cfg
    return naming.latex_name("MaxOf", k) + (naming.latex_name("Vocab", v) if v != 64 else "")


def _summaries(rows, fields: dict[str, str], prefix: str) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for name, column in fields.items():
        if column in rows.columns:
            out |= data_summary(rows[column], prefix + name)
    return out


PROOF_FIELDS = {
    "Accuracy": "accuracy_bound",
    "NormalizedAccuracy": "normalized_bound",
    "FLOPs": "flops",
    "UnexplainedDimension": "unexplained_dim",
    "ProofTime": "check_seconds",
    "ProofSearchTime": "search_seconds",
}


def proof_values(sweep: Sweep, cfg: Config) -> dict[str, Value]:
    df = sweep.results_for(cfg)
    out: dict[str, Value] = {"NumSeeds": len(sweep.seeds(cfg))}
    models = sweep.models_for(cfg)
    if models is not None and not models.empty:
        fields = {
            "TrainAccuracy": "train_accuracy",
            "TrainLoss": "train_loss",
            "TrainTime": "train_seconds",
        }
        fields |= {"TrueAccuracy": "accuracy", "TrueAccuracyTime": "accuracy_seconds"}
        out |= _summaries(models, fields, "")
    bf = best_per_seed(df[df["family"] == naming.BRUTE_FORCE])
    if not bf.empty:
        out |= _summaries(
            bf, {k: PROOF_FIELDS[k] for k in ("Accuracy", "FLOPs", "ProofTime")}, "BruteForce"
        )
        if "correct_count" in bf.columns and "total" in bf.columns:
            cc = np.asarray([float(x) for x in bf["correct_count"]])
            tot = np.asarray([float(x) for x in bf["total"]])
            out |= data_summary(cc, "BruteForceNumCorrect") | data_summary(
                tot - cc, "BruteForceNumIncorrect"
            )
    cub = best_per_seed(df[df["family"] == naming.CUBIC])
    if not cub.empty:
        out |= _summaries(cub, PROOF_FIELDS, "Cubic")
        if "correct_count" in cub.columns:
            out |= data_summary([float(x) for x in cub["correct_count"]], "CubicCorrectCount")
    filters = {"AnySubcubic": df["family"].map(naming.is_subcubic)}
    known = {naming.BRUTE_FORCE, naming.CUBIC}
    for fam in sorted(set(df["family"]) - known):
        filters[naming.latex_name(fam)] = df["family"] == fam
    for name, mask in filters.items():
        best = best_per_seed(df[mask])
        if not best.empty:
            out |= _summaries(best, PROOF_FIELDS, f"{name}OnlyBestAccBoundPerSeed")
    if "on_frontier" in df.columns:
        out["FrontierNumRows"] = int(df["on_frontier"].sum())
        for fam in sorted(set(df["family"])):
            out[naming.latex_name("Frontier", fam, "NumRows")] = int(
                (df["on_frontier"] & (df["family"] == fam)).sum()
            )
    return out


def fit_values(fits: dict[str, LinearFit]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for mode, fit in fits.items():
        base = naming.latex_name(
            "NormalizedAccuracyBoundVsEQKESingularRatio", naming.camel(mode), "LinearFit"
        )
        out[base + "Len"] = fit.n
        out[base + "SlopeFloat"] = fit.slope
        out[base + "InterceptFloat"] = fit.intercept
        out[base + "RSquaredFloat"] = fit.r_squared
    return out


def ablation_name(ablated: list[str]) -> str:
    return "AblateNothing" if not ablated else "Ablate" + "And".join(ablated)


def analysis_values(sweep: Sweep, cfg: Config) -> dict[str, Value]:
    infos = [info for (k, v, _), info in sorted(sweep.analysis.items()) if (k, v) == cfg]
    if not infos:
        return {}
    out: dict[str, Value] = {}

    def col(key: str) -> list[float]:
        return [float(i.get(key, math.nan)) for i in infos]

    out |= data_summary(col("eqke_sigma1"), "EQKEFirstSingular")
    out |= data_summary(col("eqke_sigma2"), "EQKESecondSingular")
    out |= data_summary(col("eqke_sigma_ratio"), "EQKERatioFirstTwoSingular")
    per_combo: dict[str, dict[str, list[float]]] = {}
    for info in infos:
        for row in info.get("ablations") or []:
            d = per_combo.setdefault(ablation_name(row["ablated"]), {})
            for field, key in (
                ("Accuracy", "accuracy"),
                ("NormalizedAccuracy", "normalized_accuracy"),
                ("Loss", "loss"),
                ("ProbCorrect", "prob_correct"),
            ):
                d.setdefault(field, []).append(float(row[key]))
    for name, fields in per_combo.items():
        for field, values in fields.items():
            out |= data_summary(values, name + field)
    noise_keys = sorted(
        {k for i in infos for k in i if k.startswith("noise_") and isinstance(i[k], float)}
    )
    for key in noise_keys:
        out |= data_summary(col(key), naming.latex_name("EQKEErr", key.removeprefix("noise_")))
    return out


def selected_seed_values(tensors: dict) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for key, name in (("noise.resample_shuffle", "Shuffle"), ("noise.resample_gaussian", "Normal")):
        if key in tensors:
            out |= data_summary(tensors[key].numpy(), f"SelectedSeedResample{name}EQKEErr")
    return out


NAME_RE = re.compile(r"^[A-Za-z]+$")


def format_value(v: Value) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return repr(float(v)) if math.isfinite(v) else "n/a"
    return str(v)


def write_values(values: dict[str, Value], tex_path: Path, csv_path: Path | None = None) -> None:
    """Write ``\\newcommand{\\Name}{value}`` lines (and a ``name,value`` CSV)."""
    bad = [n for n in values if not NAME_RE.match(n)]
    if bad:
        raise ValueError(f"invalid LaTeX command names: {bad[:5]}")
    lines = ["% generated by compact-proofs report; values only, names are letters only"]
    lines += [f"\\newcommand{{\\{name}}}{{{format_value(v)}}}" for name, v in values.items()]
    tex_path.write_text("\n".join(lines) + "\n")
    if csv_path is not None:
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "value"])
            for name, v in values.items():
                w.writerow([name, format_value(v)])
