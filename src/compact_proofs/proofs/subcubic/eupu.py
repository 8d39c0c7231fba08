"""Direct-path (EUPU) handling (reference-algorithms §8.6 ``split_EPU``): one component per mode.

Claim (every mode): the returned ``Ldir`` [d_vocab_max, d_vocab_out] (or None, meaning 0) and
``gap`` (broadcastable to [d_vocab_q, d_vocab_max]) satisfy, for all q, m and x != m,
    EUPU[q, x] - EUPU[q, m] <= Ldir[m, x] + gap[q, m],   EUPU = E_q W_U.               (*)
Proof:
  * mean_query / svd_query / max_diff: for ANY vector w in R^d (the mean query row, a searched
    direction, or 0), EUPU[q] = w^T U + (E_q[q] - w)^T U, and
    ((E_q[q] - w)^T U)[x] - ((E_q[q] - w)^T U)[m] = sum_t (E_q[q,t] - w_t)(U[t,x] - U[t,m])
    <= sum_t |E_q[q,t] - w_t| rr(U)_t with rr(U)_t = max_x U[t,x] - min_x U[t,x]. So
    Ldir[m, x] = (w^T U)[x] - (w^T U)[m] and gap[q] = sum_t |E_q[q,t] - w_t| rr(U)_t.
  * max_diff_exact: gap[q, m] = max_x EUPU[q, x] - EUPU[q, m] (EUPU exact), Ldir = 0.
  * global_max_diff_exact: gap = max EUPU - min EUPU (one scalar), Ldir = 0.            QED
"""

from dataclasses import dataclass

import torch

from compact_proofs.core.circuits import Leaves
from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.subcubic.prims import absolute, matvec, rowrange, vecmat

LBL = "subcubic:eupu"


@dataclass(frozen=True)
class Direct:
    Ldir: Approx | None  # [d_vocab_max, d_vocab_out]
    gap: Approx  # [d_vocab_q, 1], [d_vocab_q, d_vocab_max] or [1, 1]


def direct(mode: str, lv: Leaves, EUPU: Approx, cert: dict, ops: Ops) -> Direct:
    V, d = lv.E_q.shape
    if mode == "max_diff_exact":
        top = ops.amax(EUPU, 1, label=LBL).map_layout(lambda t: t[:, None])
        return Direct(Ldir=None, gap=ops.sub(top, EUPU, label=LBL))
    if mode == "global_max_diff_exact":
        flat = EUPU.map_layout(lambda t: t.reshape(1, -1))
        return Direct(Ldir=None, gap=rowrange(flat, ops, LBL).map_layout(lambda t: t[:, None]))
    rr_u = rowrange(lv.U, ops, LBL)  # [d]
    if mode == "max_diff":
        gap = matvec(absolute(lv.E_q, ops, LBL), rr_u, ops, LBL)
        return Direct(Ldir=None, gap=gap.map_layout(lambda t: t[:, None]))
    if mode == "mean_query+max_diff":
        w = ops.scale(ops.sum(lv.E_q, 0, label=LBL), 1.0 / V, label=LBL)
    elif mode == "svd_query+max_diff":
        t = torch.as_tensor(cert.get("eupu_w", torch.zeros(0)), dtype=torch.float64)
        if t.shape != (d,) or not bool(torch.isfinite(t).all()):
            raise ProofPreconditionError(f"certificate entry 'eupu_w': need a finite vector of {d}")
        w = ops.exact(t, label=LBL)
    else:
        raise AssertionError(mode)
    dev = ops.sub(lv.E_q, w.map_layout(lambda t: t[None, :]), label=LBL)
    gap = matvec(absolute(dev, ops, LBL), rr_u, ops, LBL)
    eu = vecmat(w, lv.U, ops, LBL)  # [V]
    Ldir = ops.sub(eu.map_layout(lambda t: t[None, :]), eu.map_layout(lambda t: t[:, None]), LBL)
    return Direct(Ldir=Ldir, gap=gap.map_layout(lambda t: t[:, None]))
