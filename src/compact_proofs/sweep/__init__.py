"""Resumable sweeps over many models and strategies, local (joblib) or on Dask, and ``reproduce``.

    from compact_proofs import sweep
    summary = sweep.run_sweep("runs/sweep-k4", ks=(4,), seeds=8, jobs=2)   # also aggregates
    print(sweep.describe(summary))
    sweep.reproduce("runs/repro-k4", k=4, seeds=3)          # + report (compact_proofs.report)

Sweep directory (every file written atomically: hidden temporary file in the same directory,
fsync, ``os.replace``; a killed sweep resumes, and rerunning never duplicates a row)::

    OUT/
      .sweep.lock                            advisory lock: one sweep per directory at a time
      models/k{K}-v{V}-s{seed}/
        model.safetensors, model.json        storage.save_model (model.json "train" = TrainStats)
        accuracy.json                        api.accuracy(...) plus "k", "seed": exact over all
                                             V**K inputs when V**K <= 2**30 (method "exact":
                                             correct, incorrect, undecided, total, accuracy), else
                                             sampled (method "sampled": accuracy, ci95_low,
                                             ci95_high, n_samples; seed reseed(seed,
                                             "importance_sample")); model_sha256, seconds, version
      results/k{K}-v{V}/s{seed}/
        {strategy}.json                      ProofResult.to_dict() (strategy, family,
                                             model_sha256, d_vocab, n_ctx, correct_count, total,
                                             flops, int_ops, branches, unexplained_dim,
                                             complexity, true_correct, true_accuracy,
                                             search_seconds, check_seconds, version,
                                             flops_by_label, details, accuracy_bound,
                                             normalized_bound) plus "k", "d_vocab", "seed" and
                                             "status": "ok"
        {strategy}.skipped.json              the strategy refused the model (a UserError, e.g.
                                             brute force on 64**10 inputs): k, d_vocab, seed,
                                             strategy, model_sha256, "status": "skipped",
                                             reason, version. Counts as done.
        {strategy}.failed.json               any other exception: ... "status": "failed", error
                                             (one line), traceback. Retried by the next run and
                                             deleted when it succeeds.
      analysis/k{K}-v{V}-s{seed}.json/.safetensors   compact_proofs.analysis (analysis="basic",
                                             "sampled" or "full"; see run_sweep)
      results.csv / results.parquet          one row per valid result file (RESULT_COLUMNS: k,
                                             d_vocab, seed, strategy, family, complexity,
                                             correct_count, total, accuracy_bound, true_correct,
                                             true_accuracy, normalized_bound, flops, int_ops,
                                             unexplained_dim, search_seconds, check_seconds,
                                             model_sha256, version)
      models.csv / models.parquet            one row per model (MODEL_COLUMNS: k,
                                             d_vocab, seed, model_sha256, accuracy,
                                             accuracy_method, correct, ci95_low, ci95_high,
                                             train_loss, train_accuracy, train_seconds,
                                             accuracy_seconds)
      status.csv                             skipped / failed pairs, and "unsound" results (a
                                             bound above the exact correct count; the row stays
                                             in results.csv, the report leaves it out): k,
                                             d_vocab, seed, strategy, status, reason

The Parquet files have one schema whatever the data (``aggregate.parquet_type``): the counts
(correct_count, total, true_correct, correct) are exact decimal256(76, 0), since 64**20 needs more
than 64 bits; k, d_vocab and seed are int64; names and hashes are strings; everything else is
float64 (the costs flops, int_ops and unexplained_dim too: exact below 2**53, as in the CSV
above that). Empty means unknown (null).

A stored result counts only if it parses, has ``status`` "ok", matches its path (K, d_vocab, seed,
strategy) and carries the current model's ``model_sha256``; anything else (a corrupt or partial
file, a result for a retrained model) is redone. ``normalized_bound`` divides by the exact correct
count when the accuracy is exact, else by the sampled accuracy. Empty CSV cells mean "unknown".
Strategy names are used as file stems as they are (registry names are ``[A-Za-z0-9_+-]``); other
names are percent-encoded with a leading ``%``.

Work units: one per (model, strategy) result, plus one per model analysis. Models are trained and
measured first (in parallel), then all units run longest-first (enumerating strategies and full
analyses, then cubic, then the rest) on joblib's loky processes, or on a Dask cluster (the same
job functions, ``sweep.jobs``, submitted through a ``dask.distributed.Client``). A model's
adaptive units (the unbudgeted proof and its budgets) run as one job, which explores the model
once for all of them; each still writes its own result.
"""

from compact_proofs.sweep.aggregate import (
    MODEL_COLUMNS,
    RESULT_COLUMNS,
    STATUS_COLUMNS,
    AggregateSummary,
    aggregate,
)
from compact_proofs.sweep.layout import ModelSpec
from compact_proofs.sweep.reproduce import reproduce
from compact_proofs.sweep.run import SweepSummary, describe, resolve_seeds, run_sweep

__all__ = [
    "MODEL_COLUMNS",
    "RESULT_COLUMNS",
    "STATUS_COLUMNS",
    "AggregateSummary",
    "ModelSpec",
    "SweepSummary",
    "aggregate",
    "describe",
    "reproduce",
    "resolve_seeds",
    "run_sweep",
]
