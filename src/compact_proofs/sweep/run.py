"""``run_sweep``: plan the missing work of a sweep directory and run it, locally or on Dask."""

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact_proofs import config as config_mod
from compact_proofs import storage
from compact_proofs.errors import UserError
from compact_proofs.proofs import adaptive
from compact_proofs.proofs.protocol import Strategy
from compact_proofs.sweep import jobs as job_fns
from compact_proofs.sweep import layout
from compact_proofs.sweep import pool as pool_mod
from compact_proofs.sweep.aggregate import unsound_reason
from compact_proofs.sweep.layout import ModelSpec

Progress = Callable[[int, int], None] | None
Log = Callable[[str], None] | None
Seeds = int | str | Iterable[int]


@dataclass
class SweepSummary:
    """What ``run_sweep`` did.

    Attributes:
        out_dir: the sweep directory.
        models: model keys ``k{K}-v{V}-s{seed}`` in the sweep.
        strategies: strategy names run on every model.
        total: work units (one per result file, plus one per analysis file).
        already_done: units found complete on disk when the sweep started.
        ok, skipped, failed: counts of (model, strategy) pairs by final status.
        failures: ``(model key, strategy / "model" / "analysis", one-line error)`` of this run.
        unsound: messages for results whose bound exceeds the model's exact correct count (a
            soundness bug in that strategy; the result files are kept for inspection).
        removed_temporaries: leftover temporary files of killed writers deleted at the start.
        unit_seconds: wall time of every job run now, keyed ``"{model key}/{strategy}"``
            (``"/model"`` for training + accuracy, ``"/analysis"``).
        seconds: wall time.
        aggregate: what ``aggregate`` wrote (None if not run).
    """

    out_dir: Path
    models: list[str] = field(default_factory=list)
    strategies: list[str] = field(default_factory=list)
    total: int = 0
    already_done: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    unsound: list[str] = field(default_factory=list)
    removed_temporaries: int = 0
    unit_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    aggregate: Any = None

    @property
    def complete(self) -> bool:
        """Every unit finished without failure and no bound contradicts the truth."""
        return not self.failures and not self.unsound and self.failed == 0


def resolve_seeds(seeds: Seeds) -> list[int]:
    """Seeds from ``N`` (the first N of ``config.PAPER_SEEDS``: 50, 104, 123, ...), ``"all"`` (all
    151), a comma-separated string ("50,123"; a single seed as "123,"), or an iterable of ints.

    Raises:
        UserError: an empty, negative, non-integer or out-of-range selection.
    """
    paper = config_mod.PAPER_SEEDS
    if isinstance(seeds, str):
        text = seeds.strip()
        if text == "all":
            return list(paper)
        if "," not in text:
            try:
                seeds = int(text)
            except ValueError:
                raise UserError(
                    f"--seeds {seeds!r} is not a count, 'all' or a comma-separated seed list"
                ) from None
        else:
            try:
                seeds = [int(s) for s in text.split(",") if s.strip()]
            except ValueError:
                raise UserError(
                    f"--seeds {seeds!r}: seeds must be integers, e.g. 50,104,123"
                ) from None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= len(paper):
            raise UserError(
                f"--seeds {seeds}: choose a count from 1 to {len(paper)} (the paper's seeds), "
                "'all', or a comma-separated list"
            )
        return list(paper[:seeds])
    out = list(dict.fromkeys(seeds))
    bad = [s for s in out if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad or not out:
        raise UserError("seeds must be non-negative integers; pass e.g. 50,104,123 or a count")
    return out


def plan_models(ks: Iterable[int], d_vocab: int | Iterable[int], seeds: Seeds) -> list[ModelSpec]:
    """Every (K, d_vocab, seed) combination, validated."""
    ks = [ks] if isinstance(ks, int) else list(ks)
    vs = [d_vocab] if isinstance(d_vocab, int) else list(d_vocab)
    for k in ks:
        if not isinstance(k, int) or not 2 <= k <= 64:
            raise UserError(
                f"K={k!r} is out of range; choose K from 2 to 64 (the paper: 4 5 10 20)"
            )
    for v in vs:
        if not isinstance(v, int) or not 2 <= v <= 4096:
            raise UserError(f"d_vocab={v!r} is out of range; choose 2 to 4096 (the paper: 64)")
    if not ks or not vs:
        raise UserError("nothing to sweep: give at least one K and one d_vocab")
    return [ModelSpec(k, v, s) for k in ks for v in vs for s in resolve_seeds(seeds)]


def run_sweep(
    out_dir: str | os.PathLike,
    *,
    ks: int | Iterable[int] = (4,),
    d_vocab: int | Iterable[int] = 64,
    seeds: Seeds = 3,
    strategies: str | Strategy | Iterable[str | Strategy] = "all",
    jobs: int = 1,
    dask_address: str | None = None,
    train_steps: int | None = None,
    d_model: int = 32,
    analysis: str = "basic",
    accuracy_samples: int = job_fns.ACCURACY_SAMPLES,
    aggregate: bool = True,
    progress: Progress = None,
    log: Log = None,
) -> SweepSummary:
    """Train, measure and prove every model of a sweep, skipping work already on disk.

    Args:
        out_dir: the sweep directory (created if missing; see the package docstring).
        ks, d_vocab: sequence lengths and vocabulary sizes (every combination is swept).
        seeds: a count N (the first N paper seeds), "all", a comma-separated string or a list.
        strategies: "all", a name, comma-separated names, or an iterable of names and
            ``Strategy`` objects (yours: docs/new-strategy.md; with ``jobs > 1`` or Dask their
            functions are pickled to the workers).
        jobs: local worker processes (loky); 1 runs everything in this process.
        dask_address: run the same job functions on this Dask scheduler
            (``tcp://host:8786``) instead; ``out_dir`` must be on a filesystem every worker
            sees at the same path, and workers need compact-proofs installed.
        train_steps: training steps per model (None: the paper's 3000).
        d_model: residual width of newly trained models (the paper: 32).
        analysis: per-model analysis for the report: "none", "basic" (path matrices, EQKE
            singular values, noise analysis; well under a second at d_vocab 64), "sampled"
            (plus the 32 path ablations on 2**20 random inputs, a few seconds) or "full" (the
            ablations on all inputs up to 2**24 of them: 1-2 core-minutes per Max-of-4 model).
        accuracy_samples: samples for the accuracy estimate when exact enumeration is too big.
        aggregate: write results.csv / models.csv (and Parquet) at the end.
        progress: ``callback(done, total)`` over work units, called at the start and after
            each unit (``done`` includes units found complete on disk).
        log: ``callback(message)`` for phase messages, skips and failures.

    Returns:
        A ``SweepSummary``. Failed units are reported there (and in ``*.failed.json`` files that
        the next run retries), not raised.

    Raises:
        UserError: bad arguments, unknown strategy names, a stored model that does not match
            the requested recipe, another sweep running in ``out_dir``, or an unreachable Dask
            scheduler. Nothing is written before these checks pass.
    """
    from compact_proofs import api

    t_start = time.perf_counter()
    root = Path(out_dir)
    specs = plan_models(ks, d_vocab, seeds)
    chosen = api.resolve_strategies(strategies)
    if analysis not in job_fns.ANALYSIS_MODES:
        raise UserError(f"analysis={analysis!r}; choose one of {', '.join(job_fns.ANALYSIS_MODES)}")
    if not isinstance(jobs, int) or jobs == 0 or jobs < -1:
        raise UserError(f"jobs={jobs!r}; give a positive number of processes (or -1 for all)")
    storage.refuse_file_on_path(root, "sweep output")
    for name, value in (("train_steps", train_steps), ("d_model", d_model)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name}={value!r}; give a positive whole number")
    if dask_address is not None:
        pool_mod.check_dask_scheduler(dask_address)  # before anything is written
    say = log or (lambda _msg: None)
    summary = SweepSummary(root, [s.key for s in specs], [s.name for s in chosen])
    with layout.sweep_lock(root):
        with pool_mod.open_pool(jobs, dask_address) as pool:
            summary.removed_temporaries = layout.remove_stale_temporaries(root)
            driver = _Driver(root, chosen, analysis, pool, summary, progress, say)
            kwargs = {"d_model": d_model, "train_steps": train_steps}
            try:
                driver.run(specs, kwargs, accuracy_samples)
            except KeyboardInterrupt:  # tabulate what finished, so a report shows it
                if aggregate:
                    from compact_proofs.sweep.aggregate import aggregate as aggregate_fn

                    aggregate_fn(root)
                raise
        _count_statuses(root, specs, chosen, driver.infos, summary)
        if aggregate:
            from compact_proofs.sweep.aggregate import aggregate as aggregate_fn

            summary.aggregate = aggregate_fn(root)
    summary.seconds = time.perf_counter() - t_start
    return summary


# Scheduling priorities (smaller runs first): model preparation unblocks everything else.
_PREPARE, _LONG, _MEDIUM, _SHORT = 0, 1, 2, 3


def _strategy_priority(s: Strategy) -> int:
    """Longest units first: enumerating strategies, then cubic, then the rest."""
    if s.max_inputs is not None:
        return _LONG
    return _MEDIUM if s.family == "cubic" else _SHORT


class _Driver:
    """Prepares models and, as each becomes ready, queues its missing units; counts progress."""

    def __init__(self, root, chosen, analysis, pool, summary: SweepSummary, progress, say):
        self.root, self.chosen, self.analysis, self.pool = root, chosen, analysis, pool
        self.summary, self.progress, self.say = summary, progress, say
        self.per_model = len(chosen) + (analysis != "none")
        self.infos: dict[str, dict] = {}
        self.done = 0

    def run(self, specs: list[ModelSpec], kwargs: dict, samples: int) -> None:
        self.summary.total = self.per_model * len(specs)
        ready, todo = [], []
        for spec in specs:  # every stored model is checked (UserError on a mismatch) first
            loaded = job_fns.load_prepared(self.root, spec, **kwargs)
            acc = layout.read_json(spec.accuracy_path(self.root))
            if loaded is not None and layout.valid_accuracy(
                acc, loaded[0].sha256(), loaded[0].config.n_inputs
            ):
                ready.append((spec, job_fns.model_summary(self.root, spec, *loaded, acc)))
            else:
                todo.append(spec)
        self.say(
            f"{_plural(len(specs), 'model')}: {len(ready)} ready, {len(todo)} to train or measure"
        )
        for spec in todo:
            self.pool.add(_PREPARE, job_fns.prepare_model, self.root, spec, **kwargs,
                          accuracy_samples=samples)  # fmt: skip
        for spec, info in ready:
            self._queue_units(spec, info)
        self.summary.already_done = self.done
        self._report()
        specs_by_key = {s.key: s for s in specs}
        for job_outcome in self.pool.results():
            # a job of several strategies (``run_strategies``) has one outcome per strategy
            grouped = job_outcome if isinstance(job_outcome, list) else [job_outcome]
            for outcome in grouped:
                self._outcome(specs_by_key, outcome)
            self._report()  # once per job: its units finished together

    def _outcome(self, specs_by_key: dict, outcome) -> None:
        self.summary.unit_seconds[f"{outcome.key}/{outcome.name or outcome.kind}"] = outcome.seconds
        if outcome.kind == "model":
            self._model_done(specs_by_key[outcome.key], outcome)
            return
        self.done += 1
        what = outcome.name or outcome.kind
        if outcome.status == "failed":
            self.summary.failures.append((outcome.key, what, outcome.message))
            self.say(f"{outcome.key} {what} FAILED: {outcome.message}")
        elif outcome.status == "skipped":
            self.say(f"{outcome.key} {what} skipped: {outcome.message}")

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.summary.total)

    def _model_done(self, spec: ModelSpec, outcome) -> None:
        if outcome.status != "ok":
            self.summary.failures.append((outcome.key, "model", outcome.message))
            self.say(f"model {outcome.key} FAILED: {outcome.message}")
            self.done += self.per_model  # nothing more will happen for it
        else:
            self.say(f"model {outcome.key} ready ({outcome.seconds:.1f} s)")
            self._queue_units(spec, outcome.info)

    def _queue_units(self, spec: ModelSpec, info: dict) -> None:
        """Queue the model's missing units; count the complete ones as done."""
        self.infos[spec.key] = info
        sha = info["sha"]
        true_correct, true_acc = job_fns.truth(info["accuracy"])
        truth = {"sha": sha, "true_correct": true_correct, "true_accuracy": true_acc}
        adaptive_units = []  # one job for all of them: they share one exploration
        for s in self.chosen:
            if _unit_done(self.root, spec, s, sha):
                self.done += 1
            elif adaptive.shares_exploration(s):
                adaptive_units.append(s)
            else:
                self.pool.add(_strategy_priority(s), job_fns.run_strategy, self.root, spec, s,
                              **truth)  # fmt: skip
        if adaptive_units:  # explore and every check, in turn: not a short job
            prio = _MEDIUM if len(adaptive_units) > 1 else _SHORT
            self.pool.add(prio, job_fns.run_strategies, self.root, spec, adaptive_units, **truth)
        if self.analysis != "none":
            data = layout.read_json(spec.analysis_path(self.root))
            if job_fns.valid_analysis(data, spec, sha, self.analysis):
                self.done += 1
            else:
                prio = _SHORT if self.analysis == "basic" else _LONG
                self.pool.add(prio, job_fns.run_analysis, self.root, spec, sha=sha,
                              mode=self.analysis)  # fmt: skip


def _unit_done(root, spec, strategy, sha) -> bool:
    name = strategy.name
    data = layout.read_json(spec.result_path(root, name))
    if layout.valid_result(data, spec, name, sha):
        return True
    skip = layout.read_json(spec.result_path(root, name, layout.SKIPPED_SUFFIX))
    return layout.valid_skip(skip, spec, name, sha)


def _count_statuses(root, specs, chosen, infos, summary: SweepSummary) -> None:
    """Final ok / skipped / failed counts over all (model, strategy) pairs, and soundness
    alarms: a bound above an exactly known correct count."""
    for spec in specs:
        info = infos.get(spec.key)
        for s in chosen:
            if info is None:
                summary.failed += 1
                continue
            data = layout.read_json(spec.result_path(root, s.name))
            if layout.valid_result(data, spec, s.name, info["sha"]):
                summary.ok += 1
                true_correct, _ = job_fns.truth(info["accuracy"])
                claim = {"correct_count": data["correct_count"], "true_correct": true_correct}
                if reason := unsound_reason(claim):
                    summary.unsound.append(f"{spec.key} {s.name}: {reason}")
            elif _unit_done(root, spec, s, info["sha"]):
                summary.skipped += 1
            else:
                summary.failed += 1


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def describe(summary: SweepSummary) -> str:
    """A few lines for people: counts, time, failures and soundness alarms."""
    s = summary
    lines = [
        f"{_plural(len(s.models), 'model')} x {_plural(len(s.strategies), 'strategy')}: "
        f"{s.ok - len(s.unsound)} proved, "
        + (f"{len(s.unsound)} UNSOUND, " if s.unsound else "")
        + f"{s.skipped} skipped, {s.failed} failed; {s.total - s.already_done} of {s.total} units "
        f"(proofs{' and analyses' if s.total > len(s.models) * len(s.strategies) else ''}) "
        f"run now in {s.seconds:.1f} s ({s.out_dir})"
    ]
    lines += [f"FAILED {key} {what}: {msg}" for key, what, msg in s.failures]
    lines += [f"UNSOUND {msg}" for msg in s.unsound]
    if s.aggregate is not None:
        lines.append(
            f"wrote {', '.join(p.name for p in s.aggregate.written)} "
            f"({s.aggregate.results_rows} result rows)"
        )
        lines += s.aggregate.notes
        if s.aggregate.ignored:
            bad = s.aggregate.ignored
            shown = ", ".join(str(p) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
            lines.append(f"ignored {len(bad)} corrupt result file(s): {shown}")
    return "\n".join(lines)
