"""Path matrices of the one-layer attention-only model, computed through counted rigorous ops.

Shape glossary: ``d_vocab`` (V) tokens; ``n_ctx`` (n) positions, the last one is the query/readout;
``d_model`` (d); ``d_head`` (dh). Suffixes on proof axes: ``_q`` query token, ``_max`` max token,
``_k`` non-max key token.

Exact identity (zero biases; reference-algorithms §4): for input tokens t with query q = t[n-1],
    score(p) = EQKE[q, t_p] + EQKP[q, p]       (pre-softmax, NOT yet divided by sqrt(d_head))
    alpha    = softmax_p(score / sqrt(d_head))
    logit(x) = EUPU[q, x] + sum_p alpha_p (EVOU[t_p, x] + PVOU[p, x])
with E_q = W_E + W_pos[n-1] (query-side residual), EQKE = E_q W_Q W_K^T W_E^T,
EQKP = E_q W_Q W_K^T W_pos^T, EVOU = W_E W_V W_O W_U, PVOU = W_pos W_V W_O W_U, EUPU = E_q W_U.
"""

from dataclasses import dataclass

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.weights import Weights


@dataclass(frozen=True)
class Leaves:
    """The weights as exact ``Approx`` leaves (float32 read exactly), plus E_q."""

    E: Approx  # [d_vocab, d_model]
    P: Approx  # [n_ctx, d_model]
    Q: Approx  # [d_model, d_head]
    K: Approx  # [d_model, d_head]
    V: Approx  # [d_model, d_head]
    O: Approx  # [d_head, d_model]
    U: Approx  # [d_model, d_vocab]
    E_q: Approx  # [d_vocab, d_model] = E + P[n-1]


def leaves(w: Weights, ops: Ops) -> Leaves:
    E = ops.exact(w.W_E, label="load")
    P = ops.exact(w.W_pos, label="load")
    E_q = ops.add(E, P[-1:].map_layout(lambda t: t.expand_as(E.mid)), label="E_q")
    return Leaves(
        E=E,
        P=P,
        Q=ops.exact(w.W_Q, label="load"),
        K=ops.exact(w.W_K, label="load"),
        V=ops.exact(w.W_V, label="load"),
        O=ops.exact(w.W_O, label="load"),
        U=ops.exact(w.W_U, label="load"),
        E_q=E_q,
    )


def transpose(a: Approx) -> Approx:
    return a.map_layout(lambda t: t.transpose(-1, -2))


@dataclass(frozen=True)
class Circuits:
    """All path matrices (see the module docstring), each an ``Approx``."""

    EQKE: Approx  # [d_vocab_q, d_vocab_k]
    EQKP: Approx  # [d_vocab_q, n_ctx]
    EVOU: Approx  # [d_vocab_k, d_vocab_out]
    PVOU: Approx  # [n_ctx, d_vocab_out]
    EUPU: Approx  # [d_vocab_q, d_vocab_out]


def circuits(w: Weights, ops: Ops, lv: Leaves | None = None) -> Circuits:
    """Compute every path matrix densely.

    Cost: (V dh + dh V)(2d - 1) + V^2 (2dh - 1) for EQKE and similar chains; see ``circuits_flops``.
    """
    lv = lv if lv is not None else leaves(w, ops)
    EqQ = ops.matmul(lv.E_q, lv.Q, label="EQKE")  # [V, dh]
    KtEt = ops.matmul(transpose(lv.K), transpose(lv.E), label="EQKE")  # [dh, V]
    KtPt = ops.matmul(transpose(lv.K), transpose(lv.P), label="EQKP")  # [dh, n]
    OU = ops.matmul(lv.O, lv.U, label="OV")  # [dh, V]
    VOU = ops.matmul(lv.V, OU, label="OV")  # [d, V]
    return Circuits(
        EQKE=ops.matmul(EqQ, KtEt, label="EQKE"),
        EQKP=ops.matmul(EqQ, KtPt, label="EQKP"),
        EVOU=ops.matmul(lv.E, VOU, label="EVOU"),
        PVOU=ops.matmul(lv.P, VOU, label="PVOU"),
        EUPU=ops.matmul(lv.E_q, lv.U, label="EUPU"),
    )


def circuits_flops(V: int, n: int, d: int, dh: int) -> int:
    """Closed form of the ledger total of ``circuits`` (including ``leaves``)."""
    load = sum(2 * x - 1 for x in (V * d, n * d, d * dh, d * dh, d * dh, dh * d, d * V))
    return (
        load
        + V * d  # E_q
        + V * dh * (2 * d - 1)  # E_q Q
        + dh * V * (2 * d - 1)  # K^T E^T
        + dh * n * (2 * d - 1)  # K^T P^T
        + dh * V * (2 * d - 1)  # O U
        + d * V * (2 * dh - 1)  # V (O U)
        + V * V * (2 * dh - 1)  # EQKE
        + V * n * (2 * dh - 1)  # EQKP
        + V * V * (2 * d - 1)  # EVOU
        + n * V * (2 * d - 1)  # PVOU
        + V * V * (2 * d - 1)  # EUPU
    )
