"""compact-proofs: rounding-sound, machine-checked accuracy bounds for one-layer attention-only
transformers on Max-of-K, with the cost of every proof counted."""

from compact_proofs.api import TruthConflict as TruthConflict
from compact_proofs.api import accuracy as accuracy
from compact_proofs.api import list_strategies as list_strategies
from compact_proofs.api import load as load
from compact_proofs.api import prove as prove
from compact_proofs.api import train_model as train_model
from compact_proofs.certificates import CertificateError as CertificateError
from compact_proofs.certificates import certify as certify
from compact_proofs.certificates import check_certificate as check_certificate
from compact_proofs.core.result import ProofResult as ProofResult
from compact_proofs.errors import ModelFormatError as ModelFormatError
from compact_proofs.errors import UnsupportedModelError as UnsupportedModelError
from compact_proofs.errors import UserError as UserError
from compact_proofs.soundness import check_soundness as check_soundness
from compact_proofs.weights import Weights as Weights

__all__ = [
    "Weights",
    "ProofResult",
    "accuracy",
    "certify",
    "check_certificate",
    "check_soundness",
    "list_strategies",
    "load",
    "prove",
    "train_model",
    "UserError",
    "ModelFormatError",
    "UnsupportedModelError",
    "CertificateError",
    "TruthConflict",
]
