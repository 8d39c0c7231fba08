"""The job functions a sweep runs, locally (joblib/loky) or on a Dask cluster.

Each job is a top-level function of picklable arguments that writes its own output files
atomically and returns a small ``Outcome`` (``run_strategies``: a list, one per strategy);
expected problems (a strategy refusing a model, an exception inside a strategy) are recorded in
files and in the outcome, never raised. Jobs read and write the sweep directory directly, so on
a cluster it must be on a filesystem every worker sees at the same path.
"""

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact_proofs import config as config_mod
from compact_proofs.errors import UserError
from compact_proofs.proofs.protocol import Strategy
from compact_proofs.sweep import layout
from compact_proofs.sweep.layout import ModelSpec
from compact_proofs.weights import Weights

ANALYSIS_MODES = ("none", "basic", "sampled", "full")
SAMPLED_ABLATION_INPUTS = 2**20
ACCURACY_SAMPLES = 1_000_000


@dataclass(frozen=True)
class Outcome:
    """What one job did.

    Args:
        kind: "model" (train + accuracy), "strategy" or "analysis".
        key: the model key ``k{K}-v{V}-s{seed}``.
        name: the strategy name ("" for other kinds).
        status: "ok", "skipped" (a strategy refused the model) or "failed".
        message: the skip reason or the error, one line.
        seconds: wall time of the job.
        info: for "model" jobs, the model summary (see ``prepare_model``); for "strategy" jobs
            ``correct_count``, ``total``, ``true_correct``, ``family``.
    """

    kind: str
    key: str
    name: str
    status: str
    message: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Models: train if missing, exact (or sampled) accuracy once.


def model_summary(root: Path, spec: ModelSpec, weights: Weights, meta: dict, acc: dict) -> dict:
    """What later jobs and the driver need to know about a prepared model."""
    return {
        "sha": weights.sha256(),
        "n_inputs": weights.config.n_inputs,
        "accuracy": acc,
        "train": meta.get("train") or {},
        "model_dir": str(spec.model_dir(root)),
    }


def load_prepared(
    root: Path, spec: ModelSpec, *, d_model: int, train_steps: int | None
) -> tuple[Weights, dict] | None:
    """The stored model of ``spec`` if there is one (None if not yet trained).

    Raises:
        UserError: the stored model is unreadable, or was trained with another width or number of
            steps than this sweep asks for.
    """
    from compact_proofs import storage

    mdir = spec.model_dir(root)
    if not (mdir / storage.WEIGHTS_FILE).is_file():
        if mdir.exists():
            raise UserError(
                f"{mdir} exists but holds no {storage.WEIGHTS_FILE}; delete it to retrain the model"
            )
        return None
    try:
        weights, meta = storage.load_model(mdir)
    except UserError as err:
        raise UserError(f"{err} (or delete {mdir} to retrain it)") from None
    cfg = weights.config
    steps = (meta.get("training") or {}).get("steps")
    want_steps = (
        config_mod.TrainConfig(seed=spec.seed).steps if train_steps is None else train_steps
    )
    if (cfg.n_ctx, cfg.d_vocab, cfg.d_model) != (spec.k, spec.d_vocab, d_model) or (
        steps is not None and steps != want_steps
    ):
        raise UserError(
            f"{mdir} holds a model with K={cfg.n_ctx}, d_vocab={cfg.d_vocab}, d_model="
            f"{cfg.d_model}, {steps} training steps, but this sweep asks for K={spec.k}, "
            f"d_vocab={spec.d_vocab}, d_model={d_model}, {want_steps} steps; use another --out"
        )
    return weights, meta


def prepare_model(
    root: Path,
    spec: ModelSpec,
    *,
    d_model: int,
    train_steps: int | None,
    accuracy_samples: int = ACCURACY_SAMPLES,
) -> Outcome:
    """Train ``spec`` unless ``models/KEY/`` holds it, then compute its accuracy unless a valid
    ``accuracy.json`` exists (exact over all inputs when ``d_vocab**K <= api.EXACT_LIMIT``, else
    sampled with seed ``reseed(seed, "importance_sample")``)."""
    t0 = time.perf_counter()
    try:
        info = _prepare(root, spec, d_model, train_steps, accuracy_samples)
    except Exception as err:  # noqa: BLE001 - recorded, reported, the sweep goes on
        return Outcome("model", spec.key, "", "failed", _one_line(err), time.perf_counter() - t0)
    return Outcome("model", spec.key, "", "ok", "", time.perf_counter() - t0, info)


def _prepare(
    root: Path, spec: ModelSpec, d_model: int, train_steps: int | None, samples: int
) -> dict:
    from compact_proofs import api

    loaded = load_prepared(root, spec, d_model=d_model, train_steps=train_steps)
    if loaded is None:
        api.train_model(
            k=spec.k,
            seed=spec.seed,
            d_vocab=spec.d_vocab,
            d_model=d_model,
            steps=train_steps,
            out=spec.model_dir(root),
        )
        loaded = load_prepared(root, spec, d_model=d_model, train_steps=train_steps)
        assert loaded is not None
    weights, meta = loaded
    sha, n_inputs = weights.sha256(), weights.config.n_inputs
    acc = layout.read_json(spec.accuracy_path(root))
    if not layout.valid_accuracy(acc, sha, n_inputs):
        acc = api.accuracy(
            weights,
            exact=None,
            n_samples=samples,
            seed=config_mod.reseed(spec.seed, "importance_sample"),
        )
        acc = {"k": spec.k, "seed": spec.seed, **acc}
        layout.atomic_write_json(spec.accuracy_path(root), acc)
    return model_summary(root, spec, weights, meta, acc)


def truth(acc: dict) -> tuple[int | None, float | None]:
    """``(true_correct, true_accuracy)`` for normalising bounds: the exact count when known."""
    correct = acc.get("correct") if acc.get("method") == "exact" else None
    return correct, acc.get("accuracy")


# --------------------------------------------------------------------------------------------
# Strategies.

_cache: dict[tuple[str, int, int], Weights] = {}
_cache_lock = threading.Lock()


def _weights(root: Path, spec: ModelSpec, sha: str) -> Weights:
    """The stored model, cached per process (a worker proves many strategies of one model)."""
    from compact_proofs import storage

    path = spec.model_dir(root) / storage.WEIGHTS_FILE
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        w = _cache.get(key)
    if w is None:
        w = storage.load_model(spec.model_dir(root))[0]
        with _cache_lock:
            if len(_cache) >= 8:
                _cache.pop(next(iter(_cache)))
            _cache[key] = w
    if w.sha256() != sha:
        raise UserError(f"{spec.model_dir(root)} changed during the sweep; rerun the sweep")
    return w


def run_strategy(
    root: Path,
    spec: ModelSpec,
    strategy: Strategy,
    *,
    sha: str,
    true_correct: int | None,
    true_accuracy: float | None,
) -> Outcome:
    """Prove ``strategy`` on the stored model and write ``results/.../{strategy}.json``; a
    ``UserError`` (the strategy refuses the model) writes ``{strategy}.skipped.json`` and any other
    exception ``{strategy}.failed.json`` (with the traceback)."""
    from compact_proofs import api

    t0 = time.perf_counter()
    name = strategy.name
    base = {"k": spec.k, "d_vocab": spec.d_vocab, "seed": spec.seed, "strategy": name}
    failed_path = spec.result_path(root, name, layout.FAILED_SUFFIX)
    try:
        weights = _weights(root, spec, sha)
        result = api.prove_one(
            weights, strategy, true_correct=true_correct, true_accuracy=true_accuracy
        )
    except UserError as err:
        reason = _one_line(err)
        payload = {**base, "status": "skipped", "model_sha256": sha, "reason": reason}
        payload["version"] = api.package_version()
        layout.atomic_write_json(spec.result_path(root, name, layout.SKIPPED_SUFFIX), payload)
        failed_path.unlink(missing_ok=True)
        return Outcome("strategy", spec.key, name, "skipped", reason, time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 - recorded, reported, the sweep goes on
        message = _one_line(err)
        payload = {**base, "status": "failed", "model_sha256": sha, "error": message}
        payload |= {"traceback": traceback.format_exc(), "version": api.package_version()}
        layout.atomic_write_json(failed_path, payload)
        return Outcome("strategy", spec.key, name, "failed", message, time.perf_counter() - t0)
    payload = {**result.to_dict(), **base, "status": "ok"}
    layout.atomic_write_json(spec.result_path(root, name), payload)
    failed_path.unlink(missing_ok=True)
    spec.result_path(root, name, layout.SKIPPED_SUFFIX).unlink(missing_ok=True)
    info = {
        "correct_count": result.correct_count,
        "total": result.total,
        "true_correct": true_correct,
        "family": result.family,
    }
    return Outcome("strategy", spec.key, name, "ok", "", time.perf_counter() - t0, info)


def run_strategies(
    root: Path,
    spec: ModelSpec,
    strategies: list[Strategy],
    *,
    sha: str,
    true_correct: int | None,
    true_accuracy: float | None,
) -> list[Outcome]:
    """``run_strategy`` for each of ``strategies`` in turn, one outcome each, in one shared
    adaptive exploration (``searcher.shared_exploration``): a model's adaptive variants as one
    job explore the model once, not once each."""
    from compact_proofs.proofs.adaptive import searcher

    with searcher.shared_exploration():
        return [
            run_strategy(root, spec, s, sha=sha, true_correct=true_correct,
                         true_accuracy=true_accuracy)
            for s in strategies
        ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Per-model analysis for the report (compact_proofs.analysis).


def valid_analysis(data: dict | None, spec: ModelSpec, sha: str, mode: str) -> bool:
    """Whether a stored analysis is of this model and at least as complete as ``mode`` asks."""
    if data is None or data.get("model_sha256") != sha:
        return False
    if mode == "basic":
        return True
    if not data.get("ablations"):
        return False
    from compact_proofs.analysis import ablation

    exhaustive = spec.d_vocab**spec.k <= ablation.DEFAULT_MAX_EXHAUSTIVE
    return mode == "sampled" or not exhaustive or data.get("ablation_method") == "exact"


def run_analysis(root: Path, spec: ModelSpec, *, sha: str, mode: str) -> Outcome:
    """Write ``analysis/KEY.json`` + ``.safetensors`` (``compact_proofs.analysis``): path
    matrices, EQKE singular values and the noise analysis ("basic"), plus the 32 path ablations
    on ``SAMPLED_ABLATION_INPUTS`` random inputs (all inputs if fewer; "sampled") or on all
    inputs when there are at most ``analysis.ablation.DEFAULT_MAX_EXHAUSTIVE`` ("full": 1-2
    core-minutes at K=4)."""
    from compact_proofs import analysis

    t0 = time.perf_counter()
    options: dict[str, Any] = {"ablations": mode != "basic", "noise": True}
    if mode == "sampled":
        n = SAMPLED_ABLATION_INPUTS
        options |= {"ablation_max_exhaustive": n, "ablation_samples": n}
    try:
        weights = _weights(root, spec, sha)
        info, tensors = analysis.analyze_model(weights, **options)
        analysis.save_analysis(root / layout.ANALYSIS_DIR, spec.key, info, tensors)
    except Exception as err:  # noqa: BLE001 - recorded, reported, the sweep goes on
        return Outcome("analysis", spec.key, "", "failed", _one_line(err), time.perf_counter() - t0)
    return Outcome("analysis", spec.key, "", "ok", "", time.perf_counter() - t0)


def _one_line(err: BaseException) -> str:
    """The first line of the message; prefixed by the exception type unless it is a UserError
    (whose message already names the problem)."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else ""
    if isinstance(err, UserError) and first:
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
