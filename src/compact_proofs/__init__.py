"""compact-proofs: rounding-sound, machine-checked accuracy bounds for one-layer attention-only
transformers on Max-of-K, with the cost of every proof counted."""

from compact_proofs.api import accuracy as accuracy
from compact_proofs.api import list_strategies as list_strategies
from compact_proofs.api import load as load
from compact_proofs.api import prove as prove
from compact_proofs.api import train_model as train_model
from compact_proofs.core.result import ProofResult as ProofResult
from compact_proofs.soundness import check_soundness as check_soundness
from compact_proofs.weights import Weights as Weights

__all__ = [
    "Weights",
    "ProofResult",
    "accuracy",
    "check_soundness",
    "list_strategies",
    "load",
    "prove",
    "train_model",
]
