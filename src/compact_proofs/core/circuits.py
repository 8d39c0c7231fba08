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
    """Compute every path matrix densely, each matrix chain in its cheaper association
    (``chain_costs``; the value is the same, only rounding and cost differ). Cost:
    ``circuits_flops``."""
    lv = lv if lv is not None else leaves(w, ops)
    V, d = lv.E.shape
    n, dh = lv.P.shape[0], lv.Q.shape[1]
    (qk_a, qk_b), (ov_a, ov_b) = chain_costs(V, n, d, dh)
    if qk_b < qk_a:  # (E_q (Q K^T)) E^T
        QK = ops.matmul(lv.Q, transpose(lv.K), label="EQKE")  # [d, d]
        left = ops.matmul(lv.E_q, QK, label="EQKE")  # [V, d]
        EQKE = ops.matmul(left, transpose(lv.E), label="EQKE")
        EQKP = ops.matmul(left, transpose(lv.P), label="EQKP")
    else:  # (E_q Q) (K^T E^T)
        left = ops.matmul(lv.E_q, lv.Q, label="EQKE")  # [V, dh]
        KtEt = ops.matmul(transpose(lv.K), transpose(lv.E), label="EQKE")  # [dh, V]
        KtPt = ops.matmul(transpose(lv.K), transpose(lv.P), label="EQKP")  # [dh, n]
        EQKE = ops.matmul(left, KtEt, label="EQKE")
        EQKP = ops.matmul(left, KtPt, label="EQKP")
    if ov_b < ov_a:  # (E (V O)) U
        VO = ops.matmul(lv.V, lv.O, label="OV")  # [d, d]
        EVOU = ops.matmul(ops.matmul(lv.E, VO, label="EVOU"), lv.U, label="EVOU")
        PVOU = ops.matmul(ops.matmul(lv.P, VO, label="PVOU"), lv.U, label="PVOU")
    else:  # E (V (O U))
        VOU = ops.matmul(lv.V, ops.matmul(lv.O, lv.U, label="OV"), label="OV")  # [d, V]
        EVOU = ops.matmul(lv.E, VOU, label="EVOU")
        PVOU = ops.matmul(lv.P, VOU, label="PVOU")
    return Circuits(
        EQKE=EQKE, EQKP=EQKP, EVOU=EVOU, PVOU=PVOU, EUPU=ops.matmul(lv.E_q, lv.U, label="EUPU")
    )


def _mm(a: int, b: int, c: int) -> int:
    """FLOPs of an [a, b] @ [b, c] product (``Ops.matmul``)."""
    return a * c * (2 * b - 1)


def chain_costs(V: int, n: int, d: int, dh: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """FLOPs of the two associations of each chain: ((E_q Q)(K^T E^T), (E_q (Q K^T)) E^T) for
    EQKE with EQKP, and (E (V (O U)), (E (V O)) U) for EVOU with PVOU."""
    qk = (
        _mm(V, d, dh) + _mm(dh, d, V) + _mm(dh, d, n) + _mm(V, dh, V) + _mm(V, dh, n),
        _mm(d, dh, d) + _mm(V, d, d) + _mm(V, d, V) + _mm(V, d, n),
    )
    ov = (
        _mm(dh, d, V) + _mm(d, dh, V) + _mm(V, d, V) + _mm(n, d, V),
        _mm(d, dh, d) + _mm(V, d, d) + _mm(n, d, d) + _mm(V, d, V) + _mm(n, d, V),
    )
    return qk, ov


def circuits_flops(V: int, n: int, d: int, dh: int) -> int:
    """Closed form of the ledger total of ``circuits`` (including ``leaves``)."""
    load = sum(2 * x - 1 for x in (V * d, n * d, d * dh, d * dh, d * dh, dh * d, d * V))
    qk, ov = chain_costs(V, n, d, dh)
    return load + V * d + min(qk) + min(ov) + _mm(V, d, V)  # E_q, chains, EUPU
