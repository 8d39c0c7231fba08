"""Float64 path matrices for interpretability (not a proof: plain torch, no rounding control).

Shape glossary as in ``core/circuits.py``: ``d_vocab`` tokens, ``n_ctx`` positions (the last one is
the query/readout), ``d_model``, ``d_head``. The attention split used here is the subcubic one of
reference-algorithms §4, with the mean position folded into the key-side embedding:

    E_q = W_E + W_pos[n-1]          (query-side residual)
    Ē   = W_E + mean_p W_pos[p]     (key-side residual with the mean position)
    P̂   = W_pos - mean_p W_pos[p]   (centred positions)
    EQKE = E_q W_Q W_K^T Ē^T   [d_vocab_q, d_vocab_k]
    EQKP = E_q W_Q W_K^T P̂^T   [d_vocab_q, n_ctx]
    EVOU = W_E W_V W_O W_U     [d_vocab_k, d_vocab_out]
    PVOU = W_pos W_V W_O W_U   [n_ctx, d_vocab_out]
    EUPU = E_q W_U             [d_vocab_q, d_vocab_out]

so that for tokens t with query q = t[n-1] (exactly, zero biases):
    score(p) = EQKE[q, t_p] + EQKP[q, p]   (divide by sqrt(d_head) before the softmax)
    logit(x) = EUPU[q, x] + sum_p alpha_p (EVOU[t_p, x] + PVOU[p, x]).
"""

import math
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from compact_proofs.weights import Weights


@dataclass(frozen=True)
class Embeddings:
    """Float64 copies of the weights plus the derived embeddings of the module docstring."""

    E: Float[Tensor, "d_vocab d_model"]
    P: Float[Tensor, "n_ctx d_model"]
    Q: Float[Tensor, "d_model d_head"]
    K: Float[Tensor, "d_model d_head"]
    Wv: Float[Tensor, "d_model d_head"]
    O: Float[Tensor, "d_head d_model"]
    U: Float[Tensor, "d_model d_vocab"]
    E_q: Float[Tensor, "d_vocab d_model"]
    E_bar: Float[Tensor, "d_vocab d_model"]
    P_hat: Float[Tensor, "n_ctx d_model"]
    attn_scale: float


def embeddings(w: Weights) -> Embeddings:
    """The weights in float64 with ``E_q``, ``Ē`` and ``P̂``."""
    E, P = w.W_E.double(), w.W_pos.double()
    P_bar = P.mean(dim=0, keepdim=True)
    return Embeddings(
        E=E,
        P=P,
        Q=w.W_Q.double(),
        K=w.W_K.double(),
        Wv=w.W_V.double(),
        O=w.W_O.double(),
        U=w.W_U.double(),
        E_q=E + P[-1:],
        E_bar=E + P_bar,
        P_hat=P - P_bar,
        attn_scale=math.sqrt(w.W_Q.shape[1]),
    )


def path_matrices(w: Weights) -> dict[str, Tensor]:
    """EQKE, EQKP, EVOU, PVOU, EUPU (float64, unscaled scores) as in the module docstring."""
    e = embeddings(w)
    EqQK = e.E_q @ e.Q @ e.K.T  # [d_vocab, d_model]
    VOU = e.Wv @ e.O @ e.U  # [d_model, d_vocab]
    return {
        "EQKE": EqQK @ e.E_bar.T,
        "EQKP": EqQK @ e.P_hat.T,
        "EVOU": e.E @ VOU,
        "PVOU": e.P @ VOU,
        "EUPU": e.E_q @ e.U,
    }


def singular_value_summary(S: Float[Tensor, " k"]) -> dict[str, float]:
    """The first three singular values and the ratio sigma1 / sigma2 (inf if sigma2 == 0)."""
    s = [float(x) for x in S[:3]] + [0.0] * max(0, 3 - S.numel())
    ratio = s[0] / s[1] if s[1] > 0 else math.inf
    return {
        "eqke_sigma1": s[0],
        "eqke_sigma2": s[1],
        "eqke_sigma3": s[2],
        "eqke_sigma_ratio": ratio,
    }
