"""Strategy "brute-force": evaluate every input (reference-algorithms §6), rounding-safe.

Complexity: O(d_vocab^n_ctx n_ctx d_vocab).

Claim: ``correct_count`` is exactly the number of inputs t in [d_vocab]^n_ctx with
logit(m) > logit(x) for every x != m = max t (exact real forward pass of the float32 weights,
exact softmax, ties wrong).
Assumes: zero biases; the arithmetic model of ``core/rigorous.py`` and of
``compact_proofs.exact`` (float32 screen with a-priori error bounds, float64 re-check, exact
python-flint decision of the remaining near-ties).
Proof: ``compact_proofs.exact.exact_accuracy`` decides every input: an input whose float margin
clears its rigorous error bound is decided by its sign; the rest are re-checked in float64 with a
per-input bound and, failing that, exactly. Its ``correct`` count is therefore exact.       QED
Cost: what the evaluator does: ``exact.exact_accuracy_flops(cfg, n_refined)`` plus the near-tie
re-check (ledger label ``"recheck"``); asserted in tests/test_brute_force.py.
"""

from compact_proofs.config import ModelConfig
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.protocol import Certificate, Strategy, Verdict
from compact_proofs.threads import TORCH_DEFAULT
from compact_proofs.weights import Weights

# Largest d_vocab**n_ctx brute force accepts (Max-of-5 at d_vocab 64 is 2**30).
MAX_INPUTS = 2**30


def search(weights: Weights) -> Certificate:
    """Brute force needs no search: the certificate is empty."""
    return {}


def check(weights: Weights, certificate: Certificate, ops: Ops) -> Verdict:
    """Count the correct inputs exactly (see the module docstring)."""
    if certificate:
        raise ProofPreconditionError("brute force takes an empty certificate")
    from compact_proofs import exact as exact_mod  # heavy evaluator, imported on use

    res = exact_mod.exact_accuracy(weights, ledger=ops.ledger)

    def expand():
        return exact_mod.correct_mask(weights)

    details = {
        "incorrect": res.incorrect,
        "ties": res.undecided,
        "n_near_ties_resolved": res.n_near_ties_resolved,
        "n_exact": res.n_exact,
        "n_refined": res.n_refined,
    }
    return Verdict(correct_count=int(res.correct), details=details, expand=expand)


def unexplained_dim(cfg: ModelConfig) -> int:
    """A full input-to-output table: d_vocab^(n_ctx + 1) (reference-algorithms §10.4)."""
    return cfg.d_vocab ** (cfg.n_ctx + 1)


STRATEGY = Strategy(
    name="brute-force",
    family="brute force",
    complexity="O(d_vocab^n_ctx n_ctx d_vocab)",
    search=search,
    check=check,
    unexplained_dim=unexplained_dim,
    max_inputs=MAX_INPUTS,
    threads=TORCH_DEFAULT,  # a few large tensor operations: they scale with cores
)
