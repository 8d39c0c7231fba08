"""Strategy "adaptive": the cubic proof, refined only where its pessimal bound fails, down to
single inputs, until every input is proven correct or proven incorrect (the exact count, as a
proof). Variants "adaptive-budget-<N>" stop at a FLOP budget N and give the best sound bound the
chosen refinements reach ("anytime").

Complexity: O(d_vocab^3 n_ctx^2) for the cubic stage, plus O(d_vocab) per re-checked key,
O(n_ctx d_vocab^2) per refined (query, max) pair and O(n_ctx d_vocab |S|) per refined box.

Stages (each module states its Claim / Proof; ``check`` combines them):
  1. ``keys.cubic_keys``: the cubic proof's per-key verdicts (proofs/cubic).
  2. ``keys.level1``: homogeneous keys the cubic leaves unproven, re-checked per output logit
     instead of per class of outputs; proven keys join the cubic's counting argument.
  2b. ``counts``: count keys (q, m, c, i), the inputs of key (q, m, c) with exactly i non-max
     tokens outside the proven set, every placement at once (used from n_ctx = 5 on).
  3. ``singles``: the c = 0 inputs the cubic does not prove, decided one by one (float64 with a
     rigorous bound, then exactly with python-flint).
  4. ``tree`` + ``boxes``: the remaining inputs of each key, cut into product boxes with exact
     positions (one token set per position); a box is proven correct (upper bound), proven
     incorrect (lower bound on one wrong logit), split, or, as a single input, decided as in 3.
Claim, Assumes, Proof, Cost: ``checker`` module docstring. Search: ``searcher`` (untrusted; decides
which keys and boxes to refine and how to split; the certificate lists them, format in
``plan``). A bad certificate can only cost FLOPs or coverage, or be rejected.
"""

import dataclasses
import re

from compact_proofs.config import ModelConfig
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import UserError
from compact_proofs.proofs import cubic
from compact_proofs.proofs.adaptive import checker as check_mod
from compact_proofs.proofs.adaptive import searcher as search_mod
from compact_proofs.proofs.protocol import Certificate, Strategy, Verdict
from compact_proofs.weights import Weights

NAME = "adaptive"
# Checker revision (``Strategy.revision``). 2: box tables take E per max token (certificate
# field ``own_E``) and a looser, cheaper key-level bound on the live outputs, so a revision-1
# certificate may lose box proofs.
REVISION = 2
BUDGET_PREFIX = "adaptive-budget-"
# Budgets of the predefined anytime variants (FLOPs).
DEFAULT_BUDGETS = (20_000_000, 30_000_000, 100_000_000)


def check(weights: Weights, certificate: Certificate, ops: Ops) -> Verdict:
    """Trusted checker: see ``checker`` for Claim / Proof / Cost."""
    out = check_mod.run(weights, certificate, ops)
    return Verdict(correct_count=out.correct, details=out.details, expand=out.covered)


def search(weights: Weights) -> Certificate:
    """Untrusted search for the exact count (no budget)."""
    return search_mod.search(weights)


def budget_search(budget: int):
    """Search function of the anytime variant with a FLOP budget."""

    def run(weights: Weights) -> Certificate:
        return search_mod.search(weights, budget=budget)

    return run


def unexplained_dim(cfg: ModelConfig) -> int:
    """As the cubic proof (the refinements add exact evaluations, which explain nothing)."""
    return cubic.unexplained_dim(cfg)


STRATEGY = Strategy(
    name=NAME,
    family="adaptive",
    complexity="O(d_vocab^3 n_ctx^2) + refinements",
    search=search,
    check=check,
    unexplained_dim=unexplained_dim,
    max_inputs=None,
    revision=REVISION,
)


def budget_strategy(budget: int) -> Strategy:
    """The anytime variant ``adaptive-budget-<budget>`` (same checker, budgeted search)."""
    if budget <= 0:
        raise UserError(f"FLOP budget must be positive, got {budget}")
    return Strategy(
        name=BUDGET_PREFIX + _short(budget),
        family="adaptive (budget)",
        complexity=STRATEGY.complexity,
        search=budget_search(budget),
        check=check,
        unexplained_dim=unexplained_dim,
        max_inputs=None,
        revision=REVISION,
    )


def _short(budget: int) -> str:
    """3e7 for 30000000, 2.5e6 for 2500000, else the plain integer."""
    mant, exp = f"{budget:e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    text = f"{mant}e{int(exp)}"
    return text if float(text) == budget else str(budget)


BUDGET_STRATEGIES = tuple(budget_strategy(b) for b in DEFAULT_BUDGETS)


def strategy_for_name(name: str) -> Strategy | None:
    """``adaptive`` or ``adaptive-budget-<N>`` (N an int or like 3e7), else None."""
    if name == NAME:
        return STRATEGY
    match = re.fullmatch(re.escape(BUDGET_PREFIX) + r"(\d+(?:\.\d+)?(?:e\d+)?)", name)
    if match is None or float(match.group(1)) != int(float(match.group(1))):
        return None
    return dataclasses.replace(budget_strategy(int(float(match.group(1)))), name=name)
