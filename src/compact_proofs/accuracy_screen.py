"""The float32 screen of the exact accuracy: every input of the model, with rigorous thresholds.

See ``exact`` for the method and ``accuracy_tables.screen_constants`` for the error analysis.
Shape glossary: ``R = d_vocab**(n_ctx-2)`` prefix rows j = (t_0 .. t_{n-3}); ``k`` = t_{n-2};
``x`` a logit; ``c`` rows in a chunk.
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import torch
from torch import Tensor

from compact_proofs import accuracy_tables as at
from compact_proofs.config import ModelConfig

CHUNK_ELEMS = 1 << 16  # inputs (prefix rows x d_vocab) per screening chunk
DENSE_ROWS = 64  # prefix rows per dense (rows, k, x) block: 64 x V x V float32


def chunk_rows(cfg: ModelConfig) -> int:
    """Prefix rows per screening chunk (a function of the shape only, so FLOPs are predictable)."""
    rows = cfg.d_vocab ** (cfg.n_ctx - 2)
    return max(1, min(rows, CHUNK_ELEMS // cfg.d_vocab))


def prefix_max(V: int, n: int) -> Tensor:
    """Max token of every prefix (t_0 .. t_{n-3}) in index order; -1 for the empty prefix."""
    pm = torch.full((1,), -1, dtype=torch.int64)
    k = torch.arange(V)
    for _ in range(n - 2):
        pm = torch.maximum(pm[:, None], k[None, :]).reshape(-1)
    return pm


def query_shift(Sq: Tensor, q: int, headroom: float) -> float:
    """The per-query exponent shift c_q = max(S[q, n-1, q], max S[q] - headroom).

    Every input with query q has weight exp(S[q, n-1, q] - c_q) at its last position, so Z is not
    tiny unless the score range exceeds the headroom, and all weights are <= e^headroom, far from
    float32 overflow (``shift_headroom``). Any float constant is a valid shift.
    """
    return max(float(Sq[-1, q]), float(Sq.max()) - headroom)


@dataclass
class QueryTables:
    """Per-query float32 tables of the screen (see the module docstring)."""

    P: Tensor  # [R, V] prefix numerators (query term included)
    C: Tensor  # [V(k), V(x)] last free position's terms
    CT: Tensor  # C transposed, contiguous
    dC: Tensor  # [V] diagonal of C
    top1C: Tensor  # [V] max_x C[k, x]
    arg1C: Tensor  # [V] an argmax
    top2C: Tensor  # [V] max over x != arg1C[k]
    CexDiag: Tensor  # [V] max_{x != k} C[k, x]
    thr_p: Tensor  # [R] K1 Zp + K0
    thr_c: Tensor  # [V] K1 Zc
    flops: int

    @classmethod
    def from_terms(cls, P: Tensor, C: Tensor, thr_p: Tensor, thr_c: Tensor, flops: int):
        """The tables of P, C and the thresholds, with C's derived maxima (``row_top2``)."""
        top1C, arg1C, top2C = row_top2(C)
        return cls(
            P=P,
            C=C,
            CT=C.t().contiguous(),
            dC=C.diagonal(),
            top1C=top1C,
            arg1C=arg1C,
            top2C=top2C,
            CexDiag=torch.where(arg1C == torch.arange(C.shape[0]), top2C, top1C),
            thr_p=thr_p,
            thr_c=thr_c,
            flops=flops,
        )


def row_top2(X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise (max, an argmax, max over the other columns); cost rows * (3 V - 1)."""
    top1, arg1 = X.max(dim=1)
    tmp = X.clone()
    tmp.scatter_(1, arg1[:, None], at.NEG_INF)
    return top1, arg1, tmp.amax(dim=1)


def query_tables(t: at.Tables, q: int, consts: at.ScreenConstants, headroom: float) -> QueryTables:
    V, n = t.d_vocab, t.n_ctx
    kk, pos = torch.arange(V), torch.arange(n)
    Sq = t.S[q]  # [n, V]
    w64 = torch.exp(Sq - query_shift(Sq, q, headroom))
    Aq = t.A_rows(q, pos[:, None], kk[None, :])  # [n, V(k), V(x)]
    B = (w64[:, :, None] * Aq).float()  # [n, V, V]
    w32 = w64.float()
    flops = (n * V - 1) + 2 + 2 * n * V + (n * V + n * V * V) + 2 * n * V * V + n * V
    P = B[n - 1, q][None, :]
    Zp = w32[n - 1, q].reshape(1)
    for p in range(n - 3, -1, -1):
        P = (P[:, None, :] + B[p][None, :, :]).reshape(-1, V)
        Zp = (Zp[:, None] + w32[p][None, :]).reshape(-1)
        flops += P.numel() + Zp.numel()
    thr_p = Zp * consts.K1 + consts.K0
    thr_c = w32[n - 2] * consts.K1
    flops += V * (3 * V - 1) + 2 * V + 2 * P.shape[0] + V  # row_top2, CexDiag, thresholds
    return QueryTables.from_terms(P, B[n - 2], thr_p, thr_c, flops)


@dataclass
class ChunkVerdicts:
    ok: Tensor  # [c, V] certified correct
    bad: Tensor  # [c, V] certified incorrect
    n_ok: int
    n_bad: int
    n_refined: int


def cheap_bound(Qt: QueryTables, Pc: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """(N~[m], UB) for the inputs (j, k) of prefix rows ``Pc`` with a_j = ``a``: N~[m] =
    fl(P[j, m] + C[k, m]) and UB = fl(max_{x != m} P[j, x] + max_{x != m} C[k, x]) >= every
    fl(P[j, x] + C[k, x]), x != m, where m = max(a_j, k).    Cost: c (3V - 1) + 2c + 12 c V."""
    V = Qt.C.shape[0]
    kk = torch.arange(V)
    top1, arg1, top2 = row_top2(Pc)  #                                              c (3V - 1)
    PexA = torch.where(arg1 == a, top2, top1)  # max_{x != a_j} P[j, x]         2c
    Pnotk = torch.where(arg1[:, None] == kk, top2[:, None], top1[:, None])  # x != k: 2cV
    CnotA = torch.where(Qt.arg1C == a[:, None], Qt.top2C, Qt.top1C)  # C, x != a_j: 2cV
    gt = kk > a[:, None]  # m = k (else m = a_j)                                 cV
    X1 = Pc + Qt.dC  # N[x = k]                                                  cV
    X2 = Pc.gather(1, a[:, None]) + Qt.CT[a]  # N[x = a_j]                       cV
    Nm = torch.where(gt, X1, X2)  #                                              cV
    UB = torch.where(gt, Pnotk + Qt.CexDiag, PexA[:, None] + CnotA)  #           3cV
    return Nm, UB


def screen_chunk(Qt: QueryTables, pm: Tensor, q: int, r0: int, r1: int) -> ChunkVerdicts:
    """Screen the inputs with prefix rows [r0, r1) (all k) of query q.

    Step 1 (every input): UB = max_{x!=m} P[j, x] + max_{x!=m} C[k, x] (from row-wise top-2) is a
    float32 upper bound on every fl(P[j, x] + C[k, x]), x != m (rounding is monotone), so
    fl(N[m] - UB) <= fl(N[m] - R~) and fl(N[m] - UB) > thr certifies the input as
    ``screen_constants`` does. Step 2 (the rest, ~0.2 % of inputs of a trained model): R~ exactly,
    from the V sums P[j, x] + C[k, x] (gathered per input, or for the whole chunk when more than a
    quarter of it is left, as for untrained models).

    Cost: ``chunk_flops(c, V)`` for step 1 and ``refine_flops(V, n_refined)`` for step 2.
    """
    V = Qt.C.shape[0]
    kk = torch.arange(V)
    Pc = Qt.P[r0:r1]
    c = r1 - r0
    a = pm[r0:r1].clamp(min=q)  # a_j = max(q, prefix); m = max(a_j, k)          c
    Nm, UB = cheap_bound(Qt, Pc, a)
    thr = Qt.thr_p[r0:r1, None] + Qt.thr_c  #                                    cV
    ok = (Nm - UB) > thr  #                                                      2cV
    n_ok = int(ok.sum())  #                                                      cV - 1
    bad = torch.zeros_like(ok)
    n_bad, n_ref = 0, c * V - n_ok
    if 4 * n_ref > c * V:  # the bound is weak here (e.g. an untrained model): all, densely
        n_ref = c * V
        m = torch.maximum(a[:, None], kk)
        for s in range(0, c, DENSE_ROWS):
            e = min(c, s + DENSE_ROWS)
            T = Pc[s:e, None, :] + Qt.C[None, :, :]  # [rows, k, x]: every N~[x]
            T.scatter_(2, m[s:e, :, None], at.NEG_INF)
            marg = Nm[s:e] - T.amax(dim=2)
            ok[s:e] = marg > thr[s:e]
            bad[s:e] = marg < -thr[s:e]
        n_ok, n_bad = int(ok.sum()), int(bad.sum())
    elif n_ref:
        jf, kf = (~ok).nonzero(as_tuple=True)
        T = Pc[jf] + Qt.C[kf]  # [F, V]: every N~[x]
        mf = torch.maximum(a[jf], kf)
        T.scatter_(1, mf[:, None], at.NEG_INF)
        marg = Nm[jf, kf] - T.amax(dim=1)
        thr_f = thr[jf, kf]
        ok_f, bad_f = marg > thr_f, marg < -thr_f
        ok[jf, kf], bad[jf, kf] = ok_f, bad_f
        n_ok, n_bad = n_ok + int(ok_f.sum()), int(bad_f.sum())
    return ChunkVerdicts(ok=ok, bad=bad, n_ok=n_ok, n_bad=n_bad, n_refined=n_ref)


@dataclass
class ScreenResult:
    """Counts of certified-correct and certified-incorrect inputs, the undecided input indices
    (for the float64 / exact re-check) and the FLOPs of the screen and of its step 2."""

    n_ok: int = 0
    n_bad: int = 0
    n_refined: int = 0
    flops: int = 0
    ref_flops: int = 0
    undecided: list[Tensor] = field(default_factory=list)


def screen_query(
    t: at.Tables, consts: at.ScreenConstants, q: int, pm: Tensor, mask_view: Tensor | None
) -> ScreenResult:
    """Screen the V**(n-1) inputs with query token q."""
    V, n = t.d_vocab, t.n_ctx
    R = V ** (n - 2)
    J = chunk_rows(ModelConfig(d_vocab=V, n_ctx=n))
    Qt = query_tables(t, q, consts, at.shift_headroom(t))
    res = ScreenResult(flops=Qt.flops)
    for r0 in range(0, R, J):
        r1 = min(R, r0 + J)
        ch = screen_chunk(Qt, pm, q, r0, r1)
        res.n_ok += ch.n_ok
        res.n_bad += ch.n_bad
        res.n_refined += ch.n_refined
        res.flops += chunk_flops(r1 - r0, V)
        res.ref_flops += refine_flops(V, ch.n_refined)
        if mask_view is not None:
            mask_view[q, :, r0:r1] = ch.ok.t()
        if ch.n_ok + ch.n_bad < ch.ok.numel():
            jj, kx = (~(ch.ok | ch.bad)).nonzero(as_tuple=True)
            res.undecided.append(q * V ** (n - 1) + kx * R + (r0 + jj))
    return res


def _single_thread() -> None:
    # OpenMP thread counts are per calling thread: this affects only the pool's own threads.
    torch.set_num_threads(1)


def screen(
    t: at.Tables,
    consts: at.ScreenConstants,
    *,
    mask: Tensor | None,
    progress: Callable[[int, int], None] | None,
    workers: int | None = None,
) -> ScreenResult:
    """Float32 screen of every input, one task per query token on ``workers`` threads (default
    ``torch.get_num_threads()``), each running single-threaded torch ops: many small ops scale
    far better this way than with intra-op parallelism, especially on a busy machine."""
    V, n = t.d_vocab, t.n_ctx
    total = V**n
    pm = prefix_max(V, n)
    out = ScreenResult(flops=sum(V**i for i in range(1, n - 1)))  # prefix max
    mask_view = mask.view(V, V, V ** (n - 2)) if mask is not None else None
    workers = max(1, min(workers or torch.get_num_threads(), V))
    done = 0
    pool = ThreadPoolExecutor(workers, initializer=_single_thread)
    try:
        futures = [pool.submit(screen_query, t, consts, q, pm, mask_view) for q in range(V)]
        for fut in as_completed(futures):
            r = fut.result()
            out.n_ok += r.n_ok
            out.n_bad += r.n_bad
            out.n_refined += r.n_refined
            out.flops += r.flops
            out.ref_flops += r.ref_flops
            out.undecided.extend(r.undecided)
            done += V ** (n - 1)
            if progress is not None:
                progress(done, total)
    finally:  # on an error or Ctrl-C, drop the queries not yet started
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def chunk_flops(c: int, V: int) -> int:
    """FLOPs of step 1 of ``screen_chunk`` on c prefix rows (see the per-line counts there)."""
    return c + c * (3 * V - 1) + 2 * c + 14 * c * V + (c * V - 1)


def refine_flops(V: int, n_refined: int) -> int:
    """FLOPs of step 2 of ``screen_chunk`` for ``n_refined`` inputs, per input: m (1), V adds,
    one -inf write, V - 1 max, the margin (1), three threshold-test ops, two verdict writes and
    two verdict-count accumulations."""
    return n_refined * (2 * V + 9)


def screen_flops(cfg: ModelConfig) -> int:
    """Closed form of the data-independent FLOPs of ``screen``."""
    V, n = cfg.d_vocab, cfg.n_ctx
    R = V ** (n - 2)
    J = chunk_rows(cfg)
    n_chunks = -(-R // J)
    prefix = sum(V**i for i in range(1, n - 1))
    per_q = (
        (n * V + 1)  # max of scores, shift
        + 2 * n * V  # subtract, exp
        + (n * V + 3 * n * V * V)  # A (EU + PVOU, then + EVOU), product, cast
        + n * V  # cast weights
        + V * prefix  # prefix table P (V columns per row)
        + prefix  # prefix Z
        + (V * (3 * V - 1) + 2 * V)  # top-2 of C rows, max_{x != k} C[k, x]
        + (2 * R + V)  # thresholds
    )
    # per prefix row: a_j (1), top-2 (3V - 1), max_{x != a_j} P (2) and 14 V elementwise ops on
    # the row's V inputs; one count reduction (c V - 1) per chunk
    per_q += R * (1 + 3 * V - 1 + 2 + 15 * V) - n_chunks
    return prefix + V * per_q
