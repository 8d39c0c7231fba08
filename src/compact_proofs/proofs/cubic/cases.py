"""Cubic proof, steps (5) and (6): decide every key. See the package docstring for the proof.

Keys: (q, m) with c = 0 (one input each, evaluated exactly), and homogeneous keys (q, m, k, c)
with k < m and 1 <= c <= n-2 (any q <= m) or c = n-1 (q = m only). Homogeneous keys are
processed as flat lists of triples (q, m, k), chunk by chunk over m, so only valid triples are
computed (and counted) and memory stays bounded.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops


@dataclass(frozen=True)
class Chunk:
    """Proof status of the homogeneous keys of one chunk of triples.

    ``proven[t, c-1]`` for c = 1 .. n-2 (all triples), ``proven_last[i]`` for c = n-1 on the
    triples with q = m (``last_idx`` indexes them).
    """

    q: Int[Tensor, " triples"]
    m: Int[Tensor, " triples"]
    k: Int[Tensor, " triples"]
    proven: Bool[Tensor, "triples n_c"]
    last_idx: Int[Tensor, " diag"]
    proven_last: Bool[Tensor, " diag"]


def single_inputs(
    EQKE_s: Approx,
    EQKP_s: Approx,
    EVOU: Approx,
    PVOU: Approx,
    EUPU: Approx,
    ops: Ops,
    pair_chunk: int,
) -> Bool[Tensor, "d_vocab_q d_vocab_max"]:
    """Step (6): c = 0. The key (q, m), q <= m, is the single input (m, ..., m, q).

    Its logits are evaluated exactly along the path decomposition (true attention, true
    positional terms): logit(x) = EUPU[q, x] + sum_p a_p PVOU[p, x] + a_max EVOU[m, x]
    + a_q EVOU[q, x] with a = softmax of the input's scores, a_max = sum of the non-query slots.
    Proven iff max_{x != m} logit(x) - logit(m) < 0 rigorously. Entries with q > m are False.
    Cost per pair (P = V(V+1)/2 pairs): n (scores) + softmax 2 (n-1) + 3n, matmul V (2n-1),
    n - 2 (a_max), 5V (two products, three sums), V - 1 (max), 1 (difference), 2 (decision).
    """
    V, n = EQKE_s.shape[0], EQKP_s.shape[1]
    qi_all, mi_all = torch.triu_indices(V, V)  # q <= m
    out = torch.zeros(V, V, dtype=torch.bool)
    for start in range(0, qi_all.numel(), pair_chunk):
        qi = qi_all[start : start + pair_chunk]
        mi = mi_all[start : start + pair_chunk]
        keys = torch.cat([mi[:, None].expand(-1, n - 1), qi[:, None]], dim=1)  # [P, n] tokens
        scores = ops.add(EQKE_s[qi[:, None], keys], EQKP_s[qi], label="cubic:c0")
        alpha = ops.softmax(scores, dim=1, label="cubic:c0")  # [P, n]
        pos = ops.matmul(alpha, PVOU, label="cubic:c0")  # [P, x]
        a_max = ops.sum(alpha[:, : n - 1], dim=1, label="cubic:c0")  # [P]
        a_q = alpha[:, n - 1]
        logits = ops.add(
            ops.add(EUPU[qi], pos, label="cubic:c0"),
            ops.add(
                ops.mul(a_max.map_layout(lambda t: t[:, None]), EVOU[mi], label="cubic:c0"),
                ops.mul(a_q.map_layout(lambda t: t[:, None]), EVOU[qi], label="cubic:c0"),
                label="cubic:c0",
            ),
            label="cubic:c0",
        )  # [P, x]
        worst = ops.amax_excluding(logits, dim=1, exclude=mi[:, None], label="cubic:c0")
        diff = ops.sub(worst, logits[torch.arange(qi.numel()), mi], label="cubic:c0")
        out[qi, mi] = ops.proven_negative(diff, label="cubic:c0")
    return out


def single_inputs_flops(V: int, n: int) -> int:
    P = V * (V + 1) // 2
    return P * (n + 2 * (n - 1) + 3 * n + V * (2 * n - 1) + (n - 2) + 5 * V + (V - 1) + 1 + 2)


def triples(m0: int, m1: int, V: int) -> tuple[Tensor, Tensor, Tensor]:
    """All (q, m, k) with m0 <= m < m1, q <= m, k < m, in (m, q, k) lexicographic order."""
    m = torch.arange(m0, m1)[:, None, None]
    q = torch.arange(V)[None, :, None]
    k = torch.arange(V)[None, None, :]
    mi, qi, ki = torch.nonzero((q <= m) & (k < m), as_tuple=True)
    return qi, mi + m0, ki


def n_triples(V: int) -> int:
    """sum_m (m + 1) m = (V - 1) V (V + 1) / 3."""
    return (V - 1) * V * (V + 1) // 3


def homogeneous_chunk(
    qi: Tensor,
    mi: Tensor,
    ki: Tensor,
    vals: Approx,
    EQKE_s: Approx,
    z: Approx,
    groups: Approx | None,
    lse_all: Approx,
    ops: Ops,
) -> Chunk:
    """Step (5): decide the homogeneous keys (q, m, k, c) of one chunk of triples.

    ``vals[t, cls, group]`` are the step-(2) bounds (``pessimize.triple_values``). For
    c = 1 .. n-2 and each extreme placement r, the group attention is the softmax of the
    log-weights (EQKE_s[q, m] + G[q, c, r, 0], EQKE_s[q, k] + G[q, c, r, 1], z[q]) and the bound
    of class cls is B = sum_group alpha_group vals[cls, group]; proven iff the max over r and
    cls is < 0 rigorously. For c = n-1 (q = m only) there is no max slot outside the query:
    groups (EQKE_s[m, k] + lse_all[m], z[m]) with the non-max and query values.
    Cost: 55 per (triple, c) and 18 per q = m triple (``homogeneous_flops``).
    """
    T = qi.numel()
    diag = torch.nonzero(qi == mi, as_tuple=True)[0]
    if groups is not None and T:
        n_c = groups.shape[1]
        # Layout [group, c, r, (cls,) triple]: the long triple axis innermost, so every step is
        # a vectorised pass, and the reductions over groups, r and cls run across rows.
        g = groups.map_layout(lambda t: t.permute(1, 2, 3, 0).contiguous())[..., qi]

        def per_triple(a: Approx) -> Approx:  # [T] -> [n_c, r, T]
            return a.map_layout(lambda t: t.expand(n_c, 2, T))

        a_max = ops.add(per_triple(EQKE_s[qi, mi]), g[:, :, 0], label="cubic:attn")
        a_k = ops.add(per_triple(EQKE_s[qi, ki]), g[:, :, 1], label="cubic:attn")
        logw = Ops.stack([a_max, a_k, per_triple(z[qi])], dim=0)  # [group, n_c, r, T]
        alpha = ops.softmax(logw, dim=0, label="cubic:attn")
        vals_g = vals.map_layout(lambda t: t.permute(2, 1, 0).contiguous()[:, None, None])
        weighted = ops.mul(
            alpha.map_layout(lambda t: t[:, :, :, None, :]),  # [group, n_c, r, 1, T]
            vals_g,  # [group, 1, 1, cls, T]
            label="cubic:lw",
        )
        bound = ops.sum(weighted, dim=0, label="cubic:lw")  # [n_c, r, cls, T]
        worst = ops.amax(bound.map_layout(lambda t: t.flatten(1, 2)), dim=1, label="cubic:lw")
        proven = ops.proven_negative(worst, label="cubic:decide").T  # [T, n_c]
    else:
        proven = torch.zeros(T, 0, dtype=torch.bool)
    proven_last = torch.zeros(0, dtype=torch.bool)
    if diag.numel():
        m, k = mi[diag], ki[diag]
        logw = Ops.stack(
            [ops.add(EQKE_s[m, k], lse_all[m], label="cubic:attn"), z[m]], dim=-1
        )  # [D, 2]
        alpha = ops.softmax(logw, dim=-1, label="cubic:attn")
        weighted = ops.mul(
            alpha.map_layout(lambda t: t[:, None, :]),  # [D, 1, group]
            vals[diag].map_layout(lambda t: t[:, :, 1:]),  # [D, cls, (non-max, query)]
            label="cubic:lw",
        )
        bound = ops.sum(weighted, dim=-1, label="cubic:lw")  # [D, cls]
        worst = ops.amax(bound, dim=-1, label="cubic:lw")
        proven_last = ops.proven_negative(worst, label="cubic:decide")
    return Chunk(q=qi, m=mi, k=ki, proven=proven, last_idx=diag, proven_last=proven_last)


def homogeneous_flops(V: int, n: int) -> int:
    """Ledger total of ``triple_values`` and ``homogeneous_chunk`` over all triples."""
    per_triple = 5 if V < 3 else 9
    return n_triples(V) * (per_triple + max(n - 2, 0) * 55) + (V * (V - 1) // 2) * 18
