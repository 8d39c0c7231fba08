"""``reproduce``: the README's main job. Train the paper's Max-of-K models, run every proof
strategy, aggregate, and build the report."""

import os
from collections.abc import Iterable
from pathlib import Path

from compact_proofs.sweep.run import Log, Progress, Seeds, describe, run_sweep


def reproduce(
    out_dir: str | os.PathLike,
    *,
    k: int = 4,
    d_vocab: int = 64,
    seeds: Seeds = 3,
    strategies: str | Iterable[str] = "all",
    jobs: int | None = None,
    dask_address: str | None = None,
    train_steps: int | None = None,
    analysis: str = "sampled",
    report: bool = True,
    progress: Progress = None,
    log: Log = None,
) -> Path:
    """``run_sweep`` (which also aggregates) followed by ``compact_proofs.report.make_report``.

    Args:
        out_dir: the sweep directory; the report goes to ``out_dir/report``.
        k, d_vocab: the paper configuration (default Max-of-4 over 64 tokens).
        seeds: a count N (the first N paper seeds: 3 -> 50, 104, 123), "all" or a list.
        strategies: "all" (default), names, or a comma-separated string.
        jobs: local processes (default: every core).
        dask_address, train_steps, progress, log: as in ``run_sweep``.
        analysis: per-model analysis for the report ("sampled": path ablations on 2**20 random
            inputs; "full": on all 2**24 Max-of-4 inputs, 1-2 core-minutes per model; "basic":
            none; see ``run_sweep``).
        report: build the report (skipped, with a log message, if the report module is missing).

    Returns:
        The report directory (``out_dir`` itself when no report was built). Failures and
        soundness alarms go to ``log`` (call ``run_sweep`` directly for the ``SweepSummary``).
    """
    say = log or (lambda _msg: None)
    summary = run_sweep(
        out_dir,
        ks=(k,),
        d_vocab=d_vocab,
        seeds=seeds,
        strategies=strategies,
        jobs=jobs if jobs is not None else (os.cpu_count() or 1),
        dask_address=dask_address,
        train_steps=train_steps,
        analysis=analysis,
        progress=progress,
        log=log,
    )
    say(describe(summary))
    if not report:
        return Path(out_dir)
    try:
        from compact_proofs.report import make_report
    except ImportError as err:
        say(f"report skipped: compact_proofs.report is not available ({err})")
        return Path(out_dir)
    if summary.aggregate is None or summary.aggregate.results_rows == 0:
        say("report skipped: the sweep produced no proof results")
        return Path(out_dir)
    say("building the report")
    return Path(make_report(out_dir))
