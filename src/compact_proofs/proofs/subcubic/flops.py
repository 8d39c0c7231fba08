"""Closed forms of the subcubic checker's ledger totals, component by component (each mirrors
the cost lines in the docstrings of ``eqke``, ``eupu``, ``bounds`` and ``pipeline``). The
control flow of the check does not depend on the weights or the certificate, so the count is a
function of the shapes and the variant only."""

from compact_proofs.proofs.subcubic.variants import FACTORED_ATTN_ERR, RECURSIVE_MEANS, Variant


def _mm(r: int, k: int, c: int) -> int:
    return r * c * (2 * k - 1)


def _rowrange(r: int, c: int) -> int:
    return 2 * r * (c - 1) + r


def common_flops(V: int, n: int, d: int, dh: int) -> int:
    load = sum(2 * x - 1 for x in (V * d, n * d, d * dh, d * dh, d * dh, dh * d, d * V)) + V * d
    embeds = d * (n - 1) + d + V * d + n * d
    pos = _mm(dh, d, n) + _mm(d, dh, n) + _mm(V, d, n) + V * n
    ov = _mm(dh, d, V) + _mm(d, dh, V) + _mm(V, d, V) + _mm(n, d, V) + _mm(V, d, V)
    return load + embeds + pos + ov


def rr_flops(shapes: list[tuple[int, int]], means: list[bool]) -> int:
    """Cost of ``eqke.rr_bound`` for factors of the given shapes."""
    if len(shapes) == 1:
        return _rowrange(*shapes[0])
    r, k = shapes[0]
    cost = rr_flops(shapes[1:], means[1:])
    if not means[0]:
        return cost + r * k + r * (2 * k - 1)
    cost += k * (r - 1) + k
    a = k
    for _, b in shapes[1:]:
        cost += b * (2 * a - 1)
        a = b
    cost += _rowrange(1, a)
    return cost + 2 * r * k + r * (2 * k - 1) + r


def sigma_sq_flops(k: int, r: int, c: int) -> int:
    """Cost of ``eqke._sigma_sq_up`` for Ar [r, k], Br [k, c]."""
    kk = k * k
    cost = kk * (2 * r - 1) + kk * (2 * c - 1) + _mm(k, k, k) + (2 * kk - 1) + (k - 1) + 1 + kk
    return cost + (2 * kk - 1) + 4 * (_mm(k, k, k) + 2 * kk - 1) + kk + (kk - 1) + 1 + 10


def cs_flops(V: int, d: int, dh: int, mean_q: bool, mean_k: bool) -> int:
    """Cost of ``eqke._cs_eps`` for factors [V, d], [d, dh], [dh, d], [d, V]."""
    cost = sigma_sq_flops(dh, d, d)
    if mean_k:
        cost += d * (V - 1) + d + V * d
    cost += V * d + V * (d - 1) + (V - 1) + 1 + 4
    if mean_q:
        cost += d * (V - 1) + d + dh * (2 * d - 1) + d * (2 * dh - 1) + V * (2 * d - 1)
        cost += _rowrange(1, V) + V * d + V
    return cost + V * d + V * (d - 1) + V + V


def eqke_flops(mode: str, V: int, n: int, d: int, dh: int) -> tuple[int, int]:
    """(cost, length of eps) of ``eqke.approximate``."""
    if mode == "exact_EQKE+max_diff_exact":
        return _mm(V, d, dh) + _mm(dh, d, V) + _mm(V, dh, V), 1
    if mode in FACTORED_ATTN_ERR:
        cost = _mm(d, dh, d) + _mm(V, d, d) + 2 * (2 * V - 1)
        cost += d * (2 * V - 1) + V * (2 * d - 1) + d * (2 * V - 1) + V * (2 * d - 1) + (2 * V - 1)
        cost += 2 * V + 3 * V * V + 4 * V * d
        if mode == "svd":
            return cost + sigma_sq_flops(d, V, V), 1
        if mode == "max_diff_exact":
            return cost + _mm(V, d, V) + _rowrange(V, V), V
        mean = mode.startswith("mean")
        return cost + rr_flops([(V, d), (d, V)], [mean]), V
    # subproduct family
    cost = 4 * (2 * V - 1) + 2 * (2 * d - 1)
    cost += 2 * (2 * d * (2 * V - 1) + 4 * V * d)
    cost += 2 * (dh * (2 * d - 1) + 2 * d * dh)
    cost += 2 * dh * (2 * d - 1) + 2 * d * (2 * dh - 1) + 2 * V * (2 * d - 1)
    cost += V * (2 * d - 1) + d * (2 * dh - 1) + V * (2 * d - 1)
    cost += d * (2 * dh - 1) + V * (2 * d - 1) + V * (2 * d - 1)
    cost += 2 * dh * (2 * d - 1) + 2 * d * (2 * dh - 1) + 2 * V * (2 * d - 1)
    cost += 11 * V * V
    shapes = [(V, d), (d, dh), (dh, d), (d, V)]
    if mode.endswith("_recursive"):
        means = RECURSIVE_MEANS[mode]
        cs = cs_flops(V, d, dh, means[0], means[-1])
        return cost + rr_flops(shapes, means) + cs + V, V
    mean = mode.startswith("mean")
    cost += _mm(dh, d, V) + _mm(d, dh, V) + _mm(V, d, dh) + _mm(V, dh, d)
    cost += rr_flops([(V, d), (d, V)], [mean]) + rr_flops([(V, dh), (dh, V)], [mean])
    cost += rr_flops([(V, d), (d, V)], [mean]) + 2 * V
    return cost, V


def eupu_flops(mode: str, V: int, d: int) -> int:
    if mode == "max_diff_exact":
        return V * (V - 1) + V * V
    if mode == "global_max_diff_exact":
        return _rowrange(1, V * V)
    cost = _rowrange(d, V)
    cs = d * (V - 1) + d + 2 * V * d + V * (d - 1) + V + (V - 1) + V + V * d + V * (d - 1) + V
    cost += cs + 5 * V * V - 1
    if mode == "max_diff":
        return cost + V * d + V * (2 * d - 1)
    w = d * (V - 1) + d if mode == "mean_query+max_diff" else 2 * d - 1
    return cost + w + 2 * V * d + V * (2 * d - 1) + V * (2 * d - 1) + V * V


def variant_flops(v: Variant, V: int, n: int, d: int, dh: int) -> int:
    """The ledger total of ``subcubic.check`` for variant ``v``."""
    N = V * V * (n - 1)
    mean = v.attn == "mean_query+diff"
    eq, eps_len = eqke_flops(v.attn_err, V, n, d, dh)
    attn_tables = V * V + eps_len + (3 * eps_len - 1) + 2 * V * (V - 1) + V * (n - 2)
    attn_tables += (n - 1) * (16 * n * V + 4 * V)
    logit = eupu_flops(v.eupu, V, d) + V * V * n + V * V * (n - 1) + V * V
    logit += 2 * V * (V - 1) + V * (2 * V - 3) + 2 * V * V + V * V + V * (V - 1)
    if v.eupu in ("mean_query+max_diff", "svd_query+max_diff"):
        logit += V * V  # Ldir added to PV*
    logit += 0 if mean else V * (V - 1) + 2 * V - 1
    logit += 3 * (2 * V * V - 1) + 2 * (2 * V - 1)  # tight magnitudes
    single = 2 * V * (n - 1) + 3 * V * n + _mm(V, n, V) + 2 * V * V + V * (V - 1) + V + V
    evaluate = 22 * N + (8 * N if mean else 2 * N) + 9 * N + N
    if mean:
        evaluate += (2 * V * (n - 1) * 2 - 1) + 4 * N + 2 * V * (n - 1) * (V - 1)
    return common_flops(V, n, d, dh) + eq + attn_tables + logit + single + evaluate
