"""The one explicit registry of proof strategies. Tests iterate over it."""

from compact_proofs.proofs.protocol import Strategy


def _build() -> dict[str, Strategy]:
    strategies: list[Strategy] = []
    # Each strategy module contributes its entries here, explicitly.
    return {s.name: s for s in strategies}


STRATEGIES: dict[str, Strategy] = _build()
