"""Adaptive proof: single inputs, evaluated along the exact path decomposition with a rigorous
float64 bound, and decided exactly with python-flint when that bound is not enough.

Shape glossary: ``inputs`` a batch of token sequences, ``n_ctx`` positions, ``d_vocab_out``
output logits x.

Claim: ``decide`` returns +1 only for inputs with logit(m) > logit(x) for all x != m (correct),
-1 only for inputs with logit(x) >= logit(m) for some x != m (incorrect; an exact tie is
incorrect), and 0 (undecided) otherwise, for the exact real forward pass of the float32 weights.
Proof: (1) float64 stage: logit(x) - logit(m) is computed with counted rounding-sound ``Ops``
along the exact identity logit(x) = EUPU[q, x] + sum_p alpha_p (EVOU[t_p, x] + PVOU[p, x]),
alpha = softmax_p((EQKE[q, t_p] + EQKP[q, p]) / s); its rigorous upper bound < 0 for every x != m
proves correct, a rigorous lower bound > 0 for some x proves incorrect. (2) The rest: for each x
not decided in (1), ``exact_tie.sign_of_exp_sum`` gives the exact sign of
Z (logit(m) - logit(x)) = sum_p d_p exp(r_p / s) (rational d_p, r_p; Lindemann-Weierstrass, see
``compact_proofs.exact_tie``), Z > 0: a sign <= 0 for some x proves incorrect, > 0 for all x
correct; a precision cap leaves the input undecided.                                      QED
Cost: ``float_flops`` per input; the exact stage is charged ``exact_tie.exact_cost``.
"""

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.exact_tie import ExactModel, exact_cost, sign_of_exp_sum
from compact_proofs.weights import Weights

LABEL = "adaptive:singles"
EXACT_LABEL = "adaptive:exact"
CHUNK = 1 << 12


def float_stage(
    tokens: Int[Tensor, "inputs n_ctx"],
    EQKE_s: Approx,
    EQKP_s: Approx,
    EUPU: Approx,
    EVOU: Approx,
    PVOU: Approx,
    ops: Ops,
) -> tuple[Bool[Tensor, "inputs d_vocab_out"], Bool[Tensor, "inputs d_vocab_out"]]:
    """Step (1): per input and output x, (x certainly below m, x certainly above m).

    Entries at x = m are (True, False). Cost: ``float_flops`` per input.
    """
    S, n = tokens.shape
    V = EVOU.shape[1]
    below = torch.zeros(S, V, dtype=torch.bool)
    above = torch.zeros(S, V, dtype=torch.bool)
    for s0 in range(0, S, CHUNK):
        t = tokens[s0 : s0 + CHUNK]
        B = t.shape[0]
        q, m = t[:, -1], t.max(dim=1).values
        scores = ops.add(EQKE_s[q[:, None], t], EQKP_s[q], label=LABEL)  # [B, n]
        alpha = ops.softmax(scores, dim=1, label=LABEL)
        pos = ops.matmul(alpha, PVOU, label=LABEL)  # [B, x]
        ev = ops.sum(
            ops.mul(alpha.map_layout(lambda a: a[:, :, None]), EVOU[t], label=LABEL),
            dim=1,
            label=LABEL,
        )
        logits = ops.add(ops.add(EUPU[q], pos, label=LABEL), ev, label=LABEL)
        diff = ops.sub(
            logits, logits[torch.arange(B), m].map_layout(lambda a: a[:, None]), label=LABEL
        )
        is_m = torch.arange(V)[None, :] == m[:, None]
        below[s0 : s0 + B] = ops.proven_negative(diff, label=LABEL) | is_m
        above[s0 : s0 + B] = ops.proven_positive(diff, label=LABEL) & ~is_m
    return below, above


def float_flops(S: int, n: int, V: int) -> int:
    """Ledger total of ``float_stage`` for S inputs."""
    per = n + (2 * (n - 1) + 3 * n) + V * (2 * n - 1) + (n * V + (n - 1) * V) + 2 * V + V + 2 * V
    return S * per


class ExactDecider:
    """The exact stage (2); one per check, so its row cache (and cost) is deterministic."""

    def __init__(self, weights: Weights):
        self.weights = weights
        self._em: ExactModel | None = None

    def __call__(self, tokens: list[int], xs: list[int], ops: Ops) -> int:
        """+1 / -1 / 0 for one input, deciding only the outputs ``xs`` (all others are known to
        be below m)."""
        if self._em is None:
            self._em = ExactModel(self.weights)
        em = self._em
        before = len(em.rows_cache)
        q, m = tokens[-1], max(tokens)
        rows = [em.row(q, p, tok) for p, tok in enumerate(tokens)]
        exps = [r for r, _ in rows]
        verdict = 1
        for x in xs:
            sign = sign_of_exp_sum([A[m] - A[x] for _, A in rows], exps, em.d_head)
            if sign is not None and sign <= 0:
                verdict = -1
                break
            if sign is None:
                verdict = 0
        d = int(self.weights.W_E.shape[1])
        V = int(self.weights.W_E.shape[0])
        n_terms = len(xs) if verdict != -1 else xs.index(x) + 1
        ops.ledger.add(
            exact_cost(len(tokens), d, V, len(em.rows_cache) - before, n_terms), label=EXACT_LABEL
        )
        return verdict


def decide(
    tokens: Int[Tensor, "inputs n_ctx"],
    tables: tuple[Approx, Approx, Approx, Approx, Approx],
    exact: ExactDecider,
    ops: Ops,
) -> Int[Tensor, " inputs"]:
    """+1 correct, -1 incorrect, 0 undecided for every input (see the module docstring).

    ``tables`` = (EQKE_s, EQKP_s, EUPU, EVOU, PVOU)."""
    below, above = float_stage(tokens, *tables, ops)
    out = torch.zeros(tokens.shape[0], dtype=torch.int64)
    out[below.all(dim=1)] = 1
    out[above.any(dim=1)] = -1
    for i in torch.nonzero(out == 0, as_tuple=True)[0].tolist():
        xs = torch.nonzero(~below[i], as_tuple=True)[0].tolist()
        out[i] = exact(tokens[i].tolist(), xs, ops)
    return out


def exact_charge_bound(
    tokens: Int[Tensor, "inputs n_ctx"],
    tables: tuple[Approx, Approx, Approx, Approx, Approx],
    d_model: int,
) -> int:
    """An upper bound on what ``decide`` (one ``ExactDecider``) charges ``exact_tie.exact_cost``
    for ``tokens``, for the search's budget: the inputs the float stage leaves undecided need at
    most their distinct cached rows (query, position, token) and one term per output not yet
    below m. Uncounted (scratch ``Ops``)."""
    if tokens.shape[0] == 0:
        return 0
    below, above = float_stage(tokens, *tables, Ops())
    open_ = ~below.all(dim=1) & ~above.any(dim=1)
    t = tokens[open_]
    n, V = tokens.shape[1], below.shape[1]
    rows = torch.unique((t[:, -1:] * n + torch.arange(n)) * V + t).numel()
    return exact_cost(n, d_model, V, rows, int((~below[open_]).sum()))


def decide_c0(
    q: Int[Tensor, " inputs"],
    m: Int[Tensor, " inputs"],
    margin0: Approx,
    tables: tuple[Approx, Approx, Approx, Approx, Approx],
    exact: ExactDecider,
    ops: Ops,
) -> Int[Tensor, " inputs"]:
    """``decide`` for the c = 0 inputs (m, ..., m, q), with a shortcut: ``margin0[q, m]`` is
    max_{x != m} logit(x) - logit(m) of that input where the cubic's step (6) evaluated it
    exactly (``cubic.Stage.margin0``; NaN elsewhere).
    Claim: -1 only for incorrect inputs, +1 only for correct ones.
    Proof: a rigorous lower bound of the margin > 0 means some x != m has logit(x) > logit(m)
    (NaN is never > 0); the other inputs go to ``decide`` (module docstring).        QED
    Cost: 1 per input (the comparison), then ``decide`` on those not refuted."""
    refuted = ops.proven_positive(margin0[q, m], label=LABEL)
    out = torch.full((q.numel(),), -1, dtype=torch.int64)
    rest = ~refuted
    if bool(rest.any()):
        out[rest] = decide(c0_tokens(q[rest], m[rest], tables[1].shape[1]), tables, exact, ops)
    return out


def c0_flops(refuted: int, rest: int, n: int, V: int) -> int:
    """Ledger total of ``decide_c0`` for ``refuted`` inputs refuted by their margin and ``rest``
    others (the float stage; exact decisions are charged as they happen)."""
    return (refuted + rest) + float_flops(rest, n, V)


def c0_tokens(q: Int[Tensor, " inputs"], m: Int[Tensor, " inputs"], n: int) -> Tensor:
    """The c = 0 inputs (m, ..., m, q)."""
    return torch.cat([m[:, None].expand(-1, n - 1), q[:, None]], dim=1)
