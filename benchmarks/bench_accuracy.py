"""Benchmark: exact, rounding-safe accuracy (compact_proofs.exact) versus a naive batched float32
forward pass over all inputs.

    python benchmarks/bench_accuracy.py                       # random weights, paper shapes
    python benchmarks/bench_accuracy.py --k4 runs/m4-123 --k5 runs/m5-123 --runs 5

Prints a table of median wall times. Without model directories the weights are Gaussian with the
per-matrix standard deviations of a trained Max-of-K model (d_model = d_head = 32, d_vocab 64);
such a model is inaccurate, so the cheap bound rarely certifies an input and the exact path runs
for almost every input (the slow case). Trained models are the common, faster case.
"""

import argparse
import statistics
import time

import torch

from compact_proofs import api
from compact_proofs import exact as ex
from compact_proofs.config import ModelConfig
from compact_proofs.task import index_to_tokens
from compact_proofs.weights import Weights

# Standard deviations of a trained Max-of-4 model's weights (seed 50 of this package's training).
TRAINED_STD = {
    "W_E": 0.28,
    "W_pos": 0.19,
    "W_Q": 0.35,
    "W_K": 0.27,
    "W_V": 0.38,
    "W_O": 0.36,
    "W_U": 0.24,
}


def random_trained_scale(k: int, seed: int = 0, d_vocab: int = 64) -> Weights:
    cfg = ModelConfig(d_vocab=d_vocab, n_ctx=k)
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "W_E": (cfg.d_vocab, cfg.d_model),
        "W_pos": (k, cfg.d_model),
        "W_Q": (cfg.d_model, cfg.d_head),
        "W_K": (cfg.d_model, cfg.d_head),
        "W_V": (cfg.d_model, cfg.d_head),
        "W_O": (cfg.d_head, cfg.d_model),
        "W_U": (cfg.d_model, cfg.d_vocab),
    }
    return Weights(
        **{k_: torch.randn(s, generator=g) * TRAINED_STD[k_] for k_, s in shapes.items()}
    )


class NaiveForward(torch.nn.Module):
    """A straightforward float32 forward pass of the one-layer attention-only model."""

    def __init__(self, w: Weights):
        super().__init__()
        self.w = w

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        w = self.w
        resid = w.W_E[tokens] + w.W_pos  # [batch, n, d]
        q, k, v = resid @ w.W_Q, resid @ w.W_K, resid @ w.W_V
        scores = q @ k.transpose(1, 2) / w.W_Q.shape[1] ** 0.5
        mask = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
        attn = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = resid + (attn @ v) @ w.W_O
        return out @ w.W_U  # [batch, n, d_vocab]


def naive_count(w: Weights, batch: int = 4096) -> int:
    """Inputs whose float32 argmax equals the max token (the paper's brute force)."""
    cfg = w.config
    model = NaiveForward(w)
    correct = 0
    with torch.no_grad():
        for s in range(0, cfg.n_inputs, batch):
            toks = index_to_tokens(
                torch.arange(s, min(s + batch, cfg.n_inputs)), cfg.d_vocab, cfg.n_ctx
            )
            pred = model(toks)[:, -1].argmax(dim=-1)
            correct += int((pred == toks.max(dim=1).values).sum())
    return correct


def timed(fn, runs: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k4", help="trained K=4 model directory (default: random weights)")
    ap.add_argument("--k5", help="trained K=5 model directory (default: random weights)")
    ap.add_argument("--runs", type=int, default=5, help="runs of the K=4 exact accuracy")
    ap.add_argument("--naive-runs", type=int, default=1, help="runs of the naive K=4 pass")
    ap.add_argument("--skip-k5", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    w4 = api.load(args.k4) if args.k4 else random_trained_scale(4)
    rows = []
    t4, ts4, r4 = timed(lambda: ex.exact_accuracy(w4), args.runs)
    rows.append(("exact accuracy, K=4 (16.8M inputs)", t4, len(ts4), r4.correct, r4.n_refined))
    if not args.skip_k5:
        w5 = api.load(args.k5) if args.k5 else random_trained_scale(5)
        t5, ts5, r5 = timed(lambda: ex.exact_accuracy(w5), 1)
        rows.append(("exact accuracy, K=5 (1.07e9 inputs)", t5, 1, r5.correct, r5.n_refined))
    if not args.skip_naive:
        tn, tsn, cn = timed(lambda: naive_count(w4), args.naive_runs)
        rows.append(("naive float32 forward, K=4, batches of 4096", tn, len(tsn), cn, None))

    src4 = args.k4 or "random (trained-scale)"
    print(
        f"K=4 model: {src4}"
        + ("" if args.skip_k5 else f";  K=5 model: {args.k5 or 'random (trained-scale)'}")
    )
    head = ("measurement", "median s", "runs", "correct", "exact path")
    print("| {:<46} | {:>9} | {:>4} | {:>13} | {:>13} |".format(*head))
    print(f"|{'-' * 48}|{'-' * 11}|{'-' * 6}|{'-' * 15}|{'-' * 15}|")
    for name, t, n, c, nref in rows:
        nr = "" if nref is None else f"{nref:,}"
        print(f"| {name:<46} | {t:>9.3f} | {n:>4} | {c:>13,} | {nr:>13} |")
    if not args.skip_naive:
        print(f"naive / exact (K=4): {tn / t4:.1f}x")
        if cn != r4.correct:
            print(
                f"note: float32 argmax counts {cn:,} correct vs the exact {r4.correct:,} "
                "(float32 rounding and argmax tie-breaking)"
            )


if __name__ == "__main__":
    main()
