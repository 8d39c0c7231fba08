"""The cubic proof's pair screen (proofs/cubic/screen.py): its separable bounds hold against every
per-key value computed naively, every key it proves is one the per-triple tests prove (the cubic's
verdicts do not change), and it proves most keys of Max-of-K-like models."""

import math

import models
import pytest
import torch

from compact_proofs.core import circuits as circuits_mod
from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs import cubic
from compact_proofs.proofs.cubic import count, pessimize, screen

MODELS = {
    "random-V5-K3": lambda: models.random_weights(5, 3, seed=31),
    "random-V2-K3": lambda: models.random_weights(2, 3, seed=32),
    "random-V6-K2": lambda: models.random_weights(6, 2, seed=33, qk_scale=3.0),
    "random-V6-K5-sharp": lambda: models.random_weights(6, 5, seed=34, qk_scale=3.0, pos_scale=2.0),
    "planted-V8-K4-noisy": lambda: models.planted_weights(8, 4, noise=0.05, pos_noise=0.3, seed=5),
    "planted-V8-K4-mild": lambda: models.planted_weights(8, 4, noise=0.02, pos_noise=0.2, seed=5),
    "trained-V6-K3": lambda: models.trained_weights(6, 3, seed=3),
    "trained-V8-K4": lambda: models.trained_weights(8, 4, seed=3),
}


def _slot_terms(w):
    """Dmax[q, m, x], Dk[q, m, k, x], Dz[q, m, x] of the pessimize docstring, naively in float64."""
    E, P, Q, K = (t.double() for t in (w.W_E, w.W_pos, w.W_Q, w.W_K))
    Vv, O, U = (t.double() for t in (w.W_V, w.W_O, w.W_U))
    EV, PV, EU = E @ Vv @ O @ U, P @ Vv @ O @ U, (E + P[-1]) @ U
    n = P.shape[0]
    pvnq = (PV[None, : n - 1, :] - PV[: n - 1].T[:, :, None]).amax(1)  # [m, x]
    eu = EU[:, None, :] - EU[:, :, None]  # [q, m, x] = EUPU[q, x] - EUPU[q, m]
    d_k = eu[:, :, None, :] + (EV[None, :, :] - EV.T[:, :, None])[None] + pvnq[None, :, None, :]
    d_max = eu + (EV - EV.diagonal()[:, None])[None] + pvnq[None]
    W = EU + EV + PV[n - 1]
    d_z = W[:, None, :] - W[:, :, None]
    return d_max, d_k, d_z  # d_k[q, m, k, x]


def _bounds(w):
    ops = Ops()
    circ = circuits_mod.circuits(w, ops)
    st = pessimize.slot_tables(circ.EUPU, circ.EVOU, circ.PVOU, ops)
    rows = pessimize.row_tops(st, ops)
    eqke = ops.divide_by_real(circ.EQKE, math.sqrt(w.config.d_head), 0.0)
    q, m = cubic._pairs(w.config.d_vocab)
    return screen.pair_bounds(st, rows, eqke, q, m, ops), eqke, ops


@pytest.mark.parametrize("name", list(MODELS))
def test_separable_bounds_hold_for_every_key_and_output(name):
    w = MODELS[name]()
    V = w.config.d_vocab
    d_max, d_k, d_z = _slot_terms(w)
    pb, eqke, ops = _bounds(w)
    tol = 1e-9
    not_m = ~torch.eye(V, dtype=torch.bool)[pb.m]  # [pairs, x]
    worst_max = d_max[pb.q, pb.m].masked_fill(~not_m, -math.inf).amax(1)
    worst_z = d_z[pb.q, pb.m].masked_fill(~not_m, -math.inf).amax(1)
    assert (pb.u_max.mid >= worst_max - tol).all()
    assert (pb.u_z.mid >= worst_z - tol).all()
    assert (pb.u_z.mid <= worst_z + tol).all()  # exact, not just a bound
    for p in torch.nonzero(pb.m >= 1, as_tuple=True)[0].tolist():
        q, m = int(pb.q[p]), int(pb.m[p])
        js = torch.arange(1, m + 1)
        u_k, e_k = screen._key_group(pb, torch.full_like(js, p), js - 1, ops)
        for j, u, e in zip(js.tolist(), u_k.mid.tolist(), e_k.mid.tolist(), strict=True):
            dk = d_k[q, m, :j][:, not_m[p]]  # [k < j, x != m]
            assert u >= dk.max().item() - tol
            scores = eqke.mid[q, :j]
            assert e == (scores.min() if u < 0 else scores.max()).item()


def _verdicts(w, no_screen=False, monkeypatch=None):
    if no_screen:
        real = screen.thresholds

        def none_proven(*args, **kwargs):
            out = real(*args, **kwargs)
            return screen.ScreenResult(torch.zeros_like(out.j), out.mid_tests, out.last_tests)

        monkeypatch.setattr(screen, "thresholds", none_proven)
    V, n = w.config.d_vocab, w.config.n_ctx
    covered = count.Covered(V, n)
    stage = cubic.decide_keys(w, Ops(), covered.add)
    return covered.proven, stage


@pytest.mark.parametrize("name", list(MODELS))
def test_screen_proves_only_keys_the_per_triple_tests_prove(name, monkeypatch):
    w = MODELS[name]()
    with_screen, stage = _verdicts(w)
    without, stage0 = _verdicts(w, no_screen=True, monkeypatch=monkeypatch)
    assert torch.equal(with_screen, without)
    assert torch.equal(stage.proven0, stage0.proven0)
    V, n = w.config.d_vocab, w.config.n_ctx
    # every triple with keys: all of them, or at n_ctx = 2 those with q = m (c = 1)
    assert stage0.tiers.left_triples == (cubic.cases.n_triples(V) if n >= 3 else V * (V - 1) // 2)


def test_screen_proves_most_keys_of_a_max_of_k_model():
    w = MODELS["trained-V8-K4"]()
    proven, stage = _verdicts(w)
    assert int(proven.sum()) > 0.9 * cubic.cases.n_triples(8) * 2  # keys with c = 1, 2
    # the triples left to the per-triple tests are a small part of all triples
    assert stage.tiers.left_triples < 0.1 * cubic.cases.n_triples(8)
