"""Soundness fuzz: random small models, every input checked against the exact truth.

Usage:
    python benchmarks/fuzz_soundness.py --seconds 600            # from seed 0
    python benchmarks/fuzz_soundness.py --start 20000 --seconds 3600 --subcubic 5

Each model (d_vocab 2 - 11, n_ctx 2 - 5, at most 30,000 inputs) comes from one of six families
drawn from its seed: Gaussian weights rounded to a coarse grid, a noisy planted Max-of-K model
rounded likewise, one token duplicating another (hundreds of exact logit ties), a briefly
trained model with one input moved to within 1e-13 .. 0 of a tie, extreme weight scales, and
d_head != d_model. Brute force, cubic, adaptive and two adaptive budgets, the near tier, plus
``--subcubic`` randomly chosen subcubic variants, run through ``tests/models.assert_sound`` (the
count never exceeds the truth and every input a proof covers is truly correct); the adaptive
checker's refuted sets are checked too (only truly incorrect inputs), and its unbudgeted count
must be exact. Prints one line per violation or error and a table per family at the end; exits 1 if
anything was found. The test suite runs a fixed sample of the same kind
(``tests/test_soundness.py``); this runs as long as you like.
"""

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import models  # noqa: E402  (the test suite's model builders and independent truth)
import pytest  # noqa: E402
import torch  # noqa: E402

from compact_proofs.core.rigorous import Ops  # noqa: E402
from compact_proofs.proofs.adaptive import checker, searcher  # noqa: E402
from compact_proofs.proofs.registry import STRATEGIES  # noqa: E402
from compact_proofs.weights import Weights  # noqa: E402

CORE = (
    "brute-force",
    "cubic",
    "adaptive",
    "adaptive-budget-2e7",
    "adaptive-budget-3e7",
    "subcubic-near-tier",
)
SUBCUBIC = tuple(name for name, s in STRATEGIES.items() if s.family.startswith("subcubic"))
FAMILIES = ("grid-random", "grid-planted", "duplicate-token", "trained-near-tie", "scale", "d_head")


def _on_grid(w: Weights, step: float) -> Weights:
    return Weights(**{k: (getattr(w, k) / step).round() * step for k in models.NAMES})


def make_model(seed: int) -> tuple[str, Weights]:
    """The model of ``seed`` and its family."""
    rng = random.Random(seed)
    V, n = rng.randint(2, 11), rng.randint(2, 5)
    while V**n > 30_000:
        n -= 1
    family = FAMILIES[rng.randrange(len(FAMILIES))]
    if family == "grid-random":
        w = models.random_weights(V, n, rng.choice([4, 8]), seed=seed, qk_scale=rng.choice([1, 4]))
        return family, _on_grid(w, rng.choice([0.25, 0.5, 1.0]))
    if family == "grid-planted":
        w = models.planted_weights(
            V, n, noise=0.2, pos_noise=rng.choice([0.0, 0.5]), gap=rng.choice([0.5, 2.0]), seed=seed
        )
        return family, _on_grid(w, rng.choice([0.125, 0.25]))
    if family == "duplicate-token":
        w = models.random_weights(V, n, 8, seed=seed, qk_scale=rng.choice([1.0, 4.0]))
        a, b = rng.sample(range(V), 2)
        E, U = w.W_E.clone(), w.W_U.clone()
        E[a], U[:, a] = E[b], U[:, b]
        return family, Weights(
            W_E=E, W_pos=w.W_pos, W_Q=w.W_Q, W_K=w.W_K, W_V=w.W_V, W_O=w.W_O, W_U=U
        )
    if family == "trained-near-tie":
        w = models.trained_weights(V, n, seed=seed, d=8, steps=rng.choice([30, 100, 300]))
        tokens = [rng.randrange(V) for _ in range(n)]
        return family, models.near_tie(w, tokens, rng.choice([1e-13, -1e-13, 1e-15, -1e-15, 0.0]))
    if family == "scale":
        scale = rng.choice([1e-3, 5.0, 10.0, 1e2, 1e3, 1e5])  # from 1e3: float64 cannot resolve it
        pos = rng.choice([0.0, 1.0, 5.0])
        return family, models.random_weights(V, n, 6, seed=seed, scale=scale, pos_scale=pos)
    d, dh = rng.choice([3, 5, 8]), rng.choice([2, 4, 16])
    return family, models.random_weights(V, n, d, dh, seed=seed, qk_scale=rng.choice([1.0, 8.0]))


def check_model(w: Weights, names: list[str]) -> list[str]:
    """Every problem found on ``w`` (empty: sound everywhere)."""
    truth = models.truth_mask(w)
    problems = []
    for name in names:
        try:
            models.assert_sound(STRATEGIES.get(name) or _budgeted(name), w, truth)
        except pytest.skip.Exception:
            continue
        except AssertionError as err:
            problems.append(f"VIOLATION {name}: {err}")
        except Exception as err:  # noqa: BLE001 - reported, the fuzz goes on
            problems.append(f"ERROR {name}: {type(err).__name__}: {err}")
    for budget in (None, 2_000_000):
        try:
            out = checker.run(w, searcher.search(w, budget), Ops())
            covered, refuted = out.covered(), out.refuted()
        except Exception as err:  # noqa: BLE001
            problems.append(f"ERROR adaptive sets (budget {budget}): {type(err).__name__}: {err}")
            continue
        if bool((covered & ~truth).any()) or bool((refuted & truth).any()):
            problems.append(f"VIOLATION adaptive sets (budget {budget})")
        if (out.correct, out.incorrect) != (int(covered.sum()), int(refuted.sum())):
            problems.append(f"VIOLATION adaptive counts differ from their sets (budget {budget})")
        if budget is None and not out.exact:
            problems.append("NOT EXACT: the unbudgeted adaptive proof left inputs undecided")
    return problems


def _budgeted(name: str):
    from compact_proofs.proofs import adaptive

    return adaptive.strategy_for_name(name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=int, default=0, help="first model seed (default 0)")
    p.add_argument("--seconds", type=float, default=300.0, help="how long to run (default 300)")
    p.add_argument("--subcubic", type=int, default=3, help="subcubic variants per model (3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    seen, bad = Counter(), Counter()
    t0, seed = time.perf_counter(), a.start
    while time.perf_counter() - t0 < a.seconds:
        try:
            family, w = make_model(seed)
        except Exception as err:  # noqa: BLE001 - a degenerate draw (e.g. no input to tie)
            print(f"seed {seed}: no model ({type(err).__name__}: {err})", flush=True)
            seed += 1
            continue
        names = list(CORE) + random.Random(seed).sample(SUBCUBIC, a.subcubic)
        try:
            problems = check_model(w, names)
        except Exception:  # noqa: BLE001 - the truth itself failed: report and go on
            problems = ["ERROR truth: " + traceback.format_exc(limit=1).strip()]
        seen[family] += 1
        bad[family] += bool(problems)
        for line in problems:
            cfg = w.config
            print(f"seed {seed} ({family}, d_vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}): {line}")
        seed += 1
    print(f"\nseeds {a.start} .. {seed - 1} in {time.perf_counter() - t0:.0f} s")
    print(f"{'family':<18} {'models':>7} {'with problems':>14}")
    for family in FAMILIES:
        print(f"{family:<18} {seen[family]:>7} {bad[family]:>14}")
    return 1 if sum(bad.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
