"""Shared tiny-model factory, an independent per-input truth, and the soundness harness.

Truth is computed without the package's proof code: a direct float64 forward pass decides every
input whose margin is far from 0, and python-flint ball arithmetic (arb) decides the rest
exactly (an input it cannot decide, i.e. an exact tie, counts as not correct).

``assert_sound(strategy, weights)`` runs a strategy's search and check and asserts the soundness
contract input by input.
"""

import math

import flint
import pytest
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from compact_proofs.config import ModelConfig, TrainConfig
from compact_proofs.core.rigorous import Ops
from compact_proofs.proofs.protocol import Strategy, Verdict
from compact_proofs.weights import Weights

NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")


# --------------------------------------------------------------------------------------- models
def random_weights(
    V: int,
    n: int,
    d: int = 8,
    dh: int | None = None,
    *,
    seed: int,
    scale: float = 1.0,
    qk_scale: float = 1.0,
    pos_scale: float = 1.0,
) -> Weights:
    """Gaussian weights; ``qk_scale`` sharpens attention, ``pos_scale`` scales W_pos."""
    dh = d if dh is None else dh
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale * s).float()

    return Weights(
        W_E=r(V, d),
        W_pos=r(n, d, s=pos_scale),
        W_Q=r(d, dh, s=qk_scale),
        W_K=r(d, dh, s=qk_scale),
        W_V=r(d, dh),
        W_O=r(dh, d),
        W_U=r(d, V),
    )


def planted_weights(
    V: int,
    n: int,
    *,
    gap: float = 4.0,
    gamma: float = 3.0,
    noise: float = 0.0,
    pos_noise: float = 0.0,
    sink: float = 0.0,
    seed: int = 0,
) -> Weights:
    """A hand-built Max-of-K model (d_model = 2V + 2, d_head = V), plus optional noise.

    Residual layout: one-hot token block A (V dims), output block B (V dims), a "size" dim (token
    value / V) and a constant "one" dim. QK: the query's "one" dim meets the key's "size" dim, so
    the score of key token k is ``gap * k`` after the 1/sqrt(d_head) scale (attention prefers
    larger tokens). OV copies block A into block B and W_U reads block B scaled by ``gamma``:
    EVOU = gamma I, EUPU = 0, PVOU = 0 without noise. With ``sink``, W_U also reads every dim of
    block B into output 0: EVOU = gamma I + sink (a column of ones at output 0), so that each
    token's largest output other than itself is output 0.
    """
    d, dh = 2 * V + 2, V
    size, one = 2 * V, 2 * V + 1
    E = torch.zeros(V, d, dtype=torch.float64)
    E[torch.arange(V), torch.arange(V)] = 1.0
    E[:, size] = torch.arange(V, dtype=torch.float64) / V
    E[:, one] = 1.0
    P = torch.zeros(n, d, dtype=torch.float64)
    Q = torch.zeros(d, dh, dtype=torch.float64)
    K = torch.zeros(d, dh, dtype=torch.float64)
    Q[one, 0] = gap * math.sqrt(dh) * V
    K[size, 0] = 1.0
    Wv = torch.zeros(d, dh, dtype=torch.float64)
    Wv[torch.arange(V), torch.arange(V)] = 1.0
    O = torch.zeros(dh, d, dtype=torch.float64)
    O[torch.arange(V), V + torch.arange(V)] = 1.0
    Uu = torch.zeros(d, V, dtype=torch.float64)
    Uu[V + torch.arange(V), torch.arange(V)] = gamma
    Uu[V + torch.arange(V), 0] += sink
    g = torch.Generator().manual_seed(seed)
    mats = [E, P, Q, K, Wv, O, Uu]
    if noise or pos_noise:
        for i, t in enumerate(mats):
            s = pos_noise if i == 1 else noise
            mats[i] = t + s * torch.randn(t.shape, generator=g, dtype=torch.float64)
    return Weights(**{k: t.float() for k, t in zip(NAMES, mats, strict=True)})


def random_small_model(seed: int) -> Weights:
    """A small random model drawn from a seed: Gaussian (plain or sharp attention, several scales
    and positional strengths) or a noisy planted Max-of-K model; d_vocab 2..9, n_ctx 2..5."""
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    V, n = pick(range(2, 10)), pick(range(2, 6))
    while V**n > 40_000:
        n -= 1
    kind = pick(["random", "sharp", "planted"])
    if kind == "planted":
        return planted_weights(
            V, n, noise=pick([0.02, 0.1, 0.3]), pos_noise=pick([0.0, 0.3, 1.0]),
            gap=pick([0.5, 2.0, 4.0]), seed=seed,
        )  # fmt: skip
    return random_weights(
        V, n, pick([4, 8]), seed=seed, qk_scale=4.0 if kind == "sharp" else 1.0,
        pos_scale=pick([0.1, 1.0, 3.0]), scale=pick([0.5, 1.0, 2.0]),
    )  # fmt: skip


def trained_weights(V: int, n: int, *, seed: int, d: int = 16, steps: int = 400) -> Weights:
    """A quickly trained tiny model (the paper's recipe with a larger learning rate)."""
    from compact_proofs import train

    cfg = ModelConfig(d_vocab=V, n_ctx=n, d_model=d, d_head=d)
    weights, _ = train.train(cfg, TrainConfig(seed=seed, steps=steps, lr=1e-2))
    return weights


def with_logit_bias(w: Weights, bias: Float[Tensor, "d_vocab n_bias"]) -> Weights:
    """Append ``n_bias`` residual dims that add exactly ``bias.sum(1)`` (as reals) to the logits.

    Each new dim is 1 in W_pos[n-1] and 0 in W_E, W_pos[< n-1], W_Q/W_K/W_V rows and W_O
    columns, so attention is unchanged and the final residual's new coordinates are exactly 1;
    W_U's new rows hold the float32 biases.
    """
    V, n, b = w.W_E.shape[0], w.W_pos.shape[0], bias.shape[1]
    dh = w.W_Q.shape[1]
    z = torch.zeros
    pos = z(n, b)
    pos[-1] = 1.0
    return Weights(
        W_E=torch.cat([w.W_E, z(V, b)], 1),
        W_pos=torch.cat([w.W_pos, pos], 1),
        W_Q=torch.cat([w.W_Q, z(b, dh)], 0),
        W_K=torch.cat([w.W_K, z(b, dh)], 0),
        W_V=torch.cat([w.W_V, z(b, dh)], 0),
        W_O=torch.cat([w.W_O, z(dh, b)], 1),
        W_U=torch.cat([w.W_U, bias.float().T], 0),
    )


# ------------------------------------------------------------------------------------ the truth
def all_tokens(V: int, n: int) -> Int[Tensor, "n_inputs n_ctx"]:
    """Every input in the paper's index order (token j of input i is (i // V^j) % V)."""
    idx = torch.arange(V**n, dtype=torch.int64)
    return (idx[:, None] // V ** torch.arange(n, dtype=torch.int64)) % V


def naive_last_logits(w: Weights, tokens: Int[Tensor, "batch n_ctx"]) -> Tensor:
    """Direct float64 forward pass at the last position (no path decomposition)."""
    E, P = w.W_E.double(), w.W_pos.double()
    resid = E[tokens] + P  # [batch, n, d]
    q = resid[:, -1] @ w.W_Q.double()
    k = resid @ w.W_K.double()
    v = resid @ w.W_V.double()
    scores = torch.einsum("bh,bph->bp", q, k) / math.sqrt(w.W_Q.shape[1])
    attn = torch.softmax(scores, dim=-1)
    out = resid[:, -1] + torch.einsum("bp,bph->bh", attn, v) @ w.W_O.double()
    return out @ w.W_U.double()


def _arb_mat(t: Tensor) -> flint.arb_mat:
    return flint.arb_mat([[flint.arb(float(x)) for x in row] for row in t.double().tolist()])


def arb_wrong_margins(w: Weights, tokens: list[int], prec: int = 256) -> list:
    """[logit(m) - logit(x) for x != m] as arb balls (exact real forward pass, precision prec)."""
    old = flint.ctx.prec
    flint.ctx.prec = prec
    try:
        n = len(tokens)
        E, P = _arb_mat(w.W_E), _arb_mat(w.W_pos)
        Q, K, Vv, O, U = (_arb_mat(getattr(w, k)) for k in ("W_Q", "W_K", "W_V", "W_O", "W_U"))
        d = E.ncols()
        resid = flint.arb_mat([[E[t, j] + P[p, j] for j in range(d)] for p, t in enumerate(tokens)])
        q = flint.arb_mat([[resid[n - 1, j] for j in range(d)]]) * Q  # [1, dh]
        keys = resid * K  # [n, dh]
        scale = flint.arb(Q.ncols()).sqrt()
        scores = [
            sum((q[0, h] * keys[p, h] for h in range(Q.ncols())), flint.arb(0)) / scale
            for p in range(n)
        ]
        weights = [s.exp() for s in scores]
        total = sum(weights, flint.arb(0))
        vo = resid * Vv * O  # [n, d]
        out = [
            resid[n - 1, j] + sum((weights[p] * vo[p, j] for p in range(n)), flint.arb(0)) / total
            for j in range(d)
        ]
        logits = flint.arb_mat([out]) * U
        m = max(tokens)
        return [logits[0, m] - logits[0, x] for x in range(U.ncols()) if x != m]
    finally:
        flint.ctx.prec = old


def decide_correct(w: Weights, tokens: list[int]) -> bool:
    """Exact truth for one input: True iff every margin is certainly > 0 (ties are wrong)."""
    for prec in (128, 512, 2048):
        margins = arb_wrong_margins(w, tokens, prec)
        if any(mg < 0 for mg in margins):
            return False
        if all(mg > 0 for mg in margins):
            return True
    return False  # undecidable at 2048 bits: an exact tie (wrong) in practice


def exact_margin(w: Weights, tokens: list[int], prec: int = 512):
    """logit(m) - max_{x != m} logit(x) as an arb ball (the smallest margin by midpoint)."""
    margins = arb_wrong_margins(w, tokens, prec)
    return min(margins, key=lambda a: float(a.mid()))


def truth_mask(w: Weights, chunk: int = 1 << 16) -> Bool[Tensor, " n_inputs"]:
    """Inputs certainly classified correctly by the exact real forward pass (ties are wrong).

    float64 decides margins beyond a generous tolerance; arb decides the rest. The tolerance:
    1e-9 of C, a crude bound on the sum of absolute logit contributions (float64 errors are
    ~1e-15 of it), plus what an error delta in the attention scores can do: each weight moves by
    a factor within e^(+-2 delta), so the margin by at most 2 (e^(2 delta) - 1) C. delta is
    1e-12 of the scores' sums of absolute products (float64 errors are ~1e-14 of them); with
    huge scores (1e16 with O(1) differences) this sends the inputs to arb.
    """
    V, n = w.W_E.shape[0], w.W_pos.shape[0]
    tokens = all_tokens(V, n)
    out = torch.empty(tokens.shape[0], dtype=torch.bool)
    E_abs, P_abs, U_abs = w.W_E.double().abs(), w.W_pos.double().abs(), w.W_U.double().abs()
    Q_abs, K_abs = w.W_Q.double().abs(), w.W_K.double().abs()
    amplify = 1.0 + float((w.W_V.double().abs() @ w.W_O.double().abs()).sum())
    for s in range(0, tokens.shape[0], chunk):
        t = tokens[s : s + chunk]
        logits = naive_last_logits(w, t)
        m = t.max(dim=1).values
        own = logits.gather(1, m[:, None])[:, 0]
        others = logits.scatter(1, m[:, None], -math.inf).amax(dim=1)
        margin = own - others
        # Crude bound on the sum of absolute logit contributions (residual and attention output).
        res_abs = E_abs[t] + P_abs  # [batch, n, d]
        contrib = 1.0 + (res_abs.amax(dim=1) @ U_abs).amax(dim=1) * amplify
        score_abs = torch.einsum("bh,bph->bp", res_abs[:, -1] @ Q_abs, res_abs @ K_abs)
        delta = 1e-12 * score_abs.amax(dim=1) / math.sqrt(w.W_Q.shape[1])
        tol = 1e-9 * contrib + 2.0 * torch.expm1(2.0 * delta) * contrib
        tol = torch.nan_to_num(tol, nan=math.inf)
        res = margin > tol
        unsure = torch.nonzero(margin.abs() <= tol, as_tuple=True)[0]
        for i in unsure.tolist():
            res[i] = decide_correct(w, t[i].tolist())
        out[s : s + t.shape[0]] = res
    return out


# -------------------------------------------------------------------------------- adversarial
def near_tie(w: Weights, tokens: list[int], target: float) -> Weights:
    """Weights whose input ``tokens`` has exact margin logit(m) - max_{x != m} logit(x) equal to
    ``target`` up to ~1e-20, via three appended exact logit-bias dims on logit m.

    The biases shift logit m of every input by the same exact real amount, so other inputs move
    too (the truth is recomputed anyway).
    """
    V = w.W_E.shape[0]
    m = max(tokens)
    old = flint.ctx.prec
    flint.ctx.prec = 512
    try:
        need = flint.arb(target) - exact_margin(w, tokens)
        bias = torch.zeros(V, 3, dtype=torch.float32)
        for j in range(3):
            b = torch.tensor(float(need.mid()), dtype=torch.float32)
            bias[m, j] = b
            need = need - flint.arb(float(b))
    finally:
        flint.ctx.prec = old
    return with_logit_bias(w, bias)


# ------------------------------------------------------------------------------------ harness
def assert_sound(
    strategy: Strategy, weights: Weights, truth: Bool[Tensor, " n_inputs"] | None = None
) -> Verdict:
    """Run ``strategy`` on ``weights`` and assert the soundness contract input by input.

    Asserts: ``0 <= correct_count <= exact count``; the expanded mask has exactly
    ``correct_count`` inputs, all truly correct; brute force is exact. Skips (pytest.skip) when
    the model has more inputs than ``strategy.max_inputs``.
    """
    cfg = weights.config
    if strategy.max_inputs is not None and cfg.n_inputs > strategy.max_inputs:
        pytest.skip(f"{strategy.name} refuses {cfg.n_inputs} inputs")
    truth = truth_mask(weights) if truth is None else truth
    certificate = strategy.search(weights)
    ops = Ops()
    verdict = strategy.check(weights, certificate, ops)
    count = verdict.correct_count
    exact = int(truth.sum())
    assert isinstance(count, int), f"{strategy.name}: correct_count must be a Python int"
    assert ops.ledger.flop > 0, f"{strategy.name}: the check counted no FLOPs"
    assert 0 <= count <= exact, f"{strategy.name}: claims {count} correct, truth is {exact}"
    if strategy.name == "brute-force":
        assert count == exact, f"brute force counts {count}, truth is {exact}"
    assert verdict.expand is not None, f"{strategy.name}: no expand() for a small model"
    mask = verdict.expand()
    assert mask.dtype == torch.bool and mask.shape == (cfg.n_inputs,)
    assert int(mask.sum()) == count, f"{strategy.name}: mask has {int(mask.sum())} != {count}"
    bad = torch.nonzero(mask & ~truth, as_tuple=True)[0]
    if bad.numel():
        toks = all_tokens(cfg.d_vocab, cfg.n_ctx)[bad[:5]].tolist()
        raise AssertionError(f"{strategy.name} proves {bad.numel()} incorrect inputs, e.g. {toks}")
    return verdict


# ------------------------------------------------------------------------------- the catalogue
def _planted_near_ties() -> Weights:
    """Planted Max-of-4 model (positions irrelevant, so every permutation of an input shares its
    margin) with whole classes pushed to within 1e-9 .. 1e-16 of a tie, on both sides; the
    cubic proof's bound for key (m, m, k, 3) equals minus the margin of (k, k, k, m) here."""
    w = planted_weights(7, 4)
    for toks, target in (
        ([1, 1, 1, 2], -1e-9),
        ([2, 2, 2, 3], 1e-12),
        ([3, 3, 3, 4], -1e-13),
        ([4, 4, 4, 5], 1e-15),
        ([5, 5, 5, 6], -1e-16),
        ([1, 1, 6, 6], 1e-13),  # q = m, c = 2
    ):
        w = near_tie(w, toks, target)
    return w


def _c0_near_ties() -> Weights:
    """Noisy planted model with c = 0 inputs (m, ..., m, q) at +-1e-14 (evaluated exactly by the
    cubic proof) and a mixed input at -1e-13."""
    w = planted_weights(6, 4, noise=0.02, pos_noise=0.2, seed=3)
    for toks, target in (([4, 4, 4, 1], 1e-14), ([5, 5, 5, 2], -1e-14), ([2, 3, 5, 5], -1e-13)):
        w = near_tie(w, toks, target)
    return w


def _smallest_margin_inputs(w: Weights, count: int) -> list[list[int]]:
    V, n = w.W_E.shape[0], w.W_pos.shape[0]
    t = all_tokens(V, n)
    logits = naive_last_logits(w, t)
    m = t.max(dim=1).values
    own = logits.gather(1, m[:, None])[:, 0]
    margin = own - logits.scatter(1, m[:, None], -math.inf).amax(dim=1)
    margin[margin <= 0] = math.inf
    return t[margin.argsort()[:count]].tolist()


def _trained_near_ties() -> Weights:
    """Trained model whose two smallest positive margins are moved to -1e-13 and +1e-13."""
    w = trained_weights(8, 3, seed=1, steps=300)
    for toks, target in zip(_smallest_margin_inputs(w, 2), (-1e-13, 1e-13), strict=True):
        w = near_tie(w, toks, target)
    return w


def exact_ties_model(seed: int) -> Weights:
    """A noisy planted model in which token V - 2 is a copy of token V - 3 (same embedding row,
    same unembedding column): logit(V - 2) == logit(V - 3) exactly on every input, so every
    input whose max is either of them is an exact tie (wrong), while the other inputs keep
    their margins. d_vocab 5..8, n_ctx 3..4, drawn from the seed."""
    g = torch.Generator().manual_seed(seed)
    V = int(torch.randint(5, 9, (1,), generator=g))
    n = int(torch.randint(3, 5, (1,), generator=g))
    w = planted_weights(V, n, noise=0.05, pos_noise=0.3, seed=seed)
    E, U = w.W_E.clone(), w.W_U.clone()
    E[V - 2], U[:, V - 2] = E[V - 3], U[:, V - 3]
    return Weights(W_E=E, W_pos=w.W_pos, W_Q=w.W_Q, W_K=w.W_K, W_V=w.W_V, W_O=w.W_O, W_U=U)


CATALOGUE = {
    "trained-V8-K3": lambda: trained_weights(8, 3, seed=1, steps=300),
    "trained-V10-K4-partial": lambda: trained_weights(10, 4, seed=2, steps=60),
    "trained-V6-K5-partial": lambda: trained_weights(6, 5, seed=3, steps=80),
    "random-V7-K3": lambda: random_weights(7, 3, seed=1),
    "random-V9-K3-scale3": lambda: random_weights(9, 3, seed=2, scale=3.0),
    "random-V6-K4-sharp": lambda: random_weights(6, 4, seed=3, qk_scale=4.0),
    "random-V5-K5-verysharp": lambda: random_weights(5, 5, seed=4, qk_scale=10.0, pos_scale=3.0),
    "random-V12-K2": lambda: random_weights(12, 2, seed=5),
    "planted-V8-K4-noisy": lambda: planted_weights(8, 4, noise=0.05, pos_noise=0.3, seed=1),
    "planted-V6-K5": lambda: planted_weights(6, 5),
    "neartie-planted-V7-K4": _planted_near_ties,
    "neartie-c0-V6-K4": _c0_near_ties,
    "neartie-trained-V8-K3": _trained_near_ties,
    # the adaptive search re-checks 18 of its homogeneous keys per output (mixed form)
    "random-V9-K4-perkey": lambda: random_small_model(32),
    # hundreds of inputs whose max logit ties exactly with another (wrong, decided exactly)
    "ties-duplicate-token": lambda: exact_ties_model(0),
    # scores ~1e13: float64 cannot resolve the softmax (rho >= 1), every float test is vacuous
    "random-V5-K3-scale1e3": lambda: random_weights(5, 3, 4, seed=1, scale=1e3),
}
