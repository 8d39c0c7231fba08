"""Exceptions. Every user-facing problem is a ``UserError``: the CLI prints its one-line message
(which names the problem and the fix) and exits with status 2. Besides the subclasses here,
``certificates.CertificateError`` (a certificate that cannot be read or is not confirmed) and
``api.TruthConflict`` (proofs above a given exact count) are ``UserError``s; all are exported
by the package (``compact_proofs.UserError`` etc.)."""


class UserError(Exception):
    """Bad input from the user: missing or malformed files, unsupported models, bad options."""


class ConfigError(UserError, ValueError):
    """An invalid model shape or training setting (also a ValueError, for API callers)."""


class ModelFormatError(UserError):
    """A model file or state dict that cannot be read as a compact-proofs model."""


class UnsupportedModelError(UserError):
    """A well-formed model whose architecture the proofs do not cover."""


class ProofPreconditionError(Exception):
    """A checker's precondition does not hold (an internal error or an invalid certificate)."""
