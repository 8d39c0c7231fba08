"""Adaptive proof: the closed-form FLOP count of the check for a given certificate.

``predict`` adds up the stage costs (stage 1 ``CubicKeys.flops``, ``keys.level1_flops``,
``counts.count_flops``, ``singles.c0_flops`` / ``float_flops``, ``boxes.keys_table_flops`` /
``witness_table_flops`` / ``prove_flops`` / ``refute_flops``); it equals the checker's ledger
total except for the exact (python-flint) decisions of near-ties, which are charged
``exact_tie.exact_cost`` as they happen (tests/test_adaptive.py asserts the equality).
"""

import torch
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs.adaptive import boxes, counts, keys, plan, singles, tree
from compact_proofs.proofs.protocol import Certificate


def predict(
    cfg: ModelConfig,
    cert: Certificate,
    ck: keys.CubicKeys,
    proven: Tensor,
    istar: Tensor,
    n_live: Tensor,
    nodes: tree.Nodes | None = None,
) -> int:
    """FLOPs of checking ``cert``; ``proven``, ``istar`` and ``n_live`` (per key (q, m) ``[V, V,
    4]``: live outputs by the key bounds, by the exact key bound, by claim (c) alone, and the
    size of claim (e)'s set Hi; ``searcher._Tree.live``) are what the checker will find (the
    search knows them), and so are the certificate's tree ``nodes`` if given (else rebuilt)."""
    V, n = cfg.d_vocab, cfg.n_ctx
    pl = plan.parse(cert, V)
    own = pl.thresholds is not None and torch.equal(pl.thresholds, ck.thresholds)
    if not own or not torch.equal(pl.cubic_routes, keys.certificate_routes(ck)):
        raise ValueError("predict needs a certificate with stage 1's own hints")
    total = ck.flops  # stage 1 with those hints (``keys.with_own_hints``)
    l1, l1c, cnt = pl.l1_keys, pl.l1_class_keys, pl.count_keys
    todo, todo_c = keys.unproven(l1, ck.proven), keys.unproven(l1c, ck.proven)
    total += keys.level1_flops(ck, l1[todo], l1c[todo_c], pl.l1_outputs[todo])
    if cnt.shape[0]:
        total += counts.tops_flops(V, n)
        q, m, c, i = cnt.unbind(1)
        N = proven[q, m, :, c].sum(dim=1)
        live = (N > 0) & (N < m)
        for mv in m[live].unique().tolist():
            for last in (False, True):
                sel = live & (m == mv) & ((c == n - 1) if last else (c < n - 1))
                if bool(sel.any()):
                    Q = int(q[sel].unique().numel())
                    sizes = torch.stack([c[sel], i[sel], N[sel]], 1)
                    total += counts.count_flops(V, n, mv, Q, sizes)
    c0 = pl.c0
    if c0.shape[0]:
        c0 = c0[~ck.proven0[c0[:, 0], c0[:, 1]]]
        refuted = int(Ops().proven_positive(ck.margin0[c0[:, 0], c0[:, 1]]).sum())
        total += singles.c0_flops(refuted, c0.shape[0] - refuted, n, V)
    if nodes is None:
        nodes = tree.build(pl.roots, proven, istar, pl.split_parent, pl.split_slot, pl.split_mask)
    claim = torch.where(nodes.leaf, pl.claim, torch.zeros_like(pl.claim))
    sizes = nodes.sizes
    nonempty = (sizes > 0).all(dim=1)
    want = ((claim == plan.PROVE) | (claim == plan.REFUTE)) & nonempty
    idx = torch.nonzero(want, as_tuple=True)[0]
    code = nodes.m[idx] * V + nodes.q[idx]
    full = torch.isin(code, code[claim[idx] == plan.PROVE])  # keys with tables, as in the check
    codes, pair = torch.unique(code[full], return_inverse=True)
    ms, qs = codes // V, codes % V  # the keys (q, m) with claims, as the checker groups them
    L, L_exact = n_live[qs, ms, 0], n_live[qs, ms, 1]
    screen, high = n_live[qs, ms, 2], n_live[qs, ms, 3]
    total += boxes.keys_table_flops(qs, ms, torch.isin(ms, pl.own_E), L, n, V, screen, high)
    pr = claim[idx[full]] == plan.PROVE
    masks = nodes.masks[idx[full]][pr]
    total += boxes.prove_claims_flops(L, L_exact, ms, n, pair[pr], masks, qs)
    total += boxes.refute_flops(sizes[idx][claim[idx] == plan.REFUTE])
    cols = torch.unique(code[~full] * V + pl.witness[idx[~full]])  # the refutations' columns
    keys_w, n_cols = torch.unique(cols // V, return_counts=True)
    total += boxes.witness_table_flops(keys_w // V, n_cols, n)
    single = (sizes == 1).all(dim=1)
    total += singles.float_flops(int(((claim == plan.EXACT) & single).sum()), n, V)
    return total
