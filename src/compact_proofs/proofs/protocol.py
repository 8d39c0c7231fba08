"""The strategy protocol shared by every proof strategy.

A strategy is ``search(weights, options) -> certificate`` (untrusted: may use anything, its cost is
not counted, a bad certificate may only loosen the bound or fail loudly) and
``check(weights, certificate, ops) -> ProofResult`` (trusted: every tensor operation goes through
``ops``, so its FLOPs land in the ledger). Strategies do no I/O and are deterministic.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from compact_proofs.core.rigorous import Ops
from compact_proofs.weights import Weights


@dataclass(frozen=True)
class Verdict:
    """What a checker proves.

    Args:
        correct_count: at least this many inputs are correct (exact Python int).
        details: JSON-serialisable diagnostics.
        expand: optional; builds the boolean mask over all d_vocab**n_ctx inputs (paper index
            order: token at position j is (i // V**j) % V) of the inputs this proof covers. Its
            sum must equal ``correct_count``. Uncounted; used by the soundness tests on small
            models.
    """

    correct_count: int
    details: dict[str, Any] = field(default_factory=dict)
    expand: Callable[[], Tensor] | None = None


# A certificate is a mapping of names to tensors / ints / floats / strings (serialisable).
Certificate = dict[str, Any]


@dataclass(frozen=True)
class Strategy:
    """One registered proof strategy.

    Args:
        name: registry name (the paper's name for subcubic variants).
        family: group label used in tables and figures ("brute force", "cubic", "subcubic (...)").
        complexity: asymptotic cost of the check, e.g. "O(d_vocab^3 n_ctx^2)".
        search: untrusted proof search.
        check: trusted checker; the caller (``api.prove``) turns its ``Verdict`` and the ledger
            into a ``ProofResult``.
        unexplained_dim: function of the model config giving the unexplained dimension.
        max_inputs: refuse models with more than this many inputs (None: no limit).
        revision: the checker's revision, raised whenever a change to ``check`` may refuse a
            certificate an earlier revision's search wrote (certificates record it, so such a
            refusal can say why).
        threads: torch threads its search and check run with unless the caller says otherwise
            (``compact_proofs.threads``): 1 for many small tensor operations, 0 for torch's own
            setting (large ones that scale with cores).
    """

    name: str
    family: str
    complexity: str
    search: Callable[[Weights], Certificate]
    check: Callable[[Weights, Certificate, Ops], Verdict]
    unexplained_dim: Callable[..., int]
    max_inputs: int | None = None
    revision: int = 1
    threads: int = 1
