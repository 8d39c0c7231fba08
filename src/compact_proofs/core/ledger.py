"""FLOP ledger: an explicit, never-global tally of what a checker does (reference-algorithms §10.2).

Counting rules (the paper's): elementwise op = #outputs; reduction = #kept x (#reduced - 1);
matmul = #outputs x (2 inner - 1); sort-verification = (n - 1) per sorted array; reads, indexing
and reshapes are free; integer work for sequence counting is tallied as ``int_op``.
"""

from dataclasses import dataclass, field


@dataclass
class FlopLedger:
    """Mutable tally passed explicitly into a checker. ``by_label`` breaks ``flop`` down."""

    flop: int = 0
    int_op: int = 0
    branch: int = 0
    by_label: dict[str, int] = field(default_factory=dict)

    def add(self, flop: int = 0, *, int_op: int = 0, branch: int = 0, label: str = "other") -> None:
        if flop < 0 or int_op < 0 or branch < 0:
            raise ValueError("FLOP counts are non-negative")
        self.flop += int(flop)
        self.int_op += int(int_op)
        self.branch += int(branch)
        if flop:
            self.by_label[label] = self.by_label.get(label, 0) + int(flop)
