"""Adaptive proof: the certificate's refinement trees, rebuilt and validated by the checker.

Shape glossary: ``roots`` listed root boxes, ``splits`` listed splits, ``nodes`` = roots + 2 splits,
``slots`` = n_ctx - 1 non-query positions, ``d_vocab_k`` token axis of a slot's set.

ROOTS. After stages 1-2b, key (q, m, c) covers, for every placement (the set nu of the c
non-max positions), the inputs with all non-max tokens in K = K(q, m, c) (the proven tokens), and
its counted count keys those with exactly i = 1 .. i* tokens in U = [0, m) minus K. The rest of
the placement (more than i* tokens in U) is the disjoint union, over the sets W of i* + 1
positions of nu, of the boxes R(q, m, nu, W): the first i* + 1 U tokens sit exactly at W, i.e.
slots of W in U, slots of nu before max(W) and outside W in K, slots of nu after max(W) in
[0, m), max slots {m}. A root is listed as (q, m, bits of nu, bits of W); the checker builds its
sets from its OWN K and i*, and rejects a root whose |W| is not i* + 1.

SPLITS. Split i (in list order) takes an existing, not yet split node and a slot p and creates two
children: S_p intersected with the mask, and S_p minus the mask (other slots unchanged); their ids
are R + 2i and R + 2i + 1. So every node is a box, the children of a node partition it, and the
leaves (nodes never split) of each root partition that root.

Claim: the leaves of all listed roots are pairwise disjoint boxes, disjoint from the inputs
counted by stages 1-2 and from every c = 0 input.
Proof: roots of different (q, m) or placements differ in a query token or in which positions hold
m; two roots of one (q, m, nu) with W != W' (|W| = |W'|) differ at the first position of their
symmetric difference, which (being before both maxima) is in U for one and in K for the other;
the checker rejects duplicate roots. Every root input has at least i* + 1 tokens in U (so lies
outside K^nu and outside the counted count keys) and c >= 1 non-max tokens. Splits partition a
node, and a node is split at most once, so the leaves under a root partition it.          QED
Validation raises ``ProofPreconditionError`` on any malformed entry.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.errors import ProofPreconditionError


@dataclass(frozen=True)
class Nodes:
    """Every node's box: query, max token, slot sets and their sizes; which nodes are leaves."""

    q: Int[Tensor, " nodes"]
    m: Int[Tensor, " nodes"]
    masks: Bool[Tensor, "nodes slots d_vocab_k"]
    sizes: Int[Tensor, "nodes slots"]  # = masks.sum(dim=2)
    leaf: Bool[Tensor, " nodes"]


def root_masks(
    roots: Int[Tensor, "roots 4"],
    proven: Bool[Tensor, "d_vocab_q d_vocab_max d_vocab_k n_ctx"],
    istar: Int[Tensor, "d_vocab_q d_vocab_max n_ctx"],
) -> Bool[Tensor, "roots slots d_vocab_k"]:
    """The sets of each root (q, m, nu bits, W bits), from the checker's proven keys and
    counted count-key prefixes ``istar``."""
    V, n = proven.shape[0], proven.shape[3]
    s1 = n - 1
    R = roots.shape[0]
    q, m, bits, wbits = roots.unbind(1)
    if R:
        ok = (q >= 0) & (q <= m) & (m < V) & (bits > 0) & (bits < 2**s1) & (wbits > 0)
        if not bool(ok.all()) or bool((wbits & ~bits).any()):
            raise ProofPreconditionError("a root has q, m, placement or U positions out of range")
    pos = torch.arange(s1)
    nonmax = (bits[:, None] >> pos[None, :]) & 1 == 1  # [R, slots]
    inw = (wbits[:, None] >> pos[None, :]) & 1 == 1
    c = nonmax.sum(dim=1)
    if R and not bool(((c <= s1 - 1) | (q == m)).all()):
        raise ProofPreconditionError("a root needs c <= n-2 non-max slots unless q = m")
    if R and not bool((inw.sum(dim=1) == istar[q, m, c] + 1).all()):
        raise ProofPreconditionError("a root's U positions do not match the proven count keys")
    key = ((q * V + m) * 2**s1 + bits) * 2**s1 + wbits
    if key.unique().numel() != R:
        raise ProofPreconditionError("duplicate roots in the certificate")
    last_w = torch.where(inw, pos[None, :], -1).amax(dim=1)  # max(W)
    ks = torch.arange(V)
    below = ks[None, :] < m[:, None]  # [R, k]: [0, m)
    K = proven[q, m, :, c.clamp(max=n - 1)] & below  # [R, k]
    Uset = below & ~K
    before = (pos[None, :] < last_w[:, None])[:, :, None]
    nonmax_set = torch.where(
        inw[:, :, None], Uset[:, None], torch.where(before, K[:, None], below[:, None])
    )
    max_set = (ks[None, None, :] == m[:, None, None]).expand(R, s1, V)
    return torch.where(nonmax[:, :, None], nonmax_set, max_set)


def build(
    roots: Int[Tensor, "roots 4"],
    proven: Bool[Tensor, "d_vocab_q d_vocab_max d_vocab_k n_ctx"],
    istar: Int[Tensor, "d_vocab_q d_vocab_max n_ctx"],
    parent: Int[Tensor, " splits"],
    slot: Int[Tensor, " splits"],
    split_mask: Bool[Tensor, "splits d_vocab_k"],
) -> Nodes:
    """Rebuild and validate every node of the refinement trees (module docstring).

    Bool work only (indexing and set intersections; no FLOPs under the paper's rules)."""
    V, n = proven.shape[0], proven.shape[3]
    R, T = roots.shape[0], parent.shape[0]
    N = R + 2 * T
    ids = torch.arange(T)
    if T and not bool(((parent >= 0) & (parent < R + 2 * ids)).all()):
        raise ProofPreconditionError("a split refers to a node that does not exist yet")
    if T and not bool(((slot >= 0) & (slot < n - 1)).all()):
        raise ProofPreconditionError("a split slot is out of range")
    if T and torch.bincount(parent, minlength=N).max() > 1:
        raise ProofPreconditionError("a node is split twice")
    masks = torch.zeros(N, n - 1, V, dtype=torch.bool)
    masks[:R] = root_masks(roots, proven, istar)
    # Sizes: a child's sets are its parent's but at the split slot, where the two children
    # partition the parent's set, so only the first child's count there needs counting.
    sizes = torch.zeros(N, n - 1, dtype=torch.int64)
    sizes[:R] = masks[:R].sum(dim=2)
    q = torch.zeros(N, dtype=torch.int64)
    m = torch.zeros(N, dtype=torch.int64)
    q[:R], m[:R] = roots[:, 0], roots[:, 1]
    done = torch.zeros(N, dtype=torch.bool)
    done[:R] = True
    pending = torch.ones(T, dtype=torch.bool)
    while bool(pending.any()):  # wavefront: splits whose parent is built
        ready = pending & done[parent]
        i = torch.nonzero(ready, as_tuple=True)[0]
        left, right, par = R + 2 * i, R + 2 * i + 1, parent[i]
        base = masks[par]  # [b, slots, k]
        hit = torch.zeros_like(base)
        hit[torch.arange(i.numel()), slot[i]] = True
        cut = split_mask[i][:, None, :] & hit
        masks[left] = base & (cut | ~hit)
        masks[right] = base & ~cut
        b = torch.arange(i.numel())
        in_left = (base[b, slot[i]] & split_mask[i]).sum(dim=1)  # [b]
        for child, at_slot in ((left, in_left), (right, sizes[par, slot[i]] - in_left)):
            q[child], m[child] = q[par], m[par]
            sizes[child] = sizes[par]
            sizes[child, slot[i]] = at_slot
            done[child] = True
        pending[i] = False
    leaf = torch.ones(N, dtype=torch.bool)
    leaf[parent] = False
    return Nodes(q=q, m=m, masks=masks, sizes=sizes, leaf=leaf)
