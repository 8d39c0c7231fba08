"""Adaptive proof: the certificate format and its structural validation.

A certificate is a dict (``proofs.protocol.Certificate``); every entry is optional and defaults to
empty, so ``{}`` is a valid certificate (the cubic proof alone):

=================  ================  =========================================================
key                tensor            meaning
=================  ================  =========================================================
``l1_keys``        int64 [L, 4]      homogeneous keys (q, m, k, c) to re-check per output
``l1_outputs``     bool [L, V]       per ``l1_keys`` row, the outputs re-checked one by one; the
                                     others as one class (absent: every output one by one)
``l1_class_keys``  int64 [L', 4]     homogeneous keys to re-check per class of outputs
``count_keys``     int64 [C, 4]      count keys (q, m, c, i) (see ``counts``)
``c0``             int64 [S, 2]      c = 0 keys (q, m) to decide input by input
``roots``          int64 [R, 4]      root boxes (q, m, non-max bits, U bits) (see ``tree``)
``split_parent``   int64 [T]         node split by split i (children R + 2i, R + 2i + 1)
``split_slot``     int64 [T]         the slot it splits
``split_mask``     bool [T, V]       the tokens going to the first child
``claim``          int8 [R + 2T]     per node: 0 none, 1 prove, 2 refute, 3 decide exactly
``witness``        int64 [R + 2T]    per node: the output x of a refute claim (else ignored)
``own_E``          int64 [M]         max tokens whose keys' box tables take their own E
``screen_j``       int64 [V, V]      stage 1's screen threshold per pair (q, m), q <= m: the
                                     screen tests only j (0: none; 0 <= j <= m, 0 for q > m);
                                     absent: the cubic's own search (``cubic.screen``)
``cubic_routes``   int64 [R, 5]      stage 1's keys (q, m, k, c, route): each listed key takes
                                     only the one-shot test (1), only the per-placement test
                                     (2) or no test (3) (``cubic.cases``); c = 0: the route of
                                     the triple's keys c <= n-2 without a row; the others, the
                                     cubic's cascade
``budget``         int               the FLOP budget the search aimed at (-1: none); informative
``predicted``      int               the search's prediction of the check's FLOPs; informative
=================  ================  =========================================================

Nothing in it is trusted: the checker rebuilds every set from its own proven keys, re-evaluates
every claim, and validates the structure here (raising ``ProofPreconditionError``).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.protocol import Certificate

NONE, PROVE, REFUTE, EXACT = 0, 1, 2, 3

TENSORS = {
    "l1_keys": (torch.int64, 2, 4),
    "l1_outputs": (torch.bool, 2, "V"),
    "l1_class_keys": (torch.int64, 2, 4),
    "count_keys": (torch.int64, 2, 4),
    "c0": (torch.int64, 2, 2),
    "roots": (torch.int64, 2, 4),
    "split_parent": (torch.int64, 1, None),
    "split_slot": (torch.int64, 1, None),
    "split_mask": (torch.bool, 2, "V"),
    "claim": (torch.int8, 1, None),
    "witness": (torch.int64, 1, None),
    "own_E": (torch.int64, 1, None),
    "screen_j": (torch.int64, 2, "V"),
    "cubic_routes": (torch.int64, 2, 5),
}
SCALARS = ("budget", "predicted")


@dataclass(frozen=True)
class Plan:
    """A structurally valid certificate (value ranges that need the model are checked later)."""

    l1_keys: Tensor
    l1_outputs: Tensor
    l1_class_keys: Tensor
    count_keys: Tensor
    c0: Tensor
    roots: Tensor
    split_parent: Tensor
    split_slot: Tensor
    split_mask: Tensor
    claim: Tensor
    witness: Tensor
    own_E: Tensor
    screen_j: Tensor  # [V, V], or [0, V]: absent
    cubic_routes: Tensor  # [R, 5]

    @property
    def thresholds(self) -> Tensor | None:
        """The stage-1 screen thresholds, or None (the cubic's own search)."""
        return self.screen_j if self.screen_j.shape[0] else None

    @property
    def routes(self) -> Tensor | None:
        """Stage 1's key routes, or None (none listed: the cubic's cascade)."""
        return self.cubic_routes if self.cubic_routes.shape[0] else None

    @property
    def n_nodes(self) -> int:
        return self.roots.shape[0] + 2 * self.split_parent.shape[0]


def empty_tensor(name: str, V: int) -> Tensor:
    dtype, ndim, last = TENSORS[name]
    shape = (0,) if ndim == 1 else (0, V if last == "V" else last)
    return torch.zeros(shape, dtype=dtype)


def parse(cert: Certificate, V: int) -> Plan:
    """Validate names, dtypes and shapes; fill missing entries with empty tensors."""
    unknown = set(cert) - set(TENSORS) - set(SCALARS)
    if unknown:
        raise ProofPreconditionError(f"unknown certificate field {sorted(unknown)[0]!r}")
    for name in SCALARS:
        if name in cert and (not isinstance(cert[name], int) or isinstance(cert[name], bool)):
            raise ProofPreconditionError(f"certificate field {name!r} must be an int")
    out = {}
    for name, (dtype, ndim, last) in TENSORS.items():
        t = cert.get(name)
        if t is None:
            t = empty_tensor(name, V)
        if not isinstance(t, Tensor) or t.dtype != dtype or t.ndim != ndim:
            raise ProofPreconditionError(f"certificate field {name!r} must be a {ndim}-d {dtype}")
        want = V if last == "V" else last
        if ndim == 2 and t.shape[1] != want:
            raise ProofPreconditionError(f"certificate field {name!r} must have {want} columns")
        out[name] = t.contiguous()
    L = out["l1_keys"].shape[0]
    if "l1_outputs" not in cert:
        out["l1_outputs"] = torch.ones(L, V, dtype=torch.bool)
    elif out["l1_outputs"].shape[0] != L:
        raise ProofPreconditionError("l1_outputs needs one row per l1_keys row")
    plan = Plan(**out)
    if plan.screen_j.shape[0] not in (0, V):
        raise ProofPreconditionError(f"screen_j must be a [{V}, {V}] table")
    if plan.screen_j.shape[0]:
        q, m = torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij")
        j = plan.screen_j
        if bool(((j < 0) | (j > m) | ((q > m) & (j != 0))).any()):
            raise ProofPreconditionError("screen_j needs 0 <= j <= m for q <= m, and 0 for q > m")
    T = plan.split_parent.shape[0]
    if plan.split_slot.shape[0] != T or plan.split_mask.shape[0] != T:
        raise ProofPreconditionError("split_parent, split_slot and split_mask differ in length")
    if plan.claim.shape[0] != plan.n_nodes or plan.witness.shape[0] != plan.n_nodes:
        raise ProofPreconditionError("claim and witness need one entry per node (R + 2T)")
    if plan.claim.numel() and not bool(((plan.claim >= NONE) & (plan.claim <= EXACT)).all()):
        raise ProofPreconditionError("claims must be 0 (none), 1 (prove), 2 (refute) or 3 (exact)")
    return plan
