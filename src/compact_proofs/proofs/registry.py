"""The one explicit registry of proof strategies. Tests iterate over it."""

from compact_proofs.proofs import adaptive, brute_force, cubic, subcubic
from compact_proofs.proofs.protocol import Strategy


def _build() -> dict[str, Strategy]:
    strategies: list[Strategy] = [brute_force.STRATEGY, cubic.STRATEGY]
    strategies += [adaptive.STRATEGY, *adaptive.BUDGET_STRATEGIES]
    strategies += list(subcubic.STRATEGIES)
    strategies.append(subcubic.NEAR_TIER)
    # Each strategy module contributes its entries here, explicitly.
    return {s.name: s for s in strategies}


STRATEGIES: dict[str, Strategy] = _build()
