"""Where a sweep keeps its files, how they are written (atomically) and when a stored file counts.

All paths are relative to the sweep directory (see the package docstring for the full format).
Nothing here trains or proves; the job functions in ``jobs`` use these helpers.
"""

import contextlib
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from compact_proofs.errors import UserError
from compact_proofs.storage import atomic_write

MODELS_DIR = "models"
RESULTS_DIR = "results"
ANALYSIS_DIR = "analysis"
ACCURACY_FILE = "accuracy.json"
LOCK_FILE = ".sweep.lock"
SKIPPED_SUFFIX = ".skipped.json"
FAILED_SUFFIX = ".failed.json"
RESULT_SUFFIX = ".json"
MODEL_KEY = re.compile(r"^k(\d+)-v(\d+)-s(\d+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+\-]*$")


@dataclass(frozen=True, order=True)
class ModelSpec:
    """One model of a sweep: Max-of-``k`` over ``d_vocab`` tokens, trained from ``seed``."""

    k: int
    d_vocab: int
    seed: int

    @property
    def key(self) -> str:
        """``k{K}-v{d_vocab}-s{seed}``: the model directory's and the analysis files' name."""
        return f"k{self.k}-v{self.d_vocab}-s{self.seed}"

    def model_dir(self, root: Path) -> Path:
        return root / MODELS_DIR / self.key

    def accuracy_path(self, root: Path) -> Path:
        return self.model_dir(root) / ACCURACY_FILE

    def results_dir(self, root: Path) -> Path:
        return root / RESULTS_DIR / f"k{self.k}-v{self.d_vocab}" / f"s{self.seed}"

    def result_path(self, root: Path, strategy: str, suffix: str = RESULT_SUFFIX) -> Path:
        return self.results_dir(root) / (strategy_file_stem(strategy) + suffix)

    def analysis_path(self, root: Path) -> Path:
        return root / ANALYSIS_DIR / f"{self.key}.json"


def strategy_file_stem(name: str) -> str:
    """A strategy name as a file stem: registry names are already safe; anything else is
    percent-encoded (so two names never share a file)."""
    if _SAFE_NAME.match(name) and not name.endswith((".skipped", ".failed")):
        return name
    return "%" + quote(name, safe="")


def jsonable(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, numpy/torch scalars Python
    numbers, anything else unknown its ``str``."""
    if isinstance(x, bool) or x is None or isinstance(x, int | str):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    item = getattr(x, "item", None)
    if callable(item) and getattr(x, "ndim", 0) == 0:
        with contextlib.suppress(Exception):
            return jsonable(item())
    return str(x)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``storage.atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None when it is missing, unreadable or not an
    object (a partial or corrupt file counts as absent)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def valid_result(data: dict[str, Any] | None, spec: ModelSpec, strategy: str, sha: str) -> bool:
    """Whether ``data`` is a complete proof result of ``strategy`` on this exact model."""
    if data is None or data.get("status") != "ok":
        return False
    if not _matches(data, spec, strategy, sha):
        return False
    total, count = data.get("total"), data.get("correct_count")
    if not (_is_int(total) and _is_int(count)):
        return False
    return total == spec.d_vocab**spec.k and 0 <= count <= total and _is_int(data.get("flops"))


def valid_skip(data: dict[str, Any] | None, spec: ModelSpec, strategy: str, sha: str) -> bool:
    """Whether ``data`` records that ``strategy`` refused this exact model."""
    return (
        data is not None
        and data.get("status") == "skipped"
        and _matches(data, spec, strategy, sha)
        and isinstance(data.get("reason"), str)
    )


def _matches(data: dict[str, Any], spec: ModelSpec, strategy: str, sha: str) -> bool:
    return (
        data.get("strategy") == strategy
        and data.get("k") == spec.k
        and data.get("d_vocab") == spec.d_vocab
        and data.get("seed") == spec.seed
        and data.get("model_sha256") == sha
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def valid_accuracy(data: dict[str, Any] | None, sha: str, n_inputs: int) -> bool:
    """Whether ``data`` is a complete ``api.accuracy`` result for the model with hash ``sha``."""
    if data is None or data.get("model_sha256") != sha or data.get("total") != n_inputs:
        return False
    acc = data.get("accuracy")
    if not isinstance(acc, int | float) or not 0.0 <= acc <= 1.0:
        return False
    if data.get("method") == "exact":
        correct = data.get("correct")
        return _is_int(correct) and 0 <= correct <= n_inputs
    return data.get("method") == "sampled"


@contextlib.contextmanager
def sweep_lock(root: Path):
    """Hold an exclusive advisory lock on ``root/.sweep.lock`` for one sweep at a time (released
    by the OS if the process dies). A no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another sweep is running in {root}; wait for it to finish or use another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files and directories left by killed writers (hidden ``*.tmp`` files of
    ``atomic_write_text`` and the analysis writer, ``.NAME.tmp-*``/``.NAME.old-*`` directories of
    ``storage.save_model``). Only call this while holding ``sweep_lock``. Returns the count."""
    removed = 0
    if root.is_dir():  # the tables' own temporaries
        for p in root.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed += 1
    for sub in (RESULTS_DIR, ANALYSIS_DIR, MODELS_DIR):
        base = root / sub
        if not base.is_dir():
            continue
        for p in sorted(base.rglob(".*")):
            name = p.name
            if p.is_file() and name.endswith(".tmp"):
                p.unlink(missing_ok=True)
                removed += 1
            elif p.is_dir() and (".tmp-" in name or ".old-" in name):
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
    return removed
