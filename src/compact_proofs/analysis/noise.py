""" "Structureless noise" analysis of the EQKE residual (reference-algorithms §8.4(c), §11.4).

Decomposition (built here from scratch, float64). With ``E_q = W_E + W_pos[n-1]``,
``E_k = Ē = W_E + mean_p W_pos[p]`` and ``M = E_q Q K^T E_k^T`` (= EQKE):

* ``q̂, k̂`` = top left / right singular vectors of ``M`` (sign: ``mean(q̂) > 0``), in R^d_vocab;
* ``E_q⊥ = (I - q̂q̂ᵀ) E_q``, ``E_k⊥ = (I - k̂k̂ᵀ) E_k``; ``q̂₂, k̂₂`` = their top left singular vectors;
* ``E_q⊥⊥ = (I - q̂₂q̂₂ᵀ) E_q⊥``, ``E_k⊥⊥ = (I - k̂₂k̂₂ᵀ) E_k⊥``;
* ``û_Q, û_K`` = top left singular vectors of ``W_Q``, ``W_K`` (in R^d_model);
  ``Q⊥ = (I - û_Qû_Qᵀ) W_Q``, ``K⊥ = (I - û_Kû_Kᵀ) W_K``.

Expanding each factor along these splits gives the exact identity
``M = main + (six rank-1 terms) + R`` with ``main = (q̂q̂ᵀE_q) Q Kᵀ (k̂k̂ᵀE_k)ᵀ`` and the residual
``R = E_q⊥⊥ · Q⊥ · K⊥ᵀ · E_k⊥⊥ᵀ`` (the four "residual factors" m0..m3). ``simple = M - main`` is the
residual plus the rank-1 terms. The analysis compares the actual max row range of ``R``
(max over rows of max - min within the row) with what each attention-error mode of §8.4 would
bound it by, and with the same statistic for 100 resamples of the factors in which the entries of
every factor are shuffled (permuted), and 100 in which they are replaced by i.i.d. Gaussians with
the factor's mean and std (one ``torch.Generator`` seeded 1234, shuffles first). If the residual
behaved like structureless noise, the actual value would sit inside the resampled distributions.

The per-mode bounds are the ones the subcubic checker uses (``proofs/subcubic/eqke.py``; here in
float64, without its rounding control, so at most slightly below its eps): for the three recursive
modes that is the elementwise min of the paper's recursive row-range bound and a
Cauchy–Schwarz bound (eqke.py, family (d)); both parts are also reported separately
(``noise_paper_bound_*``, ``noise_cs_bound_*``), so the paper's value stays visible.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from compact_proofs.analysis.paths import embeddings
from compact_proofs.proofs.subcubic.variants import RECURSIVE_MEANS
from compact_proofs.weights import Weights

RESAMPLE_SEED = 1234
N_RESAMPLES = 100

# Attention-error modes of §8.4 that bound the residual; exact_EQKE has no residual and is absent.
ERROR_MODES: tuple[str, ...] = (
    "svd",
    "max_diff",
    "mean+max_diff",
    "max_diff_subproduct",
    "mean+max_diff_subproduct",
    "max_diff_subproduct_recursive",
    "mean+max_diff_subproduct_recursive",
    "mean_recursive+max_diff_subproduct_recursive",
    "max_diff_exact",
)


def _top_left(M: Float[Tensor, "a b"]) -> Float[Tensor, " a"]:
    return torch.linalg.svd(M, full_matrices=False).U[:, 0]


def _remove(u: Float[Tensor, " a"], M: Float[Tensor, "a b"]) -> Float[Tensor, "a b"]:
    """``(I - u uᵀ) M`` for a unit vector ``u``."""
    return M - torch.outer(u, u @ M)


def decompose(w: Weights) -> dict[str, Tensor]:
    """The main term, the rank-1 terms' sum and the residual factors (see module docstring).

    Keys: ``EQKE``, ``main``, ``rank_one_sum``, ``residual``, ``simple``, ``m0``..``m3``.
    """
    e = embeddings(w)
    E_q, E_k, Q, K = e.E_q, e.E_bar, e.Q, e.K
    M = E_q @ Q @ K.T @ E_k.T
    U, _, Vh = torch.linalg.svd(M)
    q1, k1 = U[:, 0], Vh[0]
    if q1.mean() < 0:
        q1, k1 = -q1, -k1
    Eq1, Ek1 = _remove(q1, E_q), _remove(k1, E_k)
    q2, k2 = _top_left(Eq1), _top_left(Ek1)
    Eq2, Ek2 = _remove(q2, Eq1), _remove(k2, Ek1)
    uQ, uK = _top_left(Q), _top_left(K)
    Qp, Kp = _remove(uQ, Q), _remove(uK, K)
    QK = Q @ K.T
    Eq_q1, Ek_k1 = torch.outer(q1, q1 @ E_q), torch.outer(k1, k1 @ E_k)
    Eq_q2, Ek_k2 = torch.outer(q2, q2 @ Eq1), torch.outer(k2, k2 @ Ek1)
    main = Eq_q1 @ QK @ Ek_k1.T
    rank_one = [
        Eq_q1 @ QK @ Ek1.T,  # query part along q̂, key part orthogonal to k̂
        Eq1 @ QK @ Ek_k1.T,
        Eq_q2 @ QK @ Ek1.T,
        Eq2 @ QK @ Ek_k2.T,
        Eq2 @ torch.outer(uQ, uQ @ Q) @ K.T @ Ek2.T,
        Eq2 @ Qp @ torch.outer(uK, uK @ K).T @ Ek2.T,
    ]
    m0, m1, m2, m3 = Eq2, Qp, Kp.T, Ek2.T
    residual = m0 @ m1 @ m2 @ m3
    return {
        "EQKE": M,
        "main": main,
        "rank_one_sum": sum(rank_one),
        "residual": residual,
        "simple": M - main,
        "m0": m0,
        "m1": m1,
        "m2": m2,
        "m3": m3,
    }


def row_range(M: Float[Tensor, "*batch a b"]) -> Float[Tensor, "*batch a"]:
    """``max_j M[..., t, j] - min_j M[..., t, j]``."""
    return M.amax(dim=-1) - M.amin(dim=-1)


def _max_diff(A: Tensor, B: Tensor) -> Tensor:
    return A.abs() @ row_range(B)


def _mean_max_diff(A: Tensor, B: Tensor) -> Tensor:
    a_bar = A.mean(dim=0, keepdim=True)
    return row_range(a_bar @ B) + (A - a_bar).abs() @ row_range(B)


def _recursive(ms: list[Tensor], means: list[bool]) -> Float[Tensor, " a"]:
    """The paper's row-range bound of ``ms[0] @ ... @ ms[-1]`` by recursion from the right;
    ``means[i]`` applies the mean-row trick at level ``i`` (as ``eqke.rr_bound``). Returns
    [rows of ms[0]]."""
    bound = row_range(ms[-1])
    rest = ms[-1]
    for depth in range(len(ms) - 2, -1, -1):
        A = ms[depth]
        if means[depth]:
            a_bar = A.mean(dim=0, keepdim=True)
            bound = row_range(a_bar @ rest) + (A - a_bar).abs() @ bound
        else:
            bound = A.abs() @ bound
        rest = A @ rest if depth > 0 else rest
    return bound


def _sigma_sq_bound(A: Float[Tensor, "r k"], B: Float[Tensor, "k c"]) -> float:
    """The checker's bound on ``sigma_1(A B)^2`` (``eqke._sigma_sq_up``, without its rounding
    control): the eigenvalues ``l_i >= 0`` of ``G = (AᵀA)(BBᵀ)`` are the squared singular values
    of ``A B``, so ``l_max <= (sum_i l_i^32)^(1/32) = tr(G) tr((G / tr G)^32)^(1/32) <= tr(G)``."""
    G = (A.T @ A) @ (B @ B.T)  # [k, k]
    tr = float(torch.trace(G))
    if tr <= 0.0:
        return 0.0
    X = G / tr
    for _ in range(4):  # X^2, X^4, X^8, X^16
        X = X @ X
    t = max(float((X * X.T).sum()), 0.0)  # tr(X^32)
    return min(tr, tr * t ** (1.0 / 32.0))


def _cauchy_schwarz(ms: list[Tensor], *, mean_q: bool, mean_k: bool) -> Float[Tensor, " a"]:
    """The checker's Cauchy–Schwarz row-range bound of ``m0 m1 m2 m3`` (``eqke._cs_eps``):
    ``eps[q] = head + 2 sigma beta ||m0[q] - abar||_2`` with ``sigma^2 >= sigma_1(m1 m2)^2``
    (``_sigma_sq_bound``), ``beta = max_i ||m3[:, i] - kbar||_2``; ``abar`` = mean row of ``m0``
    and ``head = range(abar m1 m2 m3)`` if ``mean_q`` (else 0, 0); ``kbar`` = mean column of
    ``m3`` if ``mean_k`` (else 0). Returns [rows of m0]."""
    m0, m1, m2, m3 = ms
    sigma = math.sqrt(_sigma_sq_bound(m1, m2))
    cols = m3.T  # [V_k, d]
    if mean_k:
        cols = cols - cols.mean(dim=0, keepdim=True)
    beta = float(torch.linalg.vector_norm(cols, dim=1).max())
    head = torch.zeros(1, dtype=m0.dtype)
    if mean_q:
        a_bar = m0.mean(dim=0, keepdim=True)
        head = row_range(a_bar @ m1 @ m2 @ m3)  # [1]
        m0 = m0 - a_bar
    return head + 2.0 * sigma * beta * torch.linalg.vector_norm(m0, dim=1)


def recursive_parts(
    m0: Tensor, m1: Tensor, m2: Tensor, m3: Tensor
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per recursive mode: (the paper's recursive bound, the Cauchy–Schwarz bound), per query.
    The checker's eps is their elementwise min (eqke.py, family (d)); the mean flags are the
    checker's ``RECURSIVE_MEANS`` (Cauchy–Schwarz: query mean at level 0, key mean at the last)."""
    ms = [m0, m1, m2, m3]
    return {
        mode: (_recursive(ms, means), _cauchy_schwarz(ms, mean_q=means[0], mean_k=means[-1]))
        for mode, means in RECURSIVE_MEANS.items()
    }


def mode_bounds(m0: Tensor, m1: Tensor, m2: Tensor, m3: Tensor) -> dict[str, Tensor]:
    """Per-query bounds ``eps[q] >= row_range(m0 m1 m2 m3)[q]`` of every mode in ``ERROR_MODES``.

    Two-matrix modes (``max_diff``, ``mean+max_diff``) split the product as
    ``(m0 m1 m2)(m3)``, like the factored ``A = E_q Q Kᵀ``, ``B = Ēᵀ`` view of §8.4(a); the
    subproduct modes take the elementwise min over the three split points; the recursive modes
    take, like the checker, the elementwise min of the paper's recursive bound and the
    Cauchy–Schwarz bound (``recursive_parts``).
    """
    ms = [m0, m1, m2, m3]
    R = m0 @ m1 @ m2 @ m3
    splits = []
    for i in range(3):
        L = ms[0]
        for m in ms[1 : i + 1]:
            L = L @ m
        Rr = ms[i + 1]
        for m in ms[i + 2 :]:
            Rr = Rr @ m
        splits.append((L, Rr))
    sigma1 = float(torch.linalg.matrix_norm(R, ord=2))
    V = R.shape[0]
    return {
        "svd": torch.full((V,), math.sqrt(2.0) * sigma1, dtype=R.dtype),
        "max_diff": _max_diff(*splits[2]),
        "mean+max_diff": _mean_max_diff(*splits[2]),
        "max_diff_subproduct": torch.stack([_max_diff(a, b) for a, b in splits]).amin(0),
        "mean+max_diff_subproduct": torch.stack([_mean_max_diff(a, b) for a, b in splits]).amin(0),
        **{mode: torch.minimum(paper, cs) for mode, (paper, cs) in recursive_parts(*ms).items()},
        "max_diff_exact": row_range(R),
    }


def resample_max_row_range(
    factors: list[Tensor], *, n: int = N_RESAMPLES, seed: int = RESAMPLE_SEED, batch: int = 10
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Max row range of the product for ``n`` shuffles and ``n`` Gaussian resamples of the factors.

    One generator seeded ``seed``: first the ``n`` shuffles (sample-major, factors in order), then
    the ``n`` Gaussian draws (same order).
    """
    gen = torch.Generator().manual_seed(seed)

    def product_stat(draw) -> Tensor:
        out = []
        for start in range(0, n, batch):
            b = min(batch, n - start)
            per_sample = [[draw(f) for f in factors] for _ in range(b)]
            P = torch.stack([s[0] for s in per_sample])
            for j in range(1, len(factors)):
                P = P @ torch.stack([s[j] for s in per_sample])
            out.append(row_range(P).amax(dim=-1))
        return torch.cat(out)

    def shuffle(f: Tensor) -> Tensor:
        return f.reshape(-1)[torch.randperm(f.numel(), generator=gen)].reshape(f.shape)

    def gaussian(f: Tensor) -> Tensor:
        z = torch.randn(f.shape, generator=gen, dtype=f.dtype)
        return f.mean() + f.std() * z

    return product_stat(shuffle), product_stat(gaussian)


def noise_analysis(w: Weights, *, n_resamples: int = N_RESAMPLES) -> tuple[dict, dict[str, Tensor]]:
    """Scalars (flat dict, keys prefixed ``noise_``) and tensors (keys prefixed ``noise.``).

    ``noise_bound_<mode>`` is the max over queries of the bound the checker's ``eps`` of that
    mode gives (``mode_bounds``); for the recursive modes ``noise_paper_bound_<mode>`` and
    ``noise_cs_bound_<mode>`` are its two parts (``recursive_parts``), the paper's recursive
    bound and the Cauchy–Schwarz one."""
    d = decompose(w)
    R, S = d["residual"], d["simple"]
    ms = [d["m0"], d["m1"], d["m2"], d["m3"]]
    bounds = mode_bounds(*ms)
    shuffled, gaussian = resample_max_row_range(ms, n=n_resamples)
    out: dict = {}
    for name, X in (("residual", R), ("simple", S)):
        sigma1 = float(torch.linalg.matrix_norm(X, ord=2))
        fro = float(torch.linalg.matrix_norm(X))
        out |= {
            f"noise_{name}_max_row_diff": float(row_range(X).max()),
            f"noise_{name}_max_abs": float(X.abs().max()),
            f"noise_{name}_sigma1": sigma1,
            f"noise_{name}_sigma1_sqrt2": math.sqrt(2) * sigma1,
            f"noise_{name}_fro": fro,
            f"noise_{name}_fro_sqrt2": math.sqrt(2) * fro,
        }
    prod_sigma = math.prod(float(torch.linalg.matrix_norm(m, ord=2)) for m in ms)
    prod_fro = math.prod(float(torch.linalg.matrix_norm(m)) for m in ms)
    out |= {
        "noise_prod_sigma1": prod_sigma,
        "noise_prod_sigma1_sqrt2": math.sqrt(2) * prod_sigma,
        "noise_prod_fro": prod_fro,
        "noise_prod_fro_sqrt2": math.sqrt(2) * prod_fro,
        "noise_resample_seed": RESAMPLE_SEED,
        "noise_n_resamples": n_resamples,
    }
    for mode, eps in bounds.items():
        out[f"noise_bound_{mode}"] = float(eps.max())  # what the checker's eps allows
    for mode, (paper, cs) in recursive_parts(*ms).items():
        out[f"noise_paper_bound_{mode}"] = float(paper.max())
        out[f"noise_cs_bound_{mode}"] = float(cs.max())
    for name, vals in (("shuffle", shuffled), ("gaussian", gaussian)):
        out[f"noise_resample_{name}_mean"] = float(vals.mean())
        out[f"noise_resample_{name}_std"] = float(vals.std()) if vals.numel() > 1 else math.nan
        out[f"noise_resample_{name}_min"] = float(vals.min())
        out[f"noise_resample_{name}_max"] = float(vals.max())
    for i, m in enumerate(ms):
        out[f"noise_factor{i}_mean"] = float(m.mean())
        out[f"noise_factor{i}_std"] = float(m.std())
    tensors = {
        "noise.residual": R,
        "noise.m0": ms[0],
        "noise.m1": ms[1],
        "noise.m2": ms[2],
        "noise.m3": ms[3],
        "noise.resample_shuffle": shuffled,
        "noise.resample_gaussian": gaussian,
    }
    return out, tensors
