"""Benchmark the cubic and brute-force proofs: check time (median of --runs) and FLOPs.

Usage:
    python benchmarks/bench_proofs.py                      # random paper-shaped weights
    python benchmarks/bench_proofs.py runs/m4-50 runs/m4-104 --runs 5 --threads 1

Without model directories it benchmarks the cubic proof on freshly initialised (untrained,
paper-shaped: d_model = d_head = 32, TransformerLens init) models for K = 4, 5, 10 and
d_vocab = 64, 128, and brute force for K = 4, d_vocab = 64. With model directories it benchmarks
each model (brute force only when d_vocab**K <= 64**4) and prints the bounds too.
"""

import argparse
import statistics
import time

import torch

from compact_proofs import model as model_mod
from compact_proofs.config import ModelConfig, TrainConfig
from compact_proofs.core.ledger import FlopLedger
from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs import brute_force, cubic
from compact_proofs.weights import Weights

BRUTE_LIMIT = 64**4
ROW = "{:<24} {:<12} {:>3} {:>7} {:>10} {:>12} {:>10}"


def random_model(k: int, d_vocab: int, seed: int = 123) -> Weights:
    cfg = ModelConfig(d_vocab=d_vocab, n_ctx=k)
    return model_mod.to_weights(model_mod.build(cfg, TrainConfig(seed=seed).model_seed))


def time_check(strategy, w: Weights, runs: int) -> tuple[float, int, int]:
    """(median seconds, FLOPs, correct_count) of search + check."""
    times, flops, count = [], 0, 0
    for _ in range(runs):
        ledger = FlopLedger()
        t0 = time.perf_counter()
        verdict = strategy.check(w, strategy.search(w), Ops(ledger))
        times.append(time.perf_counter() - t0)
        flops, count = ledger.flop, verdict.correct_count
    return statistics.median(times), flops, count


def row(label: str, strategy, w: Weights, runs: int) -> str:
    cfg = w.config
    sec, flops, count = time_check(strategy, w, runs)
    acc = count / cfg.n_inputs
    return ROW.format(
        label, strategy.name, cfg.n_ctx, cfg.d_vocab, f"{sec:.3f}", f"{flops:.3e}", f"{acc:.6f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "models", nargs="*", help="model directories (default: random paper-shaped weights)"
    )
    p.add_argument("--runs", type=int, default=5, help="timed runs per row (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-brute", action="store_true", help="skip brute force")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} runs"
    )
    print(ROW.format("model", "strategy", "K", "d_vocab", "seconds", "FLOPs", "bound"))
    if args.models:
        from compact_proofs import storage

        for path in args.models:
            w, _ = storage.load_model(path)
            print(row(path, cubic.STRATEGY, w, args.runs), flush=True)
            if not args.no_brute and w.config.n_inputs <= BRUTE_LIMIT:
                print(row(path, brute_force.STRATEGY, w, max(1, min(args.runs, 3))), flush=True)
        return
    for d_vocab in (64, 128):
        for k in (4, 5, 10):
            print(
                row("random seed 123", cubic.STRATEGY, random_model(k, d_vocab), args.runs),
                flush=True,
            )
    if not args.no_brute:
        print(
            row(
                "random seed 123",
                brute_force.STRATEGY,
                random_model(4, 64),
                max(1, min(args.runs, 3)),
            )
        )


if __name__ == "__main__":
    main()
