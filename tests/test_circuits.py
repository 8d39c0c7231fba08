"""The path decomposition (core/circuits.py) against an independent float64 forward pass, and its
rigorous radii against exact rational arithmetic (python-flint)."""

import math

import flint
import models
import pytest
import torch

from compact_proofs.core import circuits as C
from compact_proofs.core.rigorous import Ops
from compact_proofs.weights import Weights


def random_weights(V: int, n: int, d: int, dh: int, seed: int, scale: float = 1.0) -> Weights:
    return models.random_weights(V, n, d, dh, seed=seed, scale=scale)


def naive_last_logits(w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """Direct float64 forward pass of the model at the last position (no path decomposition)."""
    E, P = w.W_E.double(), w.W_pos.double()
    resid = E[tokens] + P  # [batch, n, d]
    q = resid[:, -1] @ w.W_Q.double()  # [batch, dh]
    k = resid @ w.W_K.double()  # [batch, n, dh]
    v = resid @ w.W_V.double()
    scores = torch.einsum("bh,bph->bp", q, k) / math.sqrt(w.W_Q.shape[1])
    attn = torch.softmax(scores, dim=-1)
    out = resid[:, -1] + torch.einsum("bp,bph->bh", attn, v) @ w.W_O.double()
    return out @ w.W_U.double()


@pytest.mark.parametrize("V,n,d,dh", [(7, 3, 5, 4), (12, 5, 8, 8), (64, 4, 32, 32)])
def test_decomposition_equals_forward_pass(V, n, d, dh):
    w = random_weights(V, n, d, dh, seed=V + n)
    c = C.circuits(w, Ops())
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (200, n), generator=g)
    q = tokens[:, -1]
    scores = c.EQKE.mid[q[:, None], tokens] + c.EQKP.mid[q]  # [batch, n]
    attn = torch.softmax(scores / math.sqrt(dh), dim=-1)
    vals = c.EVOU.mid[tokens] + c.PVOU.mid[None]  # [batch, n, V]
    logits = c.EUPU.mid[q] + torch.einsum("bp,bpx->bx", attn, vals)
    torch.testing.assert_close(logits, naive_last_logits(w, tokens), rtol=1e-12, atol=1e-10)


def test_ledger_matches_closed_form():
    for V, n, d, dh in [(7, 3, 5, 4), (64, 4, 32, 32), (128, 10, 32, 16)]:
        ops = Ops()
        C.circuits(random_weights(V, n, d, dh, seed=0), ops)
        assert ops.ledger.flop == C.circuits_flops(V, n, d, dh)


# Shapes under which ``circuits`` takes each association of each chain (checked below).
ASSOCIATION_SHAPES = [(5, 3, 4, 3), (6, 3, 4, 4), (20, 4, 6, 6)]


def test_association_shapes_cover_both_orders():
    chosen = {
        (qk[1] < qk[0], ov[1] < ov[0]) for qk, ov in (C.chain_costs(*s) for s in ASSOCIATION_SHAPES)
    }
    assert {qk for qk, _ in chosen} == {True, False}
    assert {ov for _, ov in chosen} == {True, False}


@pytest.mark.parametrize("V,n,d,dh", ASSOCIATION_SHAPES)
def test_radii_contain_exact_values(V, n, d, dh):
    """Every entry of every path matrix lies within mid +- rad of the exact rational value."""
    w = random_weights(V, n, d, dh, seed=3, scale=30.0)
    c = C.circuits(w, Ops())

    def fm(t):
        return flint.fmpq_mat(
            [[flint.fmpq(*float(x).as_integer_ratio()) for x in row] for row in t.double().tolist()]
        )

    E, P, Q, K, Vv, O, U = (
        fm(getattr(w, k)) for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")
    )
    Eq = E + fm(w.W_pos[-1:].expand(V, d))
    exact = {
        "EQKE": Eq * Q * K.transpose() * E.transpose(),
        "EQKP": Eq * Q * K.transpose() * P.transpose(),
        "EVOU": E * Vv * O * U,
        "PVOU": P * Vv * O * U,
        "EUPU": Eq * U,
    }
    for name, ex in exact.items():
        a = getattr(c, name)
        assert a.rad > 0
        for i in range(ex.nrows()):
            for j in range(ex.ncols()):
                mid = flint.fmpq(*float(a.mid[i, j]).as_integer_ratio())
                rad = flint.fmpq(*float(a.rad).as_integer_ratio())
                assert abs(ex[i, j] - mid) <= rad, (name, i, j)
                assert abs(ex[i, j]) <= flint.fmpq(*float(a.mag).as_integer_ratio())
