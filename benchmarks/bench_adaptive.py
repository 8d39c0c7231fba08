"""Benchmark the adaptive proof: exact counts on Max-of-4, bound vs FLOP budget for large K.

Usage:
    python benchmarks/bench_adaptive.py --train               # models under runs/adaptive-seeds
    python benchmarks/bench_adaptive.py --root DIR --runs 9 --skip-large [--threads 2]
    python benchmarks/bench_adaptive.py --root DIR --skip-k4 --budget 1e8 --budget 2e8 \
        --budget 4e8 --figure docs/adaptive-budget.png

Model directories (trained with ``compact_proofs.api.train_model``) are looked up as
``ROOT/k4-s<seed>`` for the paper seeds 50, 104, 123, 519, 742, 913, 1185, 1283 and
``ROOT/k10-s50``, ``ROOT/k20-s50``; missing ones are trained (``--train``) or skipped.

Part 1 (Max-of-4, d_vocab 64): per seed, brute force, cubic and adaptive through
``api.prove_one`` (untrusted search + counted check), median wall time of ``--runs``
interleaved runs on ``--threads`` torch threads (default 1): the exact count reached?,
adaptive FLOPs as a fraction of the brute-force strategy's FLOPs and of the paper's
brute-force count (8.76e11), wall times.

Part 2 (Max-of-10 and Max-of-20): the search runs once (``searcher.explore``); each budget's
certificate (``searcher.for_budget``) is checked with a fresh ledger. Prints the bound per
budget, with a sampled accuracy estimate (95% CI) for reference, and with ``--figure`` draws
the bound-vs-budget figure.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from compact_proofs import api
from compact_proofs.core.ledger import FlopLedger
from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs import adaptive, brute_force, cubic
from compact_proofs.proofs.adaptive import checker, searcher

SEEDS = (50, 104, 123, 519, 742, 913, 1185, 1283)
PAPER_BRUTE_FLOPS = 876_123_000_832  # reference-algorithms §12 (Max-of-4, d_vocab 64)
# Budgets, as multiples of the cubic stage's FLOPs (plus the full refinement).
BUDGET_FACTORS = (1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 2.5, 3.0, 4.0)


def model_dir(root: Path, k: int, seed: int, train: bool) -> Path | None:
    d = root / f"k{k}-s{seed}"
    if (d / "model.safetensors").exists():
        return d
    if not train:
        return None
    api.train_model(k=k, seed=seed, out=d)
    return d


def part1(root: Path, runs: int, train: bool, threads: int) -> None:
    strategies = (brute_force.STRATEGY, cubic.STRATEGY, adaptive.STRATEGY)
    head = (
        f"{'seed':>5} {'true correct':>12} {'adaptive':>12} {'exact':>5} {'cubic bound':>11}"
        f" {'ad. FLOPs':>10} {'BF FLOPs':>10} {'/BF':>7} {'/paper BF':>9}"
        f" {'ad. s (search+check)':>21} {'BF s':>6} {'cubic s':>7}"
    )
    print(
        "Max-of-4, d_vocab 64: adaptive vs brute force and cubic "
        f"(median of {runs} interleaved runs, {torch.get_num_threads()} thread(s))"
    )
    print(head)
    for seed in SEEDS:
        d = model_dir(root, 4, seed, train)
        if d is None:
            print(f"{seed:>5} (no model in {root}: --train trains it)")
            continue
        w = api.load(d)
        times: dict[str, list[float]] = {s.name: [] for s in strategies}
        parts: list[tuple[float, float]] = []
        res = {}
        for _ in range(runs):
            for s in strategies:
                t0 = time.perf_counter()
                r = api.prove_one(w, s, threads=threads)  # the same count for every strategy
                times[s.name].append(time.perf_counter() - t0)
                res[s.name] = r
                if s is adaptive.STRATEGY:
                    parts.append((r.search_seconds, r.check_seconds))
        bf, cu, ad = res["brute-force"], res["cubic"], res["adaptive"]
        med = {k: statistics.median(v) for k, v in times.items()}
        ms = statistics.median(p[0] for p in parts)
        mc = statistics.median(p[1] for p in parts)
        exact = ad.correct_count == bf.correct_count and bool(ad.details.get("exact"))
        print(
            f"{seed:>5} {bf.correct_count:>12} {ad.correct_count:>12} {'yes' if exact else 'NO':>5}"
            f" {cu.correct_count / bf.correct_count:>11.4f}"
            f" {ad.flops:>10.3e} {bf.flops:>10.3e} {ad.flops / bf.flops:>7.2%}"
            f" {ad.flops / PAPER_BRUTE_FLOPS:>9.4%}"
            f" {med['adaptive']:>7.2f} ({ms:.2f}+{mc:.2f})"
            f" {med['brute-force']:>6.2f} {med['cubic']:>7.2f}"
        )


def budget_curve(w, budgets_extra: list[int]) -> tuple[list[tuple[int, int, float]], float, int]:
    """[(budget, FLOPs of the check, bound)], the cubic bound and the cubic stage's FLOPs."""
    cfg = w.config
    t0 = time.perf_counter()
    state = searcher.explore(w)
    print(f"  search (once): {time.perf_counter() - t0:.1f} s")
    base = state.ck.flops
    full = searcher.for_budget(cfg, state, None)["predicted"]
    budgets = sorted({int(base * f) for f in BUDGET_FACTORS} | set(budgets_extra) | {full})
    rows = []
    cubic_bound = None
    for b in budgets:
        cert = searcher.for_budget(cfg, state, b)
        ledger = FlopLedger()
        t0 = time.perf_counter()
        out = checker.run(w, cert, Ops(ledger))
        secs = time.perf_counter() - t0
        if cubic_bound is None:
            cubic_bound = out.details["cubic_correct"] / out.total
        rows.append((b, ledger.flop, out.correct / out.total))
        bound = out.correct / out.total
        print(
            f"  budget {b:>10.3e}  check FLOPs {ledger.flop:>10.3e}"
            f"  bound {bound:.6f} ({secs:.1f} s)"
        )
    return rows, cubic_bound, base


def part2(root: Path, train: bool, figure: Path | None, samples: int, extra: list[int]) -> None:
    curves = {}
    for k in (10, 20):
        d = model_dir(root, k, 50, train)
        if d is None:
            print(f"Max-of-{k}: no model in {root} (--train trains it)")
            continue
        w = api.load(d)
        acc = api.accuracy(w, exact=False, n_samples=samples, seed=0)
        print(
            f"\nMax-of-{k}, d_vocab 64, seed 50: sampled accuracy {acc['accuracy']:.6f} "
            f"(95% CI {acc['ci95_low']:.6f} .. {acc['ci95_high']:.6f}, {samples} samples)"
        )
        rows, cub, base = budget_curve(w, extra)
        curves[k] = (rows, cub, base, acc)
        print(f"  cubic bound {cub:.6f} at {base:.3e} FLOPs")
    if figure is not None and curves:
        draw(curves, figure)


def draw(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.0), squeeze=False)
    for ax, (k, (rows, cub, base, acc)) in zip(axes[0], sorted(curves.items()), strict=True):
        # The cubic stage always runs, so budgets below it give the cubic bound at its cost.
        x = [max(f, base) for _, f, _ in rows]
        y = [b for _, _, b in rows]
        ax.plot(x, y, "o-", color="C0", label="adaptive (budgeted), bound")
        ax.axhline(cub, color="C1", ls="--", label=f"cubic bound {cub:.4f}")
        ax.axhspan(acc["ci95_low"], acc["ci95_high"], color="0.6", alpha=0.4)
        ax.axhline(
            acc["accuracy"], color="0.3", ls=":", label=f"sampled accuracy {acc['accuracy']:.4f}"
        )
        ax.set_xscale("log")
        # Labels at 1, 2 and 5 x 10^k only, written as 2e7: the default minor labels overlap.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e")))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("FLOPs to check the proof")
        ax.set_ylabel("accuracy lower bound")
        ax.set_title(f"Max-of-{k}, d_vocab 64 (seed 50)")
        lo = min(cub, min(y)) - 0.1 * (acc["ci95_high"] - min(cub, min(y)))
        ax.set_ylim(lo, acc["ci95_high"] + 0.1 * (acc["ci95_high"] - lo))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Adaptive proof: bound vs FLOP budget (anytime mode)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    print(f"\nfigure: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/adaptive-seeds"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train", action="store_true", help="train missing models")
    p.add_argument("--figure", type=Path, default=None, help="draw the bound-vs-budget figure here")
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--budget", type=float, action="append", default=[], help="extra budgets")
    p.add_argument("--skip-k4", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not a.skip_k4:
        part1(a.root, a.runs, a.train, a.threads)
    if not a.skip_large:
        part2(a.root, a.train, a.figure, a.samples, [int(b) for b in a.budget])


if __name__ == "__main__":
    main()
