"""The checker's stages, shared verbatim by the trusted check and the untrusted search (the
search runs them with a throwaway ledger and many candidate gaps at once, so its decisions are
bit-for-bit the checker's)."""

import math
from dataclasses import dataclass

from compact_proofs.core import circuits
from compact_proofs.core.circuits import Leaves
from compact_proofs.core.rigorous import Approx, Ops, U
from compact_proofs.proofs.subcubic import bounds, eqke, eupu
from compact_proofs.proofs.subcubic.prims import transpose, upper_exact
from compact_proofs.weights import Weights

LO = "subcubic:ov"


@dataclass(frozen=True)
class Common:
    """Variant-independent tables."""

    lv: Leaves
    em: eqke.Embeds
    pos_s: Approx  # [d_vocab_q, n_ctx]: POS / s
    EVOU: Approx  # [d_vocab_k, d_vocab_out]
    PVOU: Approx  # [n_ctx, d_vocab_out]
    EUPU: Approx  # [d_vocab_q, d_vocab_out]
    s: float


def common(w: Weights, ops: Ops) -> Common:
    """Leaves, key-side embeddings, POS / s, EVOU, PVOU, EUPU (all exact products)."""
    lv = circuits.leaves(w, ops)
    em = eqke.embeds(lv, ops)
    # math.sqrt is correctly rounded, so the exact scale is s (1 + e), |e| <= 2u.
    s = math.sqrt(w.config.d_head)
    pos_s = ops.divide_by_real(eqke.positional(lv, em, ops), s, 2 * U, label=eqke.LBL)
    ou = ops.matmul(lv.O, lv.U, label=LO)
    vou = ops.matmul(lv.V, ou, label=LO)
    return Common(
        lv=lv,
        em=em,
        pos_s=pos_s,
        EVOU=ops.matmul(lv.E, vou, label=LO),
        PVOU=ops.matmul(lv.P, vou, label=LO),
        EUPU=ops.matmul(lv.E_q, lv.U, label=LO),
        s=s,
    )


def attn_part(attn_err: str, cm: Common, cert: dict, ops: Ops) -> bounds.AttnTables:
    apx = eqke.approximate(attn_err, cm.lv, cm.em, cert, ops)
    A_s = ops.divide_by_real(apx.A, cm.s, 2 * U, label=bounds.LA)
    # eps only enters as an upper bound: an exact float above it keeps later radii small.
    eps_s = upper_exact(ops.divide_by_real(apx.eps, cm.s, 2 * U, label=bounds.LA), ops, bounds.LA)
    return bounds.attention_tables(A_s, eps_s, cm.pos_s, ops)


def logit_part(eupu_mode: str, drop: bool, cm: Common, cert: dict, ops: Ops) -> bounds.LogitTables:
    dr = eupu.direct(eupu_mode, cm.lv, cm.EUPU, cert, ops)
    return bounds.logit_tables(cm.EVOU, cm.PVOU, dr, drop, ops)


__all__ = ["Common", "attn_part", "common", "logit_part", "transpose"]
