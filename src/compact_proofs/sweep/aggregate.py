"""``aggregate``: the per-file results of a sweep directory as ``results.csv`` / ``models.csv``
(and ``status.csv`` for skipped and failed pairs), plus Parquet copies when pyarrow is installed.

Tables are built from the files alone (never from memory), so they are the same whether the
sweep ran in one go, was killed and resumed, or ran on a cluster. Every table is written
atomically. Integers are written exactly (``correct_count`` and ``total`` exceed 64 bits for
large K). In Parquet the counts of inputs (``correct_count``, ``total``, ``true_correct``,
``correct``) are always exact 76-digit decimals, so that every sweep's files share one schema
(64**20 does not fit in int64); pandas reads them as ``Decimal`` objects: ``.astype(float)``
for arithmetic, ``.map(int)`` for exact integers. Costs are float64 (``parquet_type``).
"""

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact_proofs import storage
from compact_proofs.errors import UserError
from compact_proofs.sweep import layout
from compact_proofs.sweep.layout import ModelSpec

RESULT_COLUMNS: tuple[str, ...] = (
    "k",
    "d_vocab",
    "seed",
    "strategy",
    "family",
    "complexity",
    "correct_count",
    "total",
    "accuracy_bound",
    "true_correct",
    "true_accuracy",
    "normalized_bound",
    "flops",
    "int_ops",
    "unexplained_dim",
    "search_seconds",
    "check_seconds",
    "model_sha256",
    "version",
)
MODEL_COLUMNS: tuple[str, ...] = (
    "k",
    "d_vocab",
    "seed",
    "model_sha256",
    "accuracy",
    "accuracy_method",
    "correct",
    "ci95_low",
    "ci95_high",
    "train_loss",
    "train_accuracy",
    "train_seconds",
    "accuracy_seconds",
)
STATUS_COLUMNS: tuple[str, ...] = ("k", "d_vocab", "seed", "strategy", "status", "reason")


@dataclass
class AggregateSummary:
    """What ``aggregate`` wrote.

    Attributes:
        results_rows, model_rows, status_rows: rows in results.csv, models.csv, status.csv.
        written: the files written.
        ignored: result files that are corrupt, partial, inconsistent with their path, or about
            another model than the one stored in ``models/`` (not counted; the next
            ``run_sweep`` redoes them).
        notes: e.g. "Parquet skipped: pyarrow is not installed".
    """

    results_rows: int = 0
    model_rows: int = 0
    status_rows: int = 0
    written: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _spec_of(seed_dir: Path) -> ModelSpec | None:
    """``results/k{K}-v{V}/s{seed}`` -> its ModelSpec (None for anything else)."""
    m = layout.MODEL_KEY.match(f"{seed_dir.parent.name}-{seed_dir.name}")
    return None if m is None else ModelSpec(*(int(g) for g in m.groups()))


_KINDS = (("skipped", layout.SKIPPED_SUFFIX), ("failed", layout.FAILED_SUFFIX))


def _result_files(root: Path):
    """Yields ``(spec, strategy-file stem, kind, path)`` for every visible ``*.json`` under
    ``results/`` (kind: "ok", "skipped" or "failed")."""
    base = root / layout.RESULTS_DIR
    if not base.is_dir():
        return
    for seed_dir in sorted(p for p in base.glob("k*-v*/s*") if p.is_dir()):
        spec = _spec_of(seed_dir)
        if spec is None:
            continue
        for path in sorted(seed_dir.glob("*.json")):
            name = path.name
            if name.startswith("."):
                continue
            for kind, suffix in (
                ("skipped", layout.SKIPPED_SUFFIX),
                ("failed", layout.FAILED_SUFFIX),
            ):
                if name.endswith(suffix):
                    yield spec, name[: -len(suffix)], kind, path
                    break
            else:
                yield spec, name[: -len(layout.RESULT_SUFFIX)], "ok", path


def collect(root: Path) -> tuple[list[dict], list[dict], list[Path]]:
    """Result rows, status rows (skipped / failed pairs without a result) and ignored files."""
    rows: dict[tuple[ModelSpec, str], dict] = {}
    others: dict[tuple[ModelSpec, str], dict] = {}
    ignored: list[Path] = []
    model_sha: dict[ModelSpec, str | None] = {}
    for spec, stem, kind, path in _result_files(root):
        data = layout.read_json(path)
        strategy = data.get("strategy") if data else None
        sha = data.get("model_sha256") if data else None
        if spec not in model_sha:
            meta = layout.read_json(spec.model_dir(root) / storage.META_FILE) or {}
            model_sha[spec] = meta.get("weights_sha256")
        stale = model_sha[spec] is not None and sha != model_sha[spec]
        if not isinstance(strategy, str) or layout.strategy_file_stem(strategy) != stem or stale:
            ignored.append(path)
            continue
        if kind == "ok":
            if layout.valid_result(data, spec, strategy, sha):
                rows[(spec, strategy)] = {c: data.get(c) for c in RESULT_COLUMNS}
            else:
                ignored.append(path)
        elif kind == "skipped" and layout.valid_skip(data, spec, strategy, sha):
            others.setdefault((spec, strategy), _status_row(spec, strategy, "skipped", data))
        elif kind == "failed" and data.get("status") == "failed":
            others[(spec, strategy)] = _status_row(spec, strategy, "failed", data)
        else:
            ignored.append(path)
    for key, row in rows.items():
        reason = unsound_reason(row)
        if reason:  # kept in results.csv for inspection, flagged here (``report`` leaves it out)
            others[key] = {**{c: row[c] for c in ("k", "d_vocab", "seed", "strategy")},
                           "status": "unsound", "reason": reason}  # fmt: skip
    status = [
        row
        for key, row in sorted(others.items(), key=lambda kv: kv[0])
        if key not in rows or row["status"] == "unsound"
    ]
    ordered = [rows[key] for key in sorted(rows, key=lambda kv: (kv[0], kv[1]))]
    return ordered, status, ignored


def unsound_reason(row: dict) -> str:
    """Why a result row breaks the soundness contract ("" if it does not, or if the model's
    correct count is not known exactly): its bound exceeds the exact correct count."""
    claimed, true = row.get("correct_count"), row.get("true_correct")
    if claimed is None or true is None or claimed <= true:
        return ""
    return f"claims {claimed} correct inputs but only {true} are (a soundness bug in this strategy)"


def _status_row(spec: ModelSpec, strategy: str, status: str, data: dict) -> dict:
    reason = data.get("reason") if status == "skipped" else data.get("error")
    return {
        "k": spec.k,
        "d_vocab": spec.d_vocab,
        "seed": spec.seed,
        "strategy": strategy,
        "status": status,
        "reason": reason or "",
    }


def model_rows(root: Path) -> list[dict]:
    """One row per trained model under ``models/`` (accuracy columns empty until measured)."""
    base = root / layout.MODELS_DIR
    out = []
    if not base.is_dir():
        return out
    found = sorted(
        (ModelSpec(*(int(g) for g in m.groups())), p)
        for p in base.iterdir()
        if (m := layout.MODEL_KEY.match(p.name))
    )
    for spec, mdir in found:
        meta = layout.read_json(mdir / storage.META_FILE)
        if meta is None or not (mdir / storage.WEIGHTS_FILE).is_file():
            continue
        sha = meta.get("weights_sha256")
        acc = layout.read_json(spec.accuracy_path(root)) or {}
        if acc.get("model_sha256") != sha:
            acc = {}
        train = meta.get("train") or {}
        out.append(
            {
                "k": spec.k,
                "d_vocab": spec.d_vocab,
                "seed": spec.seed,
                "model_sha256": sha,
                "accuracy": acc.get("accuracy"),
                "accuracy_method": acc.get("method"),
                "correct": acc.get("correct"),
                "ci95_low": acc.get("ci95_low"),
                "ci95_high": acc.get("ci95_high"),
                "train_loss": train.get("loss"),
                "train_accuracy": train.get("accuracy"),
                "train_seconds": train.get("seconds"),
                "accuracy_seconds": acc.get("seconds"),
            }
        )
    return out


def _cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
    layout.atomic_write_text(path, buf.getvalue())


# Parquet types, fixed per column so every sweep's files share one schema. Counts of inputs can
# exceed 64 bits (64**20 at Max-of-20): exact decimals with 76 digits (up to about 2**252).
# Costs (flops, int_ops, unexplained_dim) are float64: exact below 2**53, and never too large
# (a strategy of your own may report d_vocab**n_ctx); results.csv keeps them exact.
COUNT_COLUMNS = frozenset({"correct_count", "total", "true_correct", "correct"})
INT_COLUMNS = frozenset({"k", "d_vocab", "seed"})
TEXT_COLUMNS = frozenset(
    {"strategy", "family", "complexity", "model_sha256", "version", "accuracy_method", "status",
     "reason"}
)  # fmt: skip


def parquet_type(column: str):
    """The Parquet (pyarrow) type of a CSV column; any other column is float64."""
    import pyarrow as pa

    if column in COUNT_COLUMNS:
        return pa.decimal256(76, 0)
    if column in INT_COLUMNS:
        return pa.int64()
    return pa.string() if column in TEXT_COLUMNS else pa.float64()


def _write_parquet(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    def convert(v, kind):
        if v is None or v == "":
            return None
        if kind == pa.string():
            return str(v)
        if kind == pa.int64():
            return int(v)
        return decimal.Decimal(int(v)) if pa.types.is_decimal(kind) else float(v)

    arrays = {}
    for c in columns:
        kind = parquet_type(c)
        arrays[c] = pa.array([convert(row.get(c), kind) for row in rows], type=kind)
    table = pa.table(arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def aggregate(out_dir: str | os.PathLike) -> AggregateSummary:
    """Write ``results.csv``, ``models.csv`` and ``status.csv`` (and ``.parquet`` copies of the
    first two when pyarrow is installed) in ``out_dir`` from its result and model files.

    ``results.csv`` has one row per valid ``results/k{K}-v{V}/s{seed}/{strategy}.json`` (each
    (model, strategy) pair exactly once), sorted by K, d_vocab, seed, strategy, with the columns
    ``RESULT_COLUMNS``; ``models.csv`` one row per model directory (``MODEL_COLUMNS``);
    ``status.csv`` one row per pair that was skipped or failed (``STATUS_COLUMNS``).

    Raises:
        UserError: ``out_dir`` is not a directory.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise UserError(f"sweep directory {root} does not exist; run `compact-proofs sweep` first")
    results, status, ignored = collect(root)
    models = model_rows(root)
    summary = AggregateSummary(len(results), len(models), len(status), ignored=ignored)
    tables = (
        ("results", RESULT_COLUMNS, results),
        ("models", MODEL_COLUMNS, models),
        ("status", STATUS_COLUMNS, status),
    )
    for name, columns, rows in tables:
        _write_csv(root / f"{name}.csv", columns, rows)
        summary.written.append(root / f"{name}.csv")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        summary.notes.append("Parquet skipped: pyarrow is not installed (pip install pyarrow)")
        return summary
    for name, columns, rows in tables[:2]:
        _write_parquet(root / f"{name}.parquet", columns, rows)
        summary.written.append(root / f"{name}.parquet")
    return summary
