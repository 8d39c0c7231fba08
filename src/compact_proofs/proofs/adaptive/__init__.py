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
import decimal
import functools
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
# certificate may lose box proofs. 3: the box tables are slot-independent (``boxes`` claim
# (d)), a cheaper and slightly looser bound, so a revision-2 certificate may lose box proofs.
# 4: a second key screen (``boxes`` claim (e)) leaves fewer outputs live; a revision-3
# certificate's prove claims then cover fewer outputs, but the keys that take the exact key
# bound (a cost rule on the live count) can change, so this is marked as a new revision.
# 5: stage 1 reads the screen thresholds and key routes (certificate fields ``screen_j``,
# ``cubic_routes``); a revision-4 certificate checks as before, a revision-5 one is refused by an
# older checker (unknown field).
# 6: the box tables' shared E is max(0, max_k hi_k e) (looser where every e[k, x] < 0) and their
# query-slot term comes from stage 1's W rows, so a revision-5 certificate may lose box proofs.
REVISION = 6
BUDGET_PREFIX = "adaptive-budget-"
# Budgets of the predefined anytime variants (FLOPs).
DEFAULT_BUDGETS = (20_000_000, 30_000_000, 100_000_000)
# Larger budgets are refused: no refinement comes near them (the full one of a Max-of-10,
# d_vocab 128 model costs about 2.6e9 FLOPs), and ``adaptive`` is the unbudgeted proof.
MAX_BUDGET = 10**18


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


def shares_exploration(strategy: Strategy) -> bool:
    """Whether ``strategy`` is ``adaptive`` or a budget of it (any strategy with this
    checker): such strategies of one model can share one exploration
    (``searcher.shared_exploration``; sharing only saves time, whatever the search)."""
    return strategy.check is check


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


@functools.cache
def strategy_for_name(name: str) -> Strategy | None:
    """``adaptive`` or ``adaptive-budget-<N>`` (N a whole number of FLOPs: an int or like 3e7),
    else None; one object per name. Raises UserError for a budget that is not a whole number
    from 1 to ``MAX_BUDGET``."""
    if name == NAME:
        return STRATEGY
    budget = budget_of(name)
    return None if budget is None else dataclasses.replace(budget_strategy(budget), name=name)


def budget_of(name: str) -> int | None:
    """The FLOP budget of ``adaptive-budget-<N>``; None for any other name. Raises UserError
    for a budget that is not a whole number from 1 to ``MAX_BUDGET``."""
    text = name[len(BUDGET_PREFIX) :] if name.startswith(BUDGET_PREFIX) else ""
    if re.fullmatch(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", text) is None:
        return None
    value = decimal.Decimal(text)  # exact: 3e7, 2.5e6 and 1e400 alike
    if value != value.to_integral_value() or not 0 < value <= MAX_BUDGET:
        raise UserError(
            f"FLOP budget must be a whole number from 1 to 1e18, got {text} "
            f"(for no budget use {NAME!r})"
        )
    return int(value)
