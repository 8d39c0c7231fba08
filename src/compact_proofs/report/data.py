"""Reading a sweep directory: ``results.csv``, ``models.csv`` and ``analysis/*.json``.

The report is computed from these files alone (it never retrains or reproves).
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from compact_proofs.analysis import KEY_PATTERN, load_analysis
from compact_proofs.errors import UserError
from compact_proofs.report import naming

REQUIRED_RESULT_COLUMNS: tuple[str, ...] = (
    "k",
    "d_vocab",
    "seed",
    "strategy",
    "family",
    "accuracy_bound",
    "flops",
    "unexplained_dim",
)
NUMERIC_RESULT_COLUMNS: tuple[str, ...] = (
    "accuracy_bound",
    "true_accuracy",
    "normalized_bound",
    "flops",
    "int_ops",
    "unexplained_dim",
    "search_seconds",
    "check_seconds",
)
REQUIRED_MODEL_COLUMNS: tuple[str, ...] = ("k", "d_vocab", "seed", "accuracy")

Config = tuple[int, int]  # (K, d_vocab)


@dataclass
class Sweep:
    """Everything the report reads.

    Attributes:
        root: the sweep directory.
        results: one row per (model, strategy); adds ``attn_err`` (subcubic attention-error mode
            or None) and fills ``normalized_bound`` from ``true_accuracy`` or ``models.csv``
            where the results row lacks it.
        models: ``models.csv`` (None if absent).
        analysis: per-model analysis ``info`` dicts keyed by ``(K, d_vocab, seed)``.
        notes: problems found while reading (shown in the report index).
    """

    root: Path
    results: pd.DataFrame
    models: pd.DataFrame | None
    analysis: dict[tuple[int, int, int], dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    def configs(self) -> list[Config]:
        pairs = self.results[["k", "d_vocab"]].drop_duplicates().itertuples(index=False)
        return sorted((int(k), int(v)) for k, v in pairs)

    def results_for(self, cfg: Config) -> pd.DataFrame:
        r = self.results
        return r[(r["k"] == cfg[0]) & (r["d_vocab"] == cfg[1])]

    def models_for(self, cfg: Config) -> pd.DataFrame | None:
        if self.models is None:
            return None
        m = self.models
        return m[(m["k"] == cfg[0]) & (m["d_vocab"] == cfg[1])]

    def seeds(self, cfg: Config) -> list[int]:
        return sorted(int(s) for s in self.results_for(cfg)["seed"].unique())

    def analysis_tensors(self, cfg: Config, seed: int) -> dict:
        from compact_proofs.analysis import analysis_key

        key = analysis_key(cfg[0], cfg[1], seed)
        if not (self.analysis_dir / f"{key}.json").is_file():
            return {}
        return load_analysis(self.analysis_dir, key, tensors=True)[1]


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(
            f"cannot read {path} as CSV ({err}); rerun the sweep to rewrite it"
        ) from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)}; it must come from `compact-proofs sweep`"
        )
    return df


def _to_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def load_sweep(sweep_dir: str | os.PathLike) -> Sweep:
    """Read a sweep directory (see the module docstring).

    Raises:
        UserError: the directory or ``results.csv`` is missing or malformed.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserError(f"sweep directory {root} {what}; pass the --out of `compact-proofs sweep`")
    res_path = root / "results.csv"
    if not res_path.is_file():
        raise UserError(f"{res_path} not found; run `compact-proofs sweep --out {root}` first")
    results = _read_csv(res_path, REQUIRED_RESULT_COLUMNS)
    if results.empty:
        raise UserError(f"{res_path} has no rows; run the sweep to completion first")
    for c in ("k", "d_vocab", "seed"):
        results[c] = pd.to_numeric(results[c], errors="raise").astype(int)
    for c in NUMERIC_RESULT_COLUMNS:
        results[c] = _to_float(results[c]) if c in results.columns else np.nan
    results["strategy"] = results["strategy"].astype(str)
    results["family"] = results["family"].astype(str)
    if "complexity" not in results.columns:
        results["complexity"] = ""
    results["complexity"] = results["complexity"].fillna("").astype(str)
    notes: list[str] = []
    newer = _results_newer_than(root, res_path)
    if newer:
        notes.append(
            f"{newer} result file{'s are' if newer > 1 else ' is'} newer than results.csv "
            "(an interrupted sweep?): run the "
            "same `compact-proofs sweep` again to finish it and include them"
        )
    models = None
    mod_path = root / "models.csv"
    if mod_path.is_file():
        models = _read_csv(mod_path, REQUIRED_MODEL_COLUMNS)
        for c in ("k", "d_vocab", "seed"):
            models[c] = pd.to_numeric(models[c], errors="raise").astype(int)
        for c in models.columns:
            if c not in ("k", "d_vocab", "seed", "model_sha256", "accuracy_method"):
                models[c] = _to_float(models[c])
    else:
        notes.append(
            "models.csv not found: training statistics and true accuracies come from "
            "results.csv only"
        )
    _fill_normalized(results, models)
    results = _drop_unsound(results, notes)
    if results.empty:
        raise UserError(f"every row of {res_path} is unsound: {' '.join(notes)}")
    results["attn_err"] = results["strategy"].map(naming.attn_err_mode)
    results = results.reset_index(drop=True)
    sweep = Sweep(root=root, results=results, models=models, notes=notes)
    sweep.analysis = _load_analysis_infos(sweep.analysis_dir, notes)
    return sweep


def _results_newer_than(root: Path, table: Path) -> int:
    """How many per-unit result files (``results/*/*/*.json``) are newer than ``table``."""
    since = table.stat().st_mtime
    return sum(p.stat().st_mtime > since for p in root.glob("results/*/*/*.json"))


def _drop_unsound(results: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """``results`` without the rows whose bound exceeds the exact correct count (a soundness bug
    in that strategy: such a "bound" is not a theorem, and would top every frontier), each
    named in ``notes``."""
    if not {"correct_count", "true_correct"} <= set(results.columns):
        return results
    # float64 compares exactly: an exact correct count is known only below 2^53 (brute force)
    claimed = pd.to_numeric(results["correct_count"], errors="coerce")
    true = pd.to_numeric(results["true_correct"], errors="coerce")
    bad = true.notna() & (claimed > true)
    for r in results[bad].itertuples():
        notes.append(
            f"UNSOUND result left out of every table and figure: {r.strategy} on Max-of-{r.k} "
            f"(d_vocab {r.d_vocab}) seed {r.seed} claims {int(r.correct_count)} correct inputs, "
            f"but only {int(r.true_correct)} are"
        )
    return results[~bad]


def _fill_normalized(results: pd.DataFrame, models: pd.DataFrame | None) -> None:
    nb = results["normalized_bound"].copy()
    from_true = results["accuracy_bound"] / results["true_accuracy"].where(
        results["true_accuracy"] > 0
    )
    nb = nb.fillna(from_true)
    if models is not None and nb.isna().any():
        acc = models.drop_duplicates(["k", "d_vocab", "seed"]).set_index(["k", "d_vocab", "seed"])[
            "accuracy"
        ]
        keys = pd.MultiIndex.from_frame(results[["k", "d_vocab", "seed"]])
        true_acc = pd.Series(acc.reindex(keys).to_numpy(), index=results.index)
        nb = nb.fillna(results["accuracy_bound"] / true_acc.where(true_acc > 0))
    results["normalized_bound"] = nb


def _load_analysis_infos(directory: Path, notes: list[str]) -> dict[tuple[int, int, int], dict]:
    out: dict[tuple[int, int, int], dict] = {}
    if not directory.is_dir():
        notes.append("no analysis/ directory: sigma-ratio figure and per-model figures are skipped")
        return out
    for js in sorted(directory.glob("*.json")):
        match = KEY_PATTERN.match(js.stem)
        if match is None:
            continue
        try:
            out[tuple(int(x) for x in match.groups())] = json.loads(js.read_text())
        except json.JSONDecodeError:
            notes.append(f"skipped unreadable analysis file {js.name}")
    return out


def best_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Per (K, d_vocab, seed), the row with the largest accuracy bound (ties: fewest FLOPs)."""
    if df.empty:
        return df
    ordered = df.sort_values(
        ["k", "d_vocab", "seed", "accuracy_bound", "flops"],
        ascending=[True, True, True, False, True],
    )
    return ordered.drop_duplicates(["k", "d_vocab", "seed"], keep="first")


def sigma_ratio_column(sweep: Sweep, df: pd.DataFrame) -> pd.Series:
    """sigma1/sigma2 of EQKE for each row's model, from the analysis files (NaN where absent)."""
    ratio = {key: info.get("eqke_sigma_ratio", math.nan) for key, info in sweep.analysis.items()}
    keys = zip(df["k"], df["d_vocab"], df["seed"], strict=True)
    return pd.Series(
        [ratio.get((int(a), int(b), int(c)), math.nan) for a, b, c in keys], index=df.index
    )
