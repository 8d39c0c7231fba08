"""The paper's subcubic rule implemented as written (reference-algorithms §8.5-8.7), float64, for
comparison in tests: the variant EUPUMeanQueryMaxDiff / AttnMeanQueryDiff /
AttnErrExactEqkeMaxDiffExact (exact EQKE, so eps = 0). Optional switches apply our two soundness
fixes (§13.2 sign of delta, §13.3 both endpoints), to show which one matters.
"""

import math

import models
import torch
from jaxtyping import Int
from torch import Tensor


def paper_rule_lw(
    w, gaps: Int[Tensor, "q m c"], fix_delta: bool = False, fix_endpoint: bool = False
) -> Tensor:
    """LW [q, m, c] (c = 0 .. n-1, the query counted in c; NaN = not applicable)."""
    E, P, Q, K = (t.double() for t in (w.W_E, w.W_pos, w.W_Q, w.W_K))
    Wv, O, U = (t.double() for t in (w.W_V, w.W_O, w.W_U))
    V, n = E.shape[0], P.shape[0]
    s = math.sqrt(Q.shape[1])
    Eq = E + P[-1]
    Pbar = P.mean(0)
    EQKE = Eq @ Q @ K.T @ (E + Pbar).T
    pos = Eq @ Q @ K.T @ (P - Pbar).T
    EVOU = E @ Wv @ O @ U
    PVOU = P @ Wv @ O @ U
    nan = float("nan")
    Amax = torch.full((2, V, V, n), nan, dtype=torch.float64)  # §8.5
    for q in range(V):
        asc = (pos[q] - pos[q, n - 1])[: n - 1].sort().values
        for m in range(q, V):
            for c in range(n):
                g = int(gaps[q, m, c])
                if (c == 0 and q != m) or (m < g and c != 0) or (q != m and m - q < g):
                    continue
                if m < g:
                    D = (0.0, 0.0)
                else:
                    row = EQKE[q, : m - g + 1]
                    D = (float(EQKE[q, m] - row.max()), float(EQKE[q, m] - row.min()))
                for r, order in ((0, asc), (1, asc.flip(0))):
                    sc = torch.cat([order, torch.zeros(1, dtype=torch.float64)])
                    is_max = torch.zeros(n, dtype=torch.bool)
                    if q != m:
                        is_max[: n - c] = True
                    else:
                        is_max[: n - c - 1] = True
                        is_max[n - 1] = True
                    Amax[r, q, m, c] = torch.softmax((sc + D[r] * is_max) / s, 0)[is_max].sum()
    wq = Eq.mean(0)  # §8.6, EUPU mean_query+max_diff
    eu_mean = wq @ U
    eu_gap = (Eq - wq).abs() @ (U.max(1).values - U.min(1).values)
    Wrow = EVOU.max(1).values - EVOU.min(1).values
    LW = torch.full((V, V, n), nan, dtype=torch.float64)
    for m in range(V):
        notm = torch.arange(V) != m
        PVs = (PVOU - PVOU[:, m : m + 1]).max(0).values
        L = eu_mean - eu_mean[m] + PVs
        R = EVOU[m] - EVOU[m, m]
        Rp, Rm = R[notm].max(), R[notm].min()
        ell = Eq[m] @ U + R + PVs
        LW[m, m, 0] = (ell - ell[m])[notm].max()
        for c in range(1, n):
            qs = [q for q in range(m + 1) if q == m or m - q >= int(gaps[q, m, c])]
            gc = min(int(gaps[q, m, c]) for q in range(m + 1))
            if m < gc:
                continue
            W = Wrow[: m - gc + 1].max()
            for q in qs:
                worst = -math.inf
                for idx in (0, 1) if fix_endpoint else (0 if Rp < W else 1,):
                    vals = [Amax[idx, k, m, c] for k in qs if not math.isnan(Amax[idx, k, m, c])]
                    a = Amax[idx, q, m, c]
                    if not vals or math.isnan(a):
                        continue
                    avg = sum(vals) / len(vals)
                    base = (L + avg * R)[notm].max() + (1 - avg) * W
                    delta = a - avg
                    slope = Rm if (fix_delta and delta < 0) else Rp
                    worst = max(worst, float(base + eu_gap[q] + delta * slope - delta * W))
                if worst > -math.inf:
                    LW[q, m, c] = worst
    return LW


def paper_claims(w, gaps: Tensor, **fixes) -> Tensor:
    """Mask of the inputs the rule declares correct: LW[q, m, c] < 0 and every non-max token
    (the query too when q != m) <= m - g."""
    LW = paper_rule_lw(w, gaps, **fixes)
    V, n = w.W_E.shape[0], w.W_pos.shape[0]
    t = models.all_tokens(V, n)
    q, m = t[:, -1], t.max(1).values
    nonmax = t < m[:, None]
    c = nonmax.sum(1)
    inside = (torch.where(nonmax, t, -1) <= (m - gaps[q, m, c])[:, None]).all(1)
    return (LW[q, m, c] < 0) & inside


def paper_count(proven: Tensor, gaps: Tensor, n: int) -> int:
    """§8.7 as written: C(n-1, c') (m - g)^c' (the off-by-one)."""
    V = proven.shape[0]
    total = 0
    for q in range(V):
        for m in range(q, V):
            for c in range(n):
                g = int(gaps[q, m, c])
                if not proven[q, m, c] or (q != m and c == 0) or (q != m and m - q < g):
                    continue
                if m == 0 and c > 0:
                    continue
                cp = c - 1 if q != m else c
                total += 1 if cp == 0 else math.comb(n - 1, cp) * (m - g) ** cp
    return total


def structured_weights(M, b, S, n: int):
    """Block model with EVOU = M, EUPU[q, x] = b[x] for every q, EQKE = S, PVOU = 0 and no
    positional attention (d_model = 2V + 1, d_head = V)."""
    from compact_proofs.weights import Weights

    V = len(M)
    d, dh, one = 2 * V + 1, V, 2 * V
    E = torch.zeros(V, d, dtype=torch.float64)
    E[torch.arange(V), torch.arange(V)] = 1.0
    E[:, one] = 1.0
    Q = torch.zeros(d, dh, dtype=torch.float64)
    Q[:V, :] = torch.tensor(S, dtype=torch.float64) * math.sqrt(dh)
    K = torch.zeros(d, dh, dtype=torch.float64)
    K[torch.arange(V), torch.arange(V)] = 1.0
    Wv = torch.zeros(d, dh, dtype=torch.float64)
    Wv[torch.arange(V), torch.arange(V)] = 1.0
    O = torch.zeros(dh, d, dtype=torch.float64)
    O[torch.arange(V), V + torch.arange(V)] = 1.0
    Uu = torch.zeros(d, V, dtype=torch.float64)
    Uu[V : 2 * V, :] = torch.tensor(M, dtype=torch.float64)
    Uu[one, :] = torch.tensor(b, dtype=torch.float64)
    mats = (E, torch.zeros(n, d, dtype=torch.float64), Q, K, Wv, O, Uu)
    return Weights(**{k: t.float() for k, t in zip(models.NAMES, mats, strict=True)})


# Found by a random search over ``structured_weights`` (V = 3, n = 2), rounded to one decimal.
OVERCLAIM_MODEL = {
    "M": [[-0.7, -1.2, -0.5], [1.5, 7.3, 0.7], [-3.5, -0.5, 4.4]],
    "b": [-2.2, 0.5, 0.1],
    "S": [[-3.6, 0.3, 2.0], [5.6, -4.7, 3.5], [-4.3, -5.1, -4.0]],
}
