"""The result of a checked proof (the proof-result JSON of design.md)."""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class ProofResult:
    """What a trusted ``check`` established about one model, with its cost and provenance.

    Args:
        strategy: registry name; ``family``: its group label in tables and figures.
        model_sha256: ``Weights.sha256()`` of the model proved about.
        d_vocab, n_ctx: model shape; ``total = d_vocab ** n_ctx``.
        correct_count: at least this many inputs are classified correctly (exact-real forward pass,
            strict margin at the last position).
        true_correct: the exact correct count when known (for the normalised bound), else None;
            ``true_accuracy``: a sampled estimate of the accuracy, used when it is not.
        flops: FLOPs of the check (paper counting rules); ``flops_by_label`` breaks them down.
        int_ops, branches: integer work of sequence counting.
        unexplained_dim: the strategy's unexplained dimension (the paper's measure of how much
            of the model the proof leaves unexplained).
        complexity: asymptotic cost class of the check.
        search_seconds, check_seconds: wall times of the untrusted search and the trusted check.
        version: compact-proofs version that produced it.
        details: strategy-specific diagnostics (JSON-serialisable).

    Properties: ``accuracy_bound`` = correct_count / total; ``normalized_bound`` = the bound
    divided by the true accuracy (exact or sampled; None when neither is known).
    """

    strategy: str
    family: str
    model_sha256: str
    d_vocab: int
    n_ctx: int
    correct_count: int
    total: int
    flops: int
    unexplained_dim: int
    complexity: str
    true_correct: int | None = None
    true_accuracy: float | None = None
    int_ops: int = 0
    branches: int = 0
    search_seconds: float = 0.0
    check_seconds: float = 0.0
    version: str = ""
    flops_by_label: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0 <= self.correct_count <= self.total):
            raise ValueError(f"correct_count {self.correct_count} outside [0, {self.total}]")

    @property
    def accuracy_bound(self) -> float:
        return self.correct_count / self.total

    @property
    def normalized_bound(self) -> float | None:
        """Bound divided by the true accuracy (exact count, or a sampled estimate), when known."""
        if self.true_correct is not None:
            return self.correct_count / self.true_correct if self.true_correct else None
        if self.true_accuracy:
            return self.accuracy_bound / self.true_accuracy
        return None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy_bound"] = self.accuracy_bound
        out["normalized_bound"] = self.normalized_bound
        return out
