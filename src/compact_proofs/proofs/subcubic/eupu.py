"""Direct-path (EUPU) handling (reference-algorithms §8.6 ``split_EPU``): one component per mode.

Claim (every mode): the returned ``Ldir`` [d_vocab_max, d_vocab_out] (or None, meaning 0) and
``gap`` (broadcastable to [d_vocab_q, d_vocab_max]) satisfy, for all q, m and x != m,
    EUPU[q, x] - EUPU[q, m] <= Ldir[m, x] + gap[q, m],   EUPU = E_q W_U.               (*)
Proof:
  * mean_query / svd_query / max_diff: for ANY vector w in R^d (the mean query row, a searched
    direction, or 0), EUPU[q] = w^T U + (E_q[q] - w)^T U, and
    ((E_q[q] - w)^T U)[x] - ((E_q[q] - w)^T U)[m] = sum_t (E_q[q,t] - w_t)(U[t,x] - U[t,m])
    <= sum_t |E_q[q,t] - w_t| rr(U)_t with rr(U)_t = max_x U[t,x] - min_x U[t,x], and also,
    by Cauchy-Schwarz with any centre ubar in R^d, U[:,x] - U[:,m] = (U[:,x] - ubar) -
    (U[:,m] - ubar), <= ||E_q[q] - w||_2 (beta_x + beta_m) <= ||E_q[q] - w||_2 (max beta + beta_m)
    with beta_x = ||U[:,x] - ubar||_2. So Ldir[m, x] = (w^T U)[x] - (w^T U)[m] and gap[q, m] =
    the min of the two (rounded up to exact floats).
  * max_diff_exact: gap[q, m] = max_x EUPU[q, x] - EUPU[q, m] (EUPU exact), Ldir = 0.
  * global_max_diff_exact: gap = max EUPU - min EUPU (one scalar), Ldir = 0.            QED
"""

from dataclasses import dataclass

import torch

from compact_proofs.core.circuits import Leaves
from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.subcubic.prims import (
    absolute,
    matvec,
    outer,
    rowrange,
    sqrt,
    upper_exact,
    vecmat,
)

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
        return Direct(Ldir=None, gap=_cs_gap(lv.E_q, gap, lv.U, ops))
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
    return Direct(Ldir=Ldir, gap=_cs_gap(dev, gap, lv.U, ops))


def _cs_gap(dev: Approx, gap_rr: Approx, U: Approx, ops: Ops) -> Approx:
    """gap[q, m] = min(gap_rr[q], ||dev[q]||_2 (max_x beta_x + beta_m)) as exact floats above
    the exact values (``upper_exact``), beta_x = ||U[:, x] - ubar||_2 with ubar the mean column
    of U. Cost: d (V - 1) + d + 2 V d + V (d - 1) + V (sqrt) + (V - 1) + V + V d + V (d - 1)
    + V (sqrt) + V^2 (outer) + V^2 (min) + V^2 + 2 V^2 - 1 (upper_exact)."""
    V = U.shape[1]
    ubar = ops.scale(ops.sum(U, 1, label=LBL), 1.0 / V, label=LBL)  # [d]
    cen = ops.sub(U, ubar.map_layout(lambda t: t[:, None]), label=LBL)  # [d, V]
    beta = sqrt(ops.sum(ops.mul(cen, cen, label=LBL), 0, label=LBL), ops, LBL)  # [V]
    bmax = ops.amax(beta, 0, label=LBL).map_layout(lambda t: t.reshape(1))
    bm = ops.add(beta, bmax, label=LBL)  # [V]
    nq = sqrt(ops.sum(ops.mul(dev, dev, label=LBL), 1, label=LBL), ops, LBL)  # [V_q]
    cs = outer(nq, bm, ops, LBL)  # [q, m]
    gap = ops.minimum(gap_rr.map_layout(lambda t: t[:, None]), cs, label=LBL)
    return upper_exact(gap, ops, LBL)
