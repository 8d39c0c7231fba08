"""The 100 subcubic proof strategies (reference-algorithms §8), rounding-sound, with the paper's
unsound spots fixed (§13.2 sign of delta, §13.3 endpoint choice) and its off-by-one count fixed
(§13.4); and ``NEAR_TIER`` (``subcubic-near-tier``), beyond the paper: the best variant's keys
plus the inputs with one non-max token just below the max (``near_tier``).

Notation: V = d_vocab, n = n_ctx, d = d_model, s = sqrt(d_head); path matrices of
``core/circuits.py``; keys (q, m, c) with c counting the non-max tokens INCLUDING the query when
q != m (the paper's subcubic convention, unlike the cubic proof's); a certificate gap
g = gaps[q, m, c] >= 1 restricts the key to inputs whose non-max tokens are all <= m - g.

Each variant ``EUPU<X>Attn<Y>AttnErr<Z>`` composes one component per axis:
  * attention-error handling Z (``eqke``): a dense approximation A of the token part of the
    score and a bound eps on the row differences of the residual EQKE - A;
  * EUPU handling X (``eupu``): Ldir, gap_eu with EUPU[q,x] - EUPU[q,m] <= Ldir[m,x] + gap_eu;
  * attention handling Y (``bounds.largest_wrong_logit``): mean_query+diff or drop-average.

Claim: ``correct_count`` = #{m : proven0[m]} + sum over proven keys of C(n-1, c')(m - g + 1)^c'
(``count``), and every input it counts is classified correctly by the exact real forward pass.
Proof: the keys' input sets are disjoint (``count``); for a proven key, every input of it has, by
``bounds`` (attention claim, then logit claim, using the ``eqke`` and ``eupu`` claims), for all
x != m: logit(x) - logit(m) <= LW[q, m, c], and proven means ``Ops.proven_negative(LW)``, i.e.
the exact real LW < 0. The single inputs (m, ..., m) are evaluated exactly (``bounds``). The
certificate (directions, gaps, reference attention) only enters as arbitrary numbers in these
identities, so a bad certificate loosens the bound but cannot make it wrong; malformed gaps
(shape, range) are refused.                                                               QED
Cost: ``flops.variant_flops`` (asserted equal to the ledger in tests/test_subcubic.py).
"""

from dataclasses import dataclass

import torch

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.protocol import Certificate, Strategy, Verdict
from compact_proofs.proofs.subcubic import bounds, count, near_tier, pipeline, search
from compact_proofs.proofs.subcubic.variants import BY_NAME, VARIANTS, Variant
from compact_proofs.weights import Weights

EXPAND_LIMIT = 1 << 24


def _gaps(cert: Certificate, V: int, n: int) -> torch.Tensor:
    g = cert.get("gaps")
    if not isinstance(g, torch.Tensor) or g.shape != (V, V, n - 1) or g.dtype != torch.int64:
        raise ProofPreconditionError(
            f"certificate 'gaps' must be an int64 tensor [{V}, {V}, {n - 1}]"
        )
    if bool((g < 1).any()) or bool((g > V).any()):
        raise ProofPreconditionError("certificate gaps must lie in [1, d_vocab]")
    return g


@dataclass(frozen=True)
class _Evaluated:
    """A variant's check, with the tables the near tier reuses."""

    gaps: torch.Tensor
    proven0: torch.Tensor
    proven: torch.Tensor
    at: bounds.AttnTables
    lt: bounds.LogitTables
    avg: Approx | None
    base: Approx | None
    pos_s: Approx
    EVOU: Approx
    eps_max: float


def _evaluate(variant: Variant, w: Weights, cert: Certificate, ops: Ops) -> _Evaluated:
    """The checker's stages for one variant (package docstring)."""
    cfg = w.config
    V, n = cfg.d_vocab, cfg.n_ctx
    gaps = _gaps(cert, V, n)
    mean = variant.attn == "mean_query+diff"
    cm = pipeline.common(w, ops)
    at = pipeline.attn_part(variant.attn_err, cm, cert, ops)
    lt = pipeline.logit_part(variant.eupu, not mean, cm, cert, ops)
    proven0 = bounds.single_max(cm.pos_s, cm.EUPU, cm.EVOU, cm.PVOU, ops)
    g4 = gaps[..., None]
    a, na = bounds.attention(at, g4, ops)
    avg = base = None
    if mean:
        t = torch.as_tensor(cert.get("avg", torch.zeros(0)), dtype=torch.float64)
        if t.shape != (V, n - 1, 2) or not bool(torch.isfinite(t).all()):
            raise ProofPreconditionError(f"certificate 'avg' must be finite [{V}, {n - 1}, 2]")
        avg = ops.exact(t, label=bounds.LL).map_layout(lambda x: x[:, :, None, :])
        base = bounds.base_mean(lt, avg, ops)
    lw = bounds.largest_wrong_logit(lt, a, na, g4, avg, base, ops)
    proven = ops.proven_negative(lw, label="subcubic:decide")[..., 0] & bounds.valid(gaps)
    count.tally_int_ops(ops.ledger, V, n)
    eps_max = float(at.eps_s.mid.max()) * cm.s
    return _Evaluated(gaps, proven0, proven, at, lt, avg, base, cm.pos_s, cm.EVOU, eps_max)


def _details(ev: _Evaluated) -> dict:
    gaps, proven = ev.gaps, ev.proven
    return {
        "proven_c0": int(ev.proven0.sum()),
        "proven_keys": int(proven.sum()),
        "valid_keys": int(bounds.valid(gaps).sum()),
        "mean_gap_proven": float(gaps[proven].double().mean()) if bool(proven.any()) else None,
        "eps_max": ev.eps_max,
    }


def _refuse_large(V: int, n: int) -> None:
    if V**n > EXPAND_LIMIT:
        raise ProofPreconditionError(
            f"d_vocab**n_ctx = {V**n} inputs is too many to expand (limit {EXPAND_LIMIT})"
        )


def check(variant: Variant, w: Weights, cert: Certificate, ops: Ops) -> Verdict:
    """Trusted checker of one variant (package docstring)."""
    V, n = w.config.d_vocab, w.config.n_ctx
    ev = _evaluate(variant, w, cert, ops)
    correct = count.count(ev.proven0, ev.proven, ev.gaps)

    def expand() -> torch.Tensor:
        _refuse_large(V, n)
        return count.covered_mask(ev.proven0, ev.proven, ev.gaps)

    return Verdict(correct_count=correct, details=_details(ev), expand=expand)


def check_near_tier(w: Weights, cert: Certificate, ops: Ops) -> Verdict:
    """Trusted checker of ``NEAR_TIER``: the ``NEAR_TIER_BASE`` variant's check, plus the
    near tiers of the certificate's ``near`` (``near_tier`` docstring: its claim, the count,
    disjointness from the keys' far sets)."""
    V, n = w.config.d_vocab, w.config.n_ctx
    ev = _evaluate(NEAR_TIER_BASE, w, cert, ops)
    keys = near_tier.keys_of(cert.get("near"), ev.gaps)
    assert ev.avg is not None and ev.base is not None  # the base variant is mean_query+diff
    tb = near_tier.tables(ev.at, ev.lt, ev.avg, ev.base, ev.pos_s, ev.EVOU, ops)
    ok = near_tier.proven(keys, tb, ops)
    correct = count.count(ev.proven0, ev.proven, ev.gaps) + near_tier.count(keys, ok, n)

    def expand() -> torch.Tensor:
        _refuse_large(V, n)
        mask = count.covered_mask(ev.proven0, ev.proven, ev.gaps)
        powers = V ** torch.arange(n, dtype=torch.int64)
        for start in range(0, V**n, 1 << 20):
            idx = torch.arange(start, min(V**n, start + (1 << 20)), dtype=torch.int64)
            tokens = (idx[:, None] // powers) % V  # the paper's index order
            mask[idx] |= near_tier.covered(tokens, keys, ok, V)
        return mask

    details = _details(ev) | {"tier_claims": int(keys.q.numel()), "tier_proven": int(ok.sum())}
    return Verdict(correct_count=correct, details=details, expand=expand)


def _strategy(v: Variant) -> Strategy:
    return Strategy(
        name=v.name,
        family=v.group,
        complexity=v.complexity,
        search=lambda w, v=v: search.search(v, w),
        check=lambda w, cert, ops, v=v: check(v, w, cert, ops),
        unexplained_dim=v.unexplained_dim,
        max_inputs=None,
    )


STRATEGIES: tuple[Strategy, ...] = tuple(_strategy(v) for v in VARIANTS)

# The near tier extends the best variant on every paper seed (docs/subcubic.md).
NEAR_TIER_BASE = BY_NAME[near_tier.BASE_NAME]
NEAR_TIER = Strategy(
    name="subcubic-near-tier",
    family="subcubic (near tier)",
    complexity=NEAR_TIER_BASE.complexity,
    search=search.search_near_tier,
    check=check_near_tier,
    unexplained_dim=NEAR_TIER_BASE.unexplained_dim,
    max_inputs=None,
)

__all__ = ["BY_NAME", "NEAR_TIER", "STRATEGIES", "VARIANTS", "Variant", "check"]
