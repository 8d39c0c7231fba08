"""Benchmark and acceptance table for the 100 subcubic strategies and the near tier.

    python benchmarks/bench_subcubic.py                       # Max-of-4 seed 50 (trained first)
    python benchmarks/bench_subcubic.py runs/m4-v64-*  --summary-only
    python benchmarks/bench_subcubic.py MODEL_DIR --json out.json

For each model directory: all 100 variants, search included (untrusted, timed separately), then
the counted check; prints the total wall time, a per-variant table (bound, normalised bound,
FLOPs beside the paper's 1.9e6-4.7e6, search and check seconds, unexplained dimension) and the
best normalised bound per §8.9 group; then the near tier (``subcubic-near-tier``: its search
reuses the base variant's, cached by then, so its search time is its own part only). With
several models, a summary per seed and the mean ± std over seeds. The true accuracy comes from
``accuracy.json`` beside the model when present (as written by ``compact-proofs accuracy``),
else from ``compact_proofs.api.accuracy``. Without model directories it uses
``runs/bench/k4-s50``, training it (about 15 s) if it is missing.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from compact_proofs import api, storage
from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs import subcubic
from compact_proofs.proofs.subcubic import search as search_mod

DEFAULT = Path("runs/bench/k4-s50")  # Max-of-4, paper seed 50
PAPER_FLOPS = "1.9e6-4.7e6"


def true_correct(path: Path, w) -> float:
    f = path / "accuracy.json"
    acc = json.loads(f.read_text()) if f.exists() else api.accuracy(w)
    return acc["correct"] if acc.get("method") == "exact" else acc["accuracy"] * w.config.n_inputs


def run_model(path: Path) -> dict:
    w, meta = storage.load_model(path)
    truth = true_correct(path, w)
    search_mod.clear_cache()
    rows = []
    t0 = time.perf_counter()

    def run(s) -> dict:
        t1 = time.perf_counter()
        cert = s.search(w)
        t2 = time.perf_counter()
        ops = Ops()
        v = s.check(w, cert, ops)
        t3 = time.perf_counter()
        return {
            "strategy": s.name,
            "group": s.family,
            "correct": v.correct_count,
            "bound": v.correct_count / w.config.n_inputs,
            "normalized": v.correct_count / truth,
            "flops": ops.ledger.flop,
            "search_s": t2 - t1,
            "check_s": t3 - t2,
            "unexplained_dim": s.unexplained_dim(w.config),
        }

    for s in subcubic.STRATEGIES:
        rows.append(run(s))
    total = time.perf_counter() - t0
    near = run(subcubic.NEAR_TIER)
    best = {}
    for r in rows:
        if r["normalized"] > best.get(r["group"], {"normalized": -1})["normalized"]:
            best[r["group"]] = r
    return {
        "model": str(path),
        "seed": meta.get("seed"),
        "k": w.config.n_ctx,
        "d_vocab": w.config.d_vocab,
        "true_accuracy": truth / w.config.n_inputs,
        "total_seconds": total,
        "rows": rows,
        "best_per_group": {g: (r["strategy"], r["normalized"]) for g, r in best.items()},
        "best": max(rows, key=lambda r: r["normalized"]),
        "near_tier": near,
    }


def print_model(res: dict, full: bool) -> None:
    rows = res["rows"]
    print(
        f"\n== {res['model']} (K={res['k']}, d_vocab={res['d_vocab']}, "
        f"true acc {res['true_accuracy']:.6f})"
    )
    print(
        f"all 100 variants, search + check: {res['total_seconds']:.1f} s "
        f"(search {sum(r['search_s'] for r in rows):.1f} s, "
        f"check {sum(r['check_s'] for r in rows):.2f} s)"
    )
    checks = sorted(r["check_s"] * 1e3 for r in rows)
    print(
        f"check time per variant: median {statistics.median(checks):.1f} ms, "
        f"max {checks[-1]:.1f} ms"
    )
    fl = [r["flops"] for r in rows]
    print(f"FLOPs per variant: {min(fl):.3g} - {max(fl):.3g} (paper {PAPER_FLOPS})")
    if full:
        print(f"{'strategy':<95} {'norm':>7} {'FLOPs':>9} {'search':>7} {'check':>7} {'ED':>6}")
        for r in sorted(rows, key=lambda r: -r["normalized"]):
            print(
                f"{r['strategy']:<95} {r['normalized']:7.4f} {r['flops']:9.3g} "
                f"{r['search_s']:7.3f} {r['check_s']:7.3f} {r['unexplained_dim']:6d}"
            )
    print("best normalised bound per §8.9 group:")
    for g, (name, val) in sorted(res["best_per_group"].items(), key=lambda x: -x[1][1]):
        print(f"  {val:7.4f}  {g:<60} {name}")
    nt = res["near_tier"]
    print(
        f"near tier: normalised {nt['normalized']:.4f}, {nt['flops']:.3g} FLOPs, search "
        f"{nt['search_s']:.3f} s (beyond its base variant's), check {nt['check_s'] * 1e3:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help=f"model directories (default: {DEFAULT})")
    ap.add_argument("--summary-only", action="store_true", help="no per-variant table")
    ap.add_argument("--json", help="write all results to this JSON file")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.models:
        if not (DEFAULT / "model.safetensors").exists():
            print(f"training Max-of-4 seed 50 into {DEFAULT} (the default model) ...")
            api.train_model(k=4, seed=50, out=DEFAULT)
        args.models = [DEFAULT]
    results = []
    for m in args.models:
        res = run_model(Path(m))
        print_model(res, full=not args.summary_only and len(args.models) == 1)
        results.append(res)
    if len(results) > 1:
        groups = sorted({g for r in results for g in r["best_per_group"]})
        print("\n== summary: best normalised bound per seed (best of the 100; near tier)")
        print(
            f"{'seed':>6} {'K':>3} {'V':>4} {'best':>7} {'near':>7} {'secs':>6}  "
            + "  ".join(f"G{i}" for i in range(len(groups)))
        )
        for r in results:
            bpg = r["best_per_group"]
            cells = "  ".join(f"{bpg.get(g, ('', float('nan')))[1]:.4f}" for g in groups)
            print(
                f"{r['seed']:>6} {r['k']:>3} {r['d_vocab']:>4} {r['best']['normalized']:7.4f} "
                f"{r['near_tier']['normalized']:7.4f} {r['total_seconds']:6.1f}  {cells}"
            )
        for i, g in enumerate(groups):
            vals = [r["best_per_group"][g][1] for r in results if g in r["best_per_group"]]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"G{i} = {g}: mean {statistics.mean(vals):.4f} ± {sd:.4f}")
        best = [r["best"]["normalized"] for r in results]
        sd = statistics.stdev(best) if len(best) > 1 else 0.0
        print(f"best subcubic: mean {statistics.mean(best):.4f} ± {sd:.4f} (paper 0.700 ± 0.036)")
        near = [r["near_tier"]["normalized"] for r in results]
        sd = statistics.stdev(near) if len(near) > 1 else 0.0
        print(f"near tier: mean {statistics.mean(near):.4f} ± {sd:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
