"""Certificate fuzz: forged certificates on random small models, every input checked against the
exact truth.

Usage:
    python benchmarks/fuzz_certificates.py --seconds 600            # from model seed 0
    python benchmarks/fuzz_certificates.py --start 5000 --seconds 3600 --forgeries 8

A certificate is untrusted input (``compact-proofs check`` reads it from a file): whatever it
says, a trusted check must refuse it (``ProofPreconditionError``) or prove only true statements,
and finish. The models are ``fuzz_soundness.py``'s (six families, at most 30,000 inputs). Per
model, ``--forgeries`` certificates of each kind:

  adaptive-mutate   the adaptive search's own certificate, well-formed but with the claims and
                    witnesses of half the leaves, the split masks, the c = 0 keys, extra level-1
                    and count keys, the solo outputs, the choice of E per max token and (half
                    the time each) stage 1's screen thresholds and key routes redrawn
  adaptive-random   random count keys, then random roots that the checker's own proven sets
                    make valid, random refinement trees, random claims and witnesses
  subcubic-extreme  a random subcubic variant's certificate (``--subcubic`` variants per model)
                    with its float tensors replaced by extreme constants (1e300, 5e-324, -0.0,
                    ...), scaled by extremes (up to 1e152) or drawn at random scales, and its
                    gaps redrawn
  near-tier         the near tier's certificate with its gaps redrawn (half the time), its
                    reference attention made extreme (half the time) and a random near gap in
                    [1, g - 1] on a random half of the keys that admit one

Every check runs under an alarm (``--timeout`` seconds). Problems: VIOLATION (an input counted
correct that is not, one counted incorrect that is correct, a count above the truth or different
from the checker's own set), ERROR (any exception other than ``ProofPreconditionError``), HANG.
Prints one line per problem and a table per kind at the end; exits 1 if anything was found (or
nothing was checked). The
test suite runs fixed samples of the same kind (``tests/test_adaptive.py``,
``tests/test_subcubic.py``, ``tests/test_near_tier.py``); this runs as long as you like.
"""

import argparse
import random
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_soundness  # noqa: E402  (its model families)
import models  # noqa: E402  (the test suite's independent truth)
import torch  # noqa: E402

from compact_proofs.core.rigorous import Ops  # noqa: E402
from compact_proofs.errors import ProofPreconditionError  # noqa: E402
from compact_proofs.proofs import adaptive  # noqa: E402
from compact_proofs.proofs.adaptive import checker, plan, tree  # noqa: E402
from compact_proofs.proofs.registry import STRATEGIES  # noqa: E402
from compact_proofs.proofs.subcubic import near_tier  # noqa: E402
from compact_proofs.weights import Weights  # noqa: E402

KINDS = ("adaptive-mutate", "adaptive-random", "subcubic-extreme", "near-tier")
SUBCUBIC = fuzz_soundness.SUBCUBIC
EXTREME = (1e300, -1e300, 1e152, 1e100, 1e30, 3.4e38, 1e8, 1.0, -1.0, 1e-45, 1e-300, 5e-324)
EXTREME += (0.0, -0.0)


class Hang(Exception):
    """The alarm fired: a check ran past ``--timeout``."""


def _alarm(signum, frame):
    raise Hang


def _copy(cert: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in cert.items()}


# --- forgers: each returns a list of (label, certificate) ---


def _leaf_max(cert: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaves of ``cert``'s trees and every node's max token."""
    R, T = cert["roots"].shape[0], cert["split_parent"].shape[0]
    node_m = torch.cat([cert["roots"][:, 1], torch.zeros(2 * T, dtype=torch.int64)])
    for i, p in enumerate(cert["split_parent"].tolist()):
        node_m[R + 2 * i] = node_m[R + 2 * i + 1] = node_m[p]
    leaf = torch.ones(R + 2 * T, dtype=torch.bool)
    leaf[cert["split_parent"]] = False
    return torch.nonzero(leaf, as_tuple=True)[0], node_m


def _random_keys(V: int, n: int, count: int, rng: random.Random) -> tuple[list, list]:
    """Valid homogeneous keys (q, m, k, c) and count keys (q, m, c, i)."""
    l1, cnt = [], []
    for _ in range(count):
        m = rng.randrange(1, V)
        q = rng.randrange(0, m + 1)
        c_max = n - 1 if q == m else n - 2
        if c_max < 1:
            continue
        c = rng.randint(1, c_max)
        l1.append([q, m, rng.randrange(0, m), c])
        cnt.append([q, m, c, rng.randint(1, c)])
    return l1, cnt


def _int_rows(rows: list, width: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, width)


def _redraw_common(cert: dict, V: int, n: int, rng: random.Random, g: torch.Generator) -> None:
    """Redraw c0, extra level-1 and count keys, solo outputs and own_E (all well-formed)."""
    qm = torch.triu_indices(V, V).T
    cert["c0"] = qm[torch.rand(qm.shape[0], generator=g) < rng.random()].contiguous()
    l1, cnt = _random_keys(V, n, rng.randint(0, 30), rng)
    half = len(l1) // 2 if V >= 3 else len(l1)  # class keys need d_vocab >= 3
    cert["l1_keys"] = torch.cat([cert["l1_keys"], _int_rows(l1[:half], 4)]).contiguous()
    cert["l1_outputs"] = torch.rand(cert["l1_keys"].shape[0], V, generator=g) < rng.random()
    cert["l1_class_keys"] = torch.cat([cert["l1_class_keys"], _int_rows(l1[half:], 4)])
    cert["count_keys"] = torch.cat([cert["count_keys"], _int_rows(cnt, 4)]).contiguous()
    cert["own_E"] = torch.nonzero(torch.rand(V, generator=g) < 0.5, as_tuple=True)[0]
    if rng.random() < 0.5:  # stage 1's screen thresholds: any valid j per pair (0 <= j <= m)
        m = torch.arange(V)
        j = (torch.rand(V, V, generator=g) * (m + 1)).floor().to(torch.int64)
        j[m[:, None] > m[None, :]] = 0
        cert["screen_j"] = j
    own = cert.get("cubic_routes")
    if own is not None and own.shape[0] and rng.random() < 0.5:  # the own keys, other routes
        cert["cubic_routes"] = own.clone()
        cert["cubic_routes"][:, 4] = torch.randint(1, 4, (own.shape[0],), generator=g)
    elif rng.random() < 0.5:  # stage 1's key routes: valid keys, each with a random route
        keys, _ = _random_keys(V, n, rng.randint(0, 60), rng)
        # some rows for a whole triple (c = 0: its keys without a row of their own)
        keys = sorted({(q, m, k, 0 if rng.random() < 0.2 else c) for q, m, k, c in keys})
        cert["cubic_routes"] = _int_rows([[*k, rng.randint(1, 3)] for k in keys], 5)


def forge_adaptive_mutate(w: Weights, count: int, rng: random.Random, g: torch.Generator):
    V, n = w.config.d_vocab, w.config.n_ctx
    base = adaptive.search(w)
    leaves, node_m = _leaf_max(base)
    out = []
    for _ in range(count):
        cert = _copy(base)
        if leaves.numel():  # claims stay on leaves, witnesses differ from m: well-formed
            idx = leaves[
                torch.randint(0, leaves.numel(), ((leaves.numel() + 1) // 2,), generator=g)
            ]
            cert["claim"][idx] = torch.randint(1, 4, idx.shape, generator=g).to(torch.int8)
            cert["witness"][idx] = (node_m[idx] + torch.randint(1, V, idx.shape, generator=g)) % V
        if cert["split_mask"].shape[0] and rng.random() < 0.5:
            cert["split_mask"] = torch.rand(cert["split_mask"].shape, generator=g) < rng.random()
        _redraw_common(cert, V, n, rng, g)
        out.append(("adaptive-mutate", cert))
    return out


def _checker_istar(w: Weights, cert: dict) -> torch.Tensor:
    """The counted count-key prefixes i* the checker derives for ``cert`` (its trees removed),
    read where it builds the trees."""
    seen = {}
    build = tree.build

    def spy(roots, proven, istar, *rest):
        seen["istar"] = istar
        return build(roots, proven, istar, *rest)

    hints = ("screen_j", "cubic_routes")
    bare = {
        k: v for k, v in cert.items() if k in ("l1_keys", "l1_class_keys", "count_keys", *hints)
    }
    tree.build = spy
    try:
        checker.run(w, bare, Ops())
    finally:
        tree.build = build
    return seen["istar"]


def _random_roots(V: int, n: int, istar: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Roots (q, m, nu bits, W bits) with |W| = i*(q, m, c) + 1, as the checker requires."""
    s1, roots = n - 1, set()
    for _ in range(rng.randint(1, 60)):
        m = rng.randrange(0, V)
        q = rng.randrange(0, m + 1)
        nu = rng.randrange(1, 2**s1)
        c = bin(nu).count("1")
        if q < m and c > s1 - 1:
            continue
        need = int(istar[q, m, c]) + 1
        positions = [p for p in range(s1) if nu >> p & 1]
        if need > len(positions):
            continue
        roots.add((q, m, nu, sum(1 << p for p in rng.sample(positions, need))))
    return _int_rows(sorted(roots), 4)


def forge_adaptive_random(w: Weights, count: int, rng: random.Random, g: torch.Generator):
    V, n = w.config.d_vocab, w.config.n_ctx
    if n < 3 or V < 3:
        return []
    out = []
    for _ in range(count):
        cert = {}
        for name in plan.TENSORS:
            cert[name] = plan.empty_tensor(name, V)
        del cert["l1_outputs"]  # absent: every output one by one
        _redraw_common(cert, V, n, rng, g)
        roots = _random_roots(V, n, _checker_istar(w, cert), rng)
        R, T = roots.shape[0], rng.randint(0, 3 * roots.shape[0])
        parent, free = torch.empty(T, dtype=torch.int64), list(range(R))
        for i in range(T):
            parent[i] = free.pop(rng.randrange(len(free)))
            free += [R + 2 * i, R + 2 * i + 1]
        cert.update(
            roots=roots,
            split_parent=parent,
            split_slot=torch.randint(0, n - 1, (T,), generator=g),
            split_mask=torch.rand(T, V, generator=g) < rng.random(),
            claim=torch.zeros(R + 2 * T, dtype=torch.int8),
            witness=torch.zeros(R + 2 * T, dtype=torch.int64),
        )
        leaves, node_m = _leaf_max(cert)
        cert["claim"][leaves] = torch.randint(1, 4, leaves.shape, generator=g).to(torch.int8)
        cert["witness"] = (node_m + torch.randint(1, V, node_m.shape, generator=g)) % V
        out.append(("adaptive-random", cert))
    return out


def _extreme_tensor(v: torch.Tensor, rng: random.Random, g: torch.Generator) -> torch.Tensor:
    """``v`` (float64) replaced by an extreme constant, scaled by an extreme, drawn at a random
    scale, or kept; never NaN or inf (those are refused when the certificate is read)."""
    mode = rng.randrange(4)
    if mode == 0:
        v = torch.full_like(v, rng.choice(EXTREME))
    elif mode == 1:
        v = v * rng.choice(EXTREME)
    elif mode == 2:
        v = torch.randn(v.shape, generator=g, dtype=v.dtype) * 10 ** rng.uniform(-6, 6)
    return torch.where(torch.isfinite(v), v, torch.zeros_like(v))


def forge_subcubic(w: Weights, count: int, rng: random.Random, g: torch.Generator, variants: int):
    V = w.config.d_vocab
    out = []
    for name in rng.sample(SUBCUBIC, variants):
        base = STRATEGIES[name].search(w)
        for _ in range(count):
            cert = {}
            for k, v in base.items():
                if not isinstance(v, torch.Tensor):
                    cert[k] = v
                elif k == "gaps" and rng.random() < 0.5:
                    cert[k] = torch.randint(1, V + 1, v.shape, generator=g, dtype=v.dtype)
                elif v.dtype.is_floating_point:
                    cert[k] = _extreme_tensor(v, rng, g)
                else:
                    cert[k] = v.clone()
            out.append((name, cert))
    return out


def forge_near_tier(w: Weights, count: int, rng: random.Random, g: torch.Generator):
    V = w.config.d_vocab
    base = STRATEGIES["subcubic-near-tier"].search(w)
    out = []
    for _ in range(count):
        cert = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in base.items()}
        if rng.random() < 0.5:
            cert["gaps"] = torch.randint(1, V + 1, cert["gaps"].shape, generator=g)
        if rng.random() < 0.5:
            cert["avg"] = _extreme_tensor(cert["avg"], rng, g)
        gaps = cert["gaps"]
        q, m, ci = torch.nonzero(torch.ones_like(gaps, dtype=torch.bool), as_tuple=True)
        gk = gaps[q, m, ci]
        on = near_tier.eligible(q, m, ci, gk) & (torch.rand(gk.shape, generator=g) < 0.5)
        near = torch.zeros_like(gaps)
        pick = 1 + (torch.rand(gk.shape, generator=g) * (gk - 1)).long()
        near[q[on], m[on], ci[on]] = pick[on]
        cert["near"] = near
        out.append(("subcubic-near-tier", cert))
    return out


# --- checking ---


def check_adaptive(w: Weights, cert: dict, truth: torch.Tensor) -> str | None:
    out = checker.run(w, cert, Ops())
    covered, refuted = out.covered(), out.refuted()
    if bool((covered & ~truth).any()):
        return f"{int((covered & ~truth).sum())} incorrect inputs counted correct"
    if bool((refuted & truth).any()):
        return f"{int((refuted & truth).sum())} correct inputs counted incorrect"
    if (out.correct, out.incorrect) != (int(covered.sum()), int(refuted.sum())):
        return "counts differ from the checker's sets"
    return None


def check_strategy(name: str, w: Weights, cert: dict, truth: torch.Tensor) -> str | None:
    verdict = STRATEGIES[name].check(w, cert, Ops())
    if verdict.correct_count > int(truth.sum()):
        return f"count {verdict.correct_count} above the truth {int(truth.sum())}"
    if verdict.expand is not None:
        mask = verdict.expand()
        if bool((mask & ~truth).any()):
            return f"{int((mask & ~truth).sum())} incorrect inputs counted correct"
        if int(mask.sum()) != verdict.correct_count:
            return "count differs from the covered set"
    return None


def run_one(kind: str, label: str, w, cert, truth, timeout: float) -> str:
    """'ok', 'refused' or a problem line."""
    signal.alarm(max(1, round(timeout)))
    try:
        if kind.startswith("adaptive"):
            problem = check_adaptive(w, cert, truth)
        else:
            problem = check_strategy(label, w, cert, truth)
    except ProofPreconditionError:
        return "refused"
    except Hang:
        return f"HANG {label}: no verdict within {timeout:g} s"
    except Exception as err:  # noqa: BLE001 - reported, the fuzz goes on
        last = traceback.format_exc().strip().splitlines()[-1]
        return f"ERROR {label}: {type(err).__name__}: {last}"
    finally:
        signal.alarm(0)
    return "ok" if problem is None else f"VIOLATION {label}: {problem}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=int, default=0, help="first model seed (default 0)")
    p.add_argument("--seconds", type=float, default=300.0, help="how long to run (default 300)")
    p.add_argument("--models", type=int, default=None, help="stop after this many models")
    p.add_argument("--forgeries", type=int, default=4, help="per kind and model (default 4)")
    p.add_argument("--subcubic", type=int, default=2, help="subcubic variants per model (2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per check (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    previous = signal.signal(signal.SIGALRM, _alarm)
    tally = {kind: Counter() for kind in KINDS}
    t0, seed, n_models = time.perf_counter(), a.start, 0
    try:
        while time.perf_counter() - t0 < a.seconds and (a.models is None or n_models < a.models):
            try:
                family, w = fuzz_soundness.make_model(seed)
            except Exception as err:  # noqa: BLE001 - a degenerate draw (no input to tie)
                print(f"seed {seed}: no model ({type(err).__name__}: {err})", flush=True)
                seed += 1
                continue
            truth = models.truth_mask(w)
            rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
            forged = {
                "adaptive-mutate": forge_adaptive_mutate(w, a.forgeries, rng, g),
                "adaptive-random": forge_adaptive_random(w, a.forgeries, rng, g),
                "subcubic-extreme": forge_subcubic(w, a.forgeries, rng, g, a.subcubic),
                "near-tier": forge_near_tier(w, a.forgeries, rng, g),
            }
            for kind, certs in forged.items():
                tally[kind]["models"] += bool(certs)
                for label, cert in certs:
                    result = run_one(kind, label, w, cert, truth, a.timeout)
                    if result in ("ok", "refused"):
                        tally[kind][result] += 1
                    else:
                        tally[kind]["problems"] += 1
                        print(f"seed {seed} ({family}) {kind}: {result}", flush=True)
            seed += 1
            n_models += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    secs = time.perf_counter() - t0
    print(f"\n{n_models} models (seeds {a.start} - {seed - 1}) in {secs:.0f} s")
    print(f"{'kind':<18} {'models':>6} {'checked':>8} {'refused':>8} {'problems':>8}")
    for kind in KINDS:
        t = tally[kind]
        print(
            f"{kind:<18} {t['models']:>6} {t['ok'] + t['problems']:>8} {t['refused']:>8} "
            f"{t['problems']:>8}"
        )
    if not any(t["ok"] + t["problems"] for t in tally.values()):
        print("no certificate was checked: give it more --seconds or --models")
        return 1
    return 1 if any(t["problems"] for t in tally.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
