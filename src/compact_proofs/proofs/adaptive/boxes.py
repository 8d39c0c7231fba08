"""Adaptive proof, stage 4: product boxes of inputs with exact positions.

Shape glossary (``core/circuits.py``): ``d_vocab_k`` key token, ``d_vocab_out`` output x,
``slots`` = n_ctx - 1 non-query positions, ``boxes`` a batch of boxes, ``queries`` the query
tokens of one max-token group.

A BOX is (q, m, S_0, ..., S_{n-2}): the inputs with query t[n-1] = q and t_p in S_p for every
non-query position p, where every S_p is either {m} (a max slot) or a subset of [0, m) (a
non-max slot), and some S_p = {m} when q < m. All its inputs have max m and query q.

Claim (box bound): write w_p(k) = exp((EQKE[q, k] + EQKP[q, p]) / s) and
A_p(k, x) = EUPU[q, x] + PVOU[p, x] + EVOU[k, x]. With any common factor Z > 0,
    F[p, k, x] = w_p(k) (A_p(k, x) - A_p(k, m)) / Z,   Fq[x] = (same for the query slot).
For an input t of the box and x != m, logit(x) - logit(m) has the sign of
G_x(t) = Fq[x] + sum_p F[p, t_p, x]. Let U[p, x] >= max_{k in S_p} F[p, k, x] and
L[p, x] <= min_{k in S_p} F[p, k, x] (slot bounds, claim (d)).
  (a) If UB = max_{x != m} (Fq[x] + sum_p U[p, x]) < 0, every input of the box is correct.
  (b) If for some x* != m, LB = Fq[x*] + sum_p L[p, x*] > 0, every input of the box is
      incorrect (logit(x*) > logit(m)).
Proof: (1) path decomposition (exact, core/circuits.py): logit(x) = sum_p alpha_p A_p(t_p, x)
with alpha = softmax of the scores, so logit(x) - logit(m) = sum_p alpha_p (A_p(t_p, x) -
A_p(t_p, m)) = G_x(t) Z / sum_p w_p(t_p), a positive multiple of G_x(t). (2) G_x(t) is a sum of
one term per position, each depending only on that position's token, so over a product box it
is at most Fq[x] + sum_p U[p, x] and at least Fq[x] + sum_p L[p, x]. (a) G_x(t) <= UB < 0 for
every x != m; (b) G_x*(t) >= LB > 0.                                                     QED
  (c) Key-level outputs. The weights factor: w_p(k) / Z = a_p b_k with a_p = exp(EQKP_s[q, p] -
      M_a) (the query slot as p = n-1 with score z[q] - M_b) and b_k = exp(EQKE_s[q, k] - M_b),
      so F[p, k, x] = a_p b_k (c[p, x] + e[k, x]) with c[p, x] = EUPU[q, x] - EUPU[q, m] +
      PVOU[p, x] - PVOU[p, m] and e[k, x] = EVOU[k, x] - EVOU[k, m]. Over the non-query slots
      p < n-1 let top[x] = max_p c[p, x], A = sum_p a_p and a_lo = min_p a_p. Let
          N[x] = max(b_hi top[x], b_lo top[x]) + E[x],  E[x] >= max_{k <= m} b_k e[k, x],
      with b_lo, b_hi the min and max of b_k over k <= m, and T[x] = b_m (top[x] + e[m, x]);
      E is either the key's own, max_{k <= m} b_k e[k, x] (``_own_E``), or shared by every
      query q' <= m, max(0, max_{k <= m} hi_k e[k, x]) with hi_k the max of b_k over q' <= m
      (``_shared_E``: b_k e <= hi_k e if e >= 0, and b_k e <= 0 if e < 0, as b_k >= 0); the
      certificate chooses per max token (both are sound).
      Every input of the key (q, m) (some non-query slot holds m when q < m) has
          G_x(t) <= KB_x := Fq[x] + A N[x] + a_lo (T - N)[x]
      (for q = m without the last term; evaluated as Fq + (A - a_lo) N + a_lo b_m (top + e_m),
      the same real number). If KB_x < 0, output x is below m on every box of the key, so (a)
      need only take its max over the other ("live") outputs, and (b) can only hold for a live
      x*: the tables are built at the live outputs only.
      Proof: y -> max(b_hi y, b_lo y) is nondecreasing (b_hi >= b_lo >= 0), b_k y <=
      max(b_hi y, b_lo y) for b_k in [b_lo, b_hi], and b_k e[k, x] <= E[x]; so a slot p
      holding k <= m contributes a_p b_k (c[p, x] + e[k, x]) <= a_p N[x] (c[p, x] <= top[x]).
      When q < m, pick a slot p* holding m: it contributes a_p* b_m (c[p*, x] + e[m, x]) <=
      a_p* T[x] (b_m >= 0). Summing, G_x(t) <= Fq[x] + (A - a_p*) N[x] + a_p* T[x] = Fq[x] +
      A N[x] + a_p* (T - N)[x]. Finally T <= N (b_m top <= max(b_hi top, b_lo top), and
      b_m e[m, x] <= E[x] with k = m in either form of E), so a_p* (T - N) <= a_lo (T - N)
      (a_p* >= a_lo).                                                                       QED
  (d) Slot bounds from slot-independent tables. With top as in (c), let
          H[k, x] = b_k (top[x] + e[k, x])   and   D[p, x] = a_p (top[x] - c[p, x]) >= 0.
      Then for a slot set S and every k in S,
          a_p min_{j in S} H[j, x] - max_{j in S} b_j D[p, x]  <=  F[p, k, x]
                                  <=  a_p max_{j in S} H[j, x] - min_{j in S} b_j D[p, x],
      with equality on both sides when S = {k}: these are L[p, x] and U[p, x].
      Proof: F[p, k, x] = a_p b_k (top + e[k]) - a_p b_k (top - c[p]) = a_p H[k, x] - b_k D[p, x].
      a_p > 0, so a_p H[k, x] lies between a_p min_S H and a_p max_S H; D[p, x] >= 0 (top is the
      max of c over the slots) and b_k lies between min_S b and max_S b, so b_k D[p, x] lies
      between their products with D[p, x].                                                 QED
      The tables are [columns, K] instead of [columns, slots, K]: a third of the work at
      n_ctx = 4. The bounds lose only where b_k varies over a set S_p of several tokens and the
      slots' positional terms differ (top - c[p] > 0), and they are exact on single inputs.
  (e) Second key screen: the most attended tokens taken exactly. Let Hi be any set of tokens
      k <= m (``high_tokens``: those with b_k >= HIGH_B, if at most HIGH_MAX), Lo the other
      tokens k <= m and beta = max_{k in Lo} b_k; with top, b_lo, E and T as in (c), let
          N'[x] = max(max_{k in Hi} H[k, x], max(beta top[x], b_lo top[x]) + E[x])
      (the second term only if Lo is not empty). Then KB'_x := Fq[x] + A N'[x] + a_lo (T - N')[x]
      (for q = m without the last term) bounds G_x on every input of the key, as KB_x does; an
      output is live only if neither is proven negative (KB' is evaluated at the outputs KB
      leaves).
      Proof: for k in Hi, b_k (top[x] + e[k, x]) = H[k, x] <= N'[x]; for k in Lo, b_k lies in
      [b_lo, beta], so b_k top[x] <= max(beta top[x], b_lo top[x]), and b_k e[k, x] <= E[x];
      so b_k (top[x] + e[k, x]) <= N'[x] for every k <= m, in particular T[x] <= N'[x]. (c)'s
      proof uses nothing else about N (besides c[p, x] <= top[x] and b_k >= 0), so it holds
      with N' for N.                                                                        QED
      Why: N pairs b_hi top (the most attended token's weight, when top > 0) with E (the
      largest b_k e[k, x], usually a little attended token's). On trained models the outputs
      above m have top > 0 and the most attended tokens vote strongly against them, so (c)
      leaves many dead outputs live; the few most attended tokens (3 on average at
      HIGH_B = 0.2) taken exactly remove about half of them (Max-of-4 seed 123: 4,586 live
      columns after (c), 2,385 after (e)).
The common factor: every weight is at most 1 (exp-shifted scores), so the tables are well scaled
for every input of the key.
Cost: ``table_flops`` per max-token group (weights, live outputs, tables at the live outputs)
and ``high_flops`` per key (claim (e));
the reductions over a set S count (|S| - 1) per live output for H and (|S| - 1) for b (paper
rule), once per distinct set of a key (or, for a key whose distinct sets' sizes sum past m,
m per live output and for b: each column of H and b sorted once, sort-verification, and every
set's max and min read off the orders), then 3 per live output for a slot's bound (d), once per
distinct (slot, set) of a key, and the sums and decision per box: ``prove_flops`` /
``refute_flops``.
"""

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from compact_proofs.core.rigorous import Approx, Ops

LABEL = "adaptive:boxes"
# float64 elements gathered per evaluation chunk (boxes x slots x tokens x outputs): 32 MB
CHUNK_ELEMENTS = 1 << 22
# float64 elements of the tables built at once (pairs x columns x tokens): 128 MB
TABLE_ELEMENTS = 1 << 24
# Claim (e): the tokens with b_k >= HIGH_B are taken exactly, for keys with at most HIGH_MAX
# of them (measured on Max-of-4 seeds 123, 742, 50, 1283: 0.2 and 6 are the cheapest of
# HIGH_B in 0.03 .. 0.5 and HIGH_MAX in 4 .. 8, by under 1%).
HIGH_B = 0.2
HIGH_MAX = 6


@dataclass(frozen=True)
class Tables:
    """The tables of claims (c) and (d) for the keys (qs[i], ms[i]) at their live outputs: one
    COLUMN per (key, live output), key i's columns being start[i] .. start[i] + n_live[i] - 1 in
    increasing output order. Key tokens k run over [0, K), K = max(ms) + 1; entries k > m of H
    are -inf and of b are 0."""

    qs: Int[Tensor, " pairs"]
    ms: Int[Tensor, " pairs"]
    n_live: Int[Tensor, " pairs"]
    start: Int[Tensor, " pairs"]
    col: Int[Tensor, "pairs d_vocab_out"]  # column of output x of key i (-1: not live)
    pair: Int[Tensor, " columns"]  # each column's key
    x: Int[Tensor, " columns"]  # ... and output
    H: Approx  # [columns, K]: b_k (top[x] + e[k, x])
    D: Approx  # [columns, slots]: a_p (top[x] - c[p, x]) >= 0
    Fq: Approx  # [columns]
    a: Approx  # [pairs, slots]: the non-query slots' a_p
    b: Approx  # [pairs, K]: b_k
    # per key, the live outputs claim (c) left and the size of claim (e)'s set Hi (for the
    # search's cost predictions; None where not screened)
    n_screen: Int[Tensor, " pairs"] | None = None
    n_high: Int[Tensor, " pairs"] | None = None
    # the keys whose columns of H (descending) and b (ascending, k <= m first) are sorted
    # (``refine``), and those orders (rows of the other keys unset)
    presorted: Bool[Tensor, " pairs"] | None = None
    order: Int[Tensor, "columns K"] | None = None
    b_order: Int[Tensor, "pairs K"] | None = None

    @property
    def live(self) -> Bool[Tensor, "pairs d_vocab_out"]:
        return self.col >= 0

    def keep(self, keep: Bool[Tensor, " columns"]) -> "Tables":
        """The same keys with only the columns ``keep`` (and their sorted orders, if any)."""
        V = self.col.shape[1]
        t = _columns(
            self.qs,
            self.ms,
            self.pair[keep],
            self.x[keep],
            V,
            self.H[keep],
            self.D[keep],
            self.Fq[keep],
            self.a,
            self.b,
        )
        if self.presorted is None:
            return t
        return dataclasses.replace(
            t, presorted=self.presorted, order=self.order[keep], b_order=self.b_order
        )


def _columns(qs, ms, pair, x, V: int, H: Approx, D: Approx, Fq: Approx, a, b) -> Tables:
    """Tables from columns (``pair``, ``x``) sorted by key, then output."""
    P = qs.numel()
    n_live = torch.bincount(pair, minlength=P)
    col = torch.full((P, V), -1, dtype=torch.int64)
    col[pair, x] = torch.arange(pair.numel())
    start = torch.cumsum(n_live, 0) - n_live
    return Tables(
        qs=qs, ms=ms, n_live=n_live, start=start, col=col, pair=pair, x=x, H=H, D=D, Fq=Fq, a=a, b=b
    )


def slot_bounds(a: Approx, h: Approx, b: Approx, D: Approx, ops: Ops) -> Approx:
    """Claim (d): ``a h - b D`` (elementwise, broadcast), with h the max (min) of H over a slot
    set and b the min (max) of b_k over it, is the slot bound U (L). Cost: 3 per entry. The
    checker and the search both evaluate the bounds with this function, so that their values
    and radii agree."""
    return ops.sub(ops.mul(a, h, label=LABEL), ops.mul(b, D, label=LABEL), label=LABEL)


def batches(ms: Int[Tensor, " pairs"], n: int, V: int) -> list[tuple[int, int]]:
    """Ranges [lo, hi) of the pairs (sorted by max token ``ms``) to build together: whole
    groups of one max token, each range's tables (at most V columns) within ``TABLE_ELEMENTS``
    unless one group alone exceeds it."""
    bounds = torch.cumsum(torch.unique_consecutive(ms, return_counts=True)[1], 0).tolist()
    out, lo = [], 0
    for i, end in enumerate(bounds):
        last = i + 1 == len(bounds)
        nxt = bounds[i + 1] if not last else end
        K = int(ms[nxt - 1]) + 1
        if last or (nxt - lo) * V * K > TABLE_ELEMENTS:
            out.append((lo, end))
            lo = end
    return out


def witness_batches(n_cols: Int[Tensor, " pairs"], ms: Int[Tensor, " pairs"], n: int):
    """Ranges [lo, hi) of the keys (sorted by max token ``ms``, with ``n_cols`` witness
    columns each) for ``witness_tables``: H within ``TABLE_ELEMENTS`` unless one key alone
    exceeds it."""
    cols = torch.cumsum(n_cols, 0)  # columns of keys 0 .. i
    out, lo = [], 0
    while lo < ms.numel():
        base = 0 if lo == 0 else int(cols[lo - 1])
        fits = (cols[lo:] - base) * (ms[lo:] + 1) <= TABLE_ELEMENTS  # H, padded
        hi = lo + max(1, int(fits.to(torch.int64).cumprod(0).sum()))
        out.append((lo, hi))
        lo = hi
    return out


def table_inputs(ck) -> tuple[Approx, ...]:
    """What ``tables`` and ``witness_tables`` read of stage 1 (``keys.CubicKeys`` ``ck``):
    EQKE_s, EQKP_s, z, EUPU, EVOU, PVOU and the query slot's rows W."""
    return ck.EQKE_s, ck.EQKP_s, ck.z, ck.circ.EUPU, ck.circ.EVOU, ck.circ.PVOU, ck.slots.W


def tables(
    qs: Int[Tensor, " pairs"],
    ms: Int[Tensor, " pairs"],
    own: Bool[Tensor, " pairs"],
    EQKE_s: Approx,
    EQKP_s: Approx,
    z: Approx,
    EUPU: Approx,
    EVOU: Approx,
    PVOU: Approx,
    W: Approx,
    ops: Ops,
) -> Tables:
    """Live outputs (claim (c)) and H, D, Fq at them for the keys (qs[i], ms[i]) (qs <= ms), all at
    once; E is the key's own where ``own``, else shared by the max token's keys. ``W`` is the
    query slot's row, W[q, x] = EUPU[q, x] + EVOU[q, x] + PVOU[n-1, x] (the cubic stage's), so
    the query slot's c + e is W[q, x] - W[q, m]. The arithmetic
    is rigorous ``Ops`` on tensors padded to K = max(ms) + 1 key tokens; the radii are those of
    the unpadded operations (they depend on the inputs' bounds only). The ledger is charged
    ``table_flops`` per max token, for the real entries only."""
    P, n, V = qs.numel(), PVOU.shape[0], EVOU.shape[1]
    s1 = n - 1
    mu, u = torch.unique(ms, return_inverse=True)  # the max tokens [U]; each pair's index in mu
    K = int(mu.max()) + 1 if P else 1
    beyond = torch.arange(K)[None, :] > mu[:, None]  # [U, K]: k > m (and q' > m)
    s = Ops()  # scratch: charged per max token below
    # Weights a_p b_k (slots) and a_{n-1} (query), exp-shifted: claim (c). The shifted scores
    # d[q, k] = EQKE_s[q, k] - M_b: of every query q' <= m for the max tokens with a shared E
    # (their max over q' gives it), else of the key's own query.
    # exp is increasing, so the max of b_k over q' is exp of the max shifted score: 1 exp per k.
    shared = torch.zeros(mu.numel(), dtype=torch.bool)
    shared[u[~own]] = True
    su = torch.nonzero(shared, as_tuple=True)[0]
    at = torch.full((mu.numel(),), -1, dtype=torch.int64)
    at[su] = torch.arange(su.numel())
    scores = EQKE_s[:K, :K].map_layout(lambda t: torch.where(beyond[su][:, None, :], -torch.inf, t))
    d_sh, top_sh = s.shift_by_max(scores, dim=2)  # [U', q', K] (k > m: -inf), M_b [U', q', 1]
    above = beyond[su][:, :, None]  # [U', q', 1]: queries q' > m take no part in the max
    b_hi = s.exp_nonpositive(s.amax(d_sh.map_layout(lambda t: t.masked_fill(above, -torch.inf)), 1))
    mine = torch.nonzero(own, as_tuple=True)[0]
    rows = EQKE_s[qs[mine], :K].map_layout(lambda t: t.masked_fill(beyond[u[mine]], -torch.inf))
    d_own, top_own = s.shift_by_max(rows, dim=1)  # [S, K], [S, 1]
    theirs = torch.nonzero(~own, as_tuple=True)[0]
    d_mid = torch.empty(P, K, dtype=torch.float64)
    d_mid[theirs] = d_sh.mid[at[u[theirs]], qs[theirs]]
    d_mid[mine] = d_own.mid
    shift = torch.empty(P, dtype=torch.float64)  # M_b: exact floats
    shift[theirs] = top_sh[at[u[theirs]], qs[theirs], 0]
    shift[mine] = top_own[:, 0]
    d = Approx(d_mid, max(d_sh.rad, d_own.rad), max(d_sh.mag, d_own.mag))
    bk = s.exp_nonpositive(d)  # exp(EQKE_s - M_b), [P, K] (k > m: 0)
    zq = s.sub(z[qs], Approx(shift, 0.0, EQKE_s.mag))
    pos = Ops.cat([EQKP_s[qs][:, :s1], zq.map_layout(lambda t: t[:, None])], 1)  # [P, n]
    a = s.exp_shifted(pos, dim=1)  # [P, n]
    # Centred value rows: c[i, p, x] = eu[i, x] + pv[m, p, x] (non-query slots) and e[m, k, x].
    eu = s.sub(EUPU[qs], EUPU[qs, ms].map_layout(lambda t: t[:, None]))  # [P, x]
    pv = s.sub(PVOU[None, :s1], PVOU[:s1, mu].map_layout(lambda t: t.T[:, :, None]))  # [U, s1, x]
    e = s.sub(EVOU[None, :K], EVOU[:K, mu].map_layout(lambda t: t.T[:, :, None]))  # [U, K, x]
    Fq = s.mul(a[:, s1:], s.sub(W[qs], W[qs, ms].map_layout(lambda t: t[:, None])))  # [P, x]
    pv_top = s.amax(pv, dim=1)  # [U, x]
    top = s.add(eu, pv_top[u])  # [P, x]: c[p, x] <= top[x], p < n-1
    gap = s.sub(pv_top.map_layout(lambda t: t[:, None, :]), pv)  # top - c: [U, slots, x]
    E_sh = _shared_E(b_hi, e[su], beyond[su], s)  # [U', x]
    E_own = _own_E(bk[mine], e[u[mine]], beyond[u[mine]], s)  # [S, x]
    E_mid = torch.empty(P, V, dtype=torch.float64)
    E_mid[theirs] = E_sh.mid[at[u[theirs]]]
    E_mid[mine] = E_own.mid
    E = Approx(E_mid, max(E_sh.rad, E_own.rad), max(E_sh.mag, E_own.mag))
    live, n_screen, n_high = _live(qs, ms, a, bk, beyond[u], E, top, e, u, Fq, s)
    pair, x = torch.nonzero(live, as_tuple=True)  # the columns, by key, then output
    um = u[pair]  # each column's max token
    H, D = _slot_tables(
        a[pair, :s1],
        bk[pair],
        top[pair, x],
        e.map_layout(lambda t: t[um, :, x]),  # [R, K]
        gap.map_layout(lambda t: t[um, :, x]),  # [R, slots]
        beyond[um],
        s,
    )
    n_live = live.sum(dim=1)
    ops.ledger.add(keys_table_flops(qs, ms, own, n_live, n, V, n_screen, n_high), label=LABEL)
    t = _columns(qs, ms, pair, x, V, H, D, Fq[pair, x], a[:, :s1], bk)
    return dataclasses.replace(t, n_screen=n_screen, n_high=n_high)


def _slot_tables(a: Approx, b: Approx, top: Approx, e: Approx, gap: Approx, beyond, ops: Ops):
    """Claim (d)'s H = b (top + e) [columns, K] (-inf where ``beyond``: k > m) and
    D = a gap [columns, slots], from each column's a [columns, slots], b [columns, K],
    top [columns], e [columns, K] and gap = top - c [columns, slots].
    Cost per column: 2 K + n - 1."""
    H = ops.mul(b, ops.add(top.map_layout(lambda t: t[:, None]), e))
    return H.map_layout(lambda t: t.masked_fill(beyond, -torch.inf)), ops.mul(a, gap)


def witness_tables(
    qs: Int[Tensor, " pairs"],
    ms: Int[Tensor, " pairs"],
    pair: Int[Tensor, " columns"],
    x: Int[Tensor, " columns"],
    EQKE_s: Approx,
    EQKP_s: Approx,
    z: Approx,
    EUPU: Approx,
    EVOU: Approx,
    PVOU: Approx,
    W: Approx,
) -> tuple[Tables, int]:
    """H, D and Fq of the keys (qs[i], ms[i]) (qs <= ms) at the columns (pair[j], x[j]) only
    (sorted by key, then output, x != m), for refute claims: claim (b) holds at any output, so
    these need no key-level screen (claim (c)). The shift, the operations and so the values and
    radii are those of ``tables`` at the same columns. Rigorous ``Ops`` on tensors padded to
    K = max(ms) + 1 key tokens; returns the tables and ``witness_table_flops`` of the real
    entries, for the caller to charge."""
    P, n, V = qs.numel(), PVOU.shape[0], EVOU.shape[1]
    s1 = n - 1
    K = int(ms.max()) + 1 if P else 1
    beyond = torch.arange(K)[None, :] > ms[:, None]  # [P, K]: k > m
    s = Ops()  # scratch: the real entries are charged by formula
    rows = EQKE_s[qs, :K].map_layout(lambda t: t.masked_fill(beyond, -torch.inf))
    d, M_b = s.shift_by_max(rows, dim=1)  # [P, K], [P, 1]
    bk = s.exp_nonpositive(d)  # b_k = exp(EQKE_s[q, k] - M_b) (k > m: 0)
    zq = s.sub(z[qs], Approx(M_b[:, 0], 0.0, EQKE_s.mag))
    a = s.exp_shifted(Ops.cat([EQKP_s[qs][:, :s1], zq.map_layout(lambda t: t[:, None])], 1), 1)
    q, m = qs[pair], ms[pair]
    eu = s.sub(EUPU[q, x], EUPU[q, m])  # [R]
    pv = s.sub(PVOU[:s1, x].map_layout(lambda t: t.T), PVOU[:s1, m].map_layout(lambda t: t.T))
    e = s.sub(EVOU[:K, x].map_layout(lambda t: t.T), EVOU[:K, m].map_layout(lambda t: t.T))
    pv_top = s.amax(pv, dim=1)  # [R]
    top = s.add(eu, pv_top)
    gap = s.sub(pv_top.map_layout(lambda t: t[:, None]), pv)  # [R, slots]
    H, D = _slot_tables(a[pair, :s1], bk[pair], top, e, gap, beyond[pair], s)
    Fq = s.mul(a[pair, s1], s.sub(W[q, x], W[q, m]))
    n_cols = torch.bincount(pair, minlength=P)
    tabs = _columns(qs, ms, pair, x, V, H, D, Fq, a[:, :s1], bk)
    return tabs, witness_table_flops(ms, n_cols, n)


def witness_table_flops(ms: Tensor, n_cols: Tensor, n: int) -> int:
    """Ledger total of ``witness_tables`` for keys with max tokens ``ms`` and ``n_cols``
    columns each: per key its shifted scores (K - 1 + K), b_k (K), the query score (1) and the
    weights a (n - 1 + 2n); per column eu (1), the non-query positional rows (s1), their max
    (s1 - 1), top (1), e (K), H (2 K), top - c and D (2 s1) and Fq from W (2)."""
    s1, K = n - 1, ms.to(torch.int64) + 1
    per_key = (K - 1) + 2 * K + 1 + (n - 1) + 2 * n
    per_col = 1 + s1 + (s1 - 1) + 1 + K + 2 * K + 2 * s1 + 2
    return int((per_key + n_cols.to(torch.int64) * per_col).sum())


def _shared_E(b_hi: Approx, e: Approx, beyond: Tensor, ops: Ops) -> Approx:
    """``E[m, x] = max(0, max_{k <= m} hi_k e[m, k, x]) >= max_{k <= m} b_k e[m, k, x]`` for
    every query q' <= m, with hi_k >= b_k >= 0 the max of b_k over q' (``b_hi``): b_k e <= hi_k e
    where e >= 0, and b_k e <= 0 where e < 0. Rounding: the products' radius covers them, and
    the maxima are 1-Lipschitz. ``beyond``: k > m [U, K]. Cost per max token: K V (products) +
    (K - 1) V (max over k) + V (with 0)."""
    hi = b_hi.map_layout(lambda t: t[:, :, None])  # [U, K, 1]
    most = ops.mul(hi, e).map_layout(lambda t: t.masked_fill(beyond[:, :, None], -torch.inf))
    return ops.maximum(ops.amax(most, dim=1), ops.constant(torch.zeros(1, 1)))  # [U, x]


def _own_E(bk: Approx, e: Approx, beyond: Tensor, ops: Ops) -> Approx:
    """``E[i, x] = max_{k <= m} b_k e[m, k, x]`` for each key's own ``bk`` [S, K] (``e``
    [S, K, x]; ``beyond``: k > m [S, K]). Cost per key: K V + (K - 1) V."""
    most = ops.mul(bk.map_layout(lambda t: t[:, :, None]), e)
    most = most.map_layout(lambda t: t.masked_fill(beyond[:, :, None], -torch.inf))
    return ops.amax(most, dim=1)  # [S, x]


def own_E_tokens(ms: Int[Tensor, " pairs"], n: int, V: int) -> Int[Tensor, " tokens"]:
    """The max tokens whose keys (one per entry of ``ms``) cost less with their own E than
    with the shared one (the search's choice; any choice is sound)."""
    mu, Q = torch.unique(ms, return_counts=True)
    zero = torch.zeros_like(Q)
    own = table_flops(mu, Q, n, V, zero, zero, Q)
    return mu[own < table_flops(mu, Q, n, V, zero, zero, zero)]


def _live(
    qs: Tensor,
    ms: Tensor,
    a: Approx,
    bk: Approx,
    beyond: Tensor,
    E: Approx,
    top: Approx,
    e: Approx,
    u: Tensor,
    Fq: Approx,
    ops: Ops,
) -> tuple[Bool[Tensor, "pairs d_vocab_out"], Tensor, Tensor]:
    """Claim (c): the outputs x != m whose KB_x is not proven negative, per key (q, m)
    (``bk`` [P, K], 0 at k > m, i.e. where ``beyond``; ``E`` per key, from ``_shared_E`` or
    ``_own_E``; ``top`` the max of c over the non-query slots; ``e`` [U, K, x] per max token,
    key i's being ``e[u[i]]``); then claim (e) at the outputs left (``_high_screen``).
    Returns the live outputs, and per key the number left by claim (c) and the size of its
    set Hi (for ``high_flops``)."""
    P, V = top.shape
    s1 = a.shape[1] - 1
    e_m = e[u, ms]  # e[m, m, x], [P, x]
    b_hi = ops.amax(bk, dim=1).map_layout(lambda t: t[:, None])  # bk >= 0 = padding
    b_lo = ops.amin(bk.map_layout(lambda t: t.masked_fill(beyond, torch.inf)), dim=1)
    b_lo = b_lo.map_layout(lambda t: t[:, None])
    lo_top = ops.mul(b_lo, top)
    N = ops.add(ops.maximum(ops.mul(b_hi, top), lo_top), E)  # [P, x]
    A = ops.sum(a[:, :s1], dim=1)  # [P]
    has_max_slot = qs < ms
    sel = torch.nonzero(has_max_slot, as_tuple=True)[0]
    T = None
    if sel.numel():
        # KB = Fq + A N + a_lo (T - N) = Fq + (A - a_lo) N + a_lo b_m (top + e_m) (T <= N: the
        # least weight is the worst)
        a_lo = ops.amin(a[sel, :s1], dim=1)  # [S]
        A = _merge(A, sel, ops.sub(A[sel], a_lo))
        w_m = ops.mul(a_lo, bk.map_layout(lambda t: t[sel, ms[sel]]))  # a_lo b_m, [S]
        T = ops.mul(w_m.map_layout(lambda t: t[:, None]), ops.add(top[sel], e_m[sel]))
    kb = ops.add(Fq, ops.mul(A.map_layout(lambda t: t[:, None]), N))
    if T is not None:
        kb = _merge(kb, sel, ops.add(kb[sel], T))
    live = ~ops.proven_negative(kb)
    live[torch.arange(P), ms] = False
    n_screen = live.sum(dim=1)
    T_of = torch.full((P,), -1, dtype=torch.int64)
    T_of[sel] = torch.arange(sel.numel())
    h = _high_screen(live, bk, beyond, lo_top, E, top, e, u, Fq, A, T, T_of, ops)
    return live, n_screen, h


def high_tokens(bk: Approx, beyond: Tensor) -> Bool[Tensor, "pairs K"]:
    """Claim (e)'s set Hi per key: the tokens k <= m with b_k >= ``HIGH_B`` (by the float
    value: any set is sound), if at most ``HIGH_MAX``; else none (the key skips claim (e))."""
    hi = (bk.mid >= HIGH_B) & ~beyond
    return hi & (hi.sum(dim=1, keepdim=True) <= HIGH_MAX)


def _high_screen(live, bk, beyond, lo_top, E, top, e, u, Fq, A, T, T_of, ops: Ops) -> Tensor:
    """Claim (e) at the ``live`` entries (updated in place) of the keys with a set Hi
    (``high_tokens``): KB' with N' for N, from claim (c)'s terms (``lo_top`` = b_lo top, ``A``
    the weight of N, ``T`` the max slot's term of the keys ``T_of`` >= 0). The keys go in
    groups of one size |Hi| (nothing padded). Returns |Hi| per key. Cost: ``high_flops``."""
    P, K = bk.shape
    hi = high_tokens(bk, beyond)
    ops.ledger.add(int((~beyond).sum()), label=LABEL)  # b_k >= HIGH_B, per token k <= m
    h = hi.sum(dim=1)
    screened = (h > 0) & live.any(dim=1)
    # beta = the largest b_k of the other tokens (Lo), for the keys that have any
    lo = ~beyond & ~hi
    with_lo = torch.nonzero(screened & lo.any(dim=1), as_tuple=True)[0]
    beta = torch.full((P,), torch.nan, dtype=torch.float64)
    beta_lo = ops.amax(bk[with_lo].map_layout(lambda t: t.masked_fill(~lo[with_lo], -1.0)), 1)
    beta[with_lo] = beta_lo.mid
    order = torch.arange(K)
    for hv in torch.unique(h[screened]).tolist():
        keys = torch.nonzero(screened & (h == hv), as_tuple=True)[0]
        toks = order.expand(keys.numel(), -1)[hi[keys]].reshape(-1, hv)  # [G, h]
        i, x = torch.nonzero(live[keys], as_tuple=True)  # the entries, [R]
        key = keys[i]
        k = toks[i]  # [R, h]
        t_x = top[key[:, None], x[:, None]]  # [R, 1]
        H = ops.mul(bk[key[:, None], k], ops.add(t_x, e[u[key][:, None], k, x[:, None]]))
        N = ops.amax(H, dim=1)  # max over Hi of H[k, x], [R]
        r = torch.nonzero(~beta[key].isnan(), as_tuple=True)[0]  # entries of keys with Lo
        if r.numel():
            kr, xr = key[r], x[r]
            b_r = Approx(beta[kr], beta_lo.rad, beta_lo.mag)
            rest = ops.add(ops.maximum(ops.mul(b_r, top[kr, xr]), lo_top[kr, xr]), E[kr, xr])
            N = _merge(N, r, ops.maximum(N[r], rest))
        kb = ops.add(Fq[key, x], ops.mul(A[key], N))
        j = T_of[key]
        with_T = torch.nonzero(j >= 0, as_tuple=True)[0]
        if with_T.numel():
            kb = _merge(kb, with_T, ops.add(kb[with_T], T[j[with_T], x[with_T]]))
        dead = ops.proven_negative(kb)
        live[key[dead], x[dead]] = False
    return h


def high_flops(K, n_screen, h, has_max) -> Tensor:
    """Ledger total of claim (e) per key: K comparisons (b_k >= HIGH_B); for a key with a set
    Hi of h <= ``HIGH_MAX`` tokens and ``n_screen`` outputs left by claim (c), the largest b
    of the others (K - 1, over every token with Hi masked), and per output the max over Hi of
    b_k (top + e[k]) (3 h - 1), the other tokens' bound (4, if any), A N' + Fq (2), the max
    slot's term (1, q < m) and the decision (1). Ints, or int tensors with one entry per
    key."""
    K, n_screen, h, has_max = (torch.as_tensor(v) for v in (K, n_screen, h, has_max))
    n_lo = K - h
    on = (h > 0) & (n_screen > 0)
    per = 3 * h - 1 + 4 * (n_lo > 0) + 3 + has_max.to(torch.int64)
    lo = torch.where(n_lo > 0, K - 1, 0)
    return K + torch.where(on, lo + n_screen * per, 0)


def _merge(whole: Approx, rows: Tensor, part: Approx) -> Approx:
    """``whole`` with its ``rows`` replaced by ``part`` (the larger radius and magnitude)."""
    return Approx(
        whole.mid.index_copy(0, rows, part.mid),
        max(whole.rad, part.rad),
        max(whole.mag, part.mag),
    )


def keys_table_flops(
    qs: Tensor,
    ms: Tensor,
    own: Tensor,
    n_live: Tensor,
    n: int,
    V: int,
    n_screen: Tensor,
    n_high: Tensor,
) -> int:
    """Ledger total of ``tables`` for the keys (qs[i], ms[i]) (own E where ``own``) with
    ``n_live[i]`` live outputs, ``n_screen[i]`` of them left by claim (c) and a set Hi of
    ``n_high[i]`` tokens: ``table_flops`` per max token, ``high_flops`` per key."""
    mu, u = torch.unique(ms, return_inverse=True)
    Q, Q_max_slot, L, Q_own = (
        torch.zeros(mu.numel(), dtype=torch.int64).index_add_(0, u, v.to(torch.int64))
        for v in (torch.ones_like(qs), qs < ms, n_live, own)
    )
    high = high_flops(ms + 1, n_screen, n_high, qs < ms)
    return int(table_flops(mu, Q, n, V, L, Q_max_slot, Q_own).sum() + high.sum())


def table_flops(m, Q, n: int, V: int, n_live, Q_max_slot, Q_own):
    """Ledger total of ``tables`` for max token m, Q keys (``Q_max_slot`` of them q < m,
    ``Q_own`` with their own E) and ``n_live`` live outputs in all (ints, or int64 tensors: one
    entry per max token)."""
    s1, K = n - 1, m + 1
    shared = (Q_own < Q) * 1  # some key takes the shared E: the max of b_k over q' <= m
    b_max = K * (K - 1) + K * K + K * K  # shifted scores, their max over q', exps
    shared_E = K * V + (K - 1) * V + V
    own = (K - 1) + K + K * V + (K - 1) * V  # the key's row of shifted scores, its E
    weights = K + 1 + (n - 1) + 2 * n  # b_k, zq, a
    rows = Q * V + s1 * V + K * V + (s1 - 1) * V + Q * V  # eu, pv, e, max of pv, top
    query = 2 * Q * V  # W[q] - W[q, m], Fq
    bound = Q * (2 * (K - 1) + (s1 - 1) + 4 * V + 2 * V + V)  # b range, A, N, A N + Fq, sign
    bound += Q_max_slot * ((s1 - 1) + 2 + 3 * V)  # least a, A - a_lo, a_lo b_m; the T term
    slots = s1 * V + n_live * (2 * K + s1)  # top - c; then H and D at the columns
    E = shared * (b_max + shared_E) + Q_own * own
    return E + Q * weights + rows + query + bound + slots


def _sorted_orders(t: Tables, keys: Bool[Tensor, " pairs"]) -> Tables:
    """``t`` with the columns of H of the ``keys`` sorted (descending; rows of the other keys
    -1) and b (ascending, tokens k > m last): index work; the charge is the callers'
    (``exact_live_flops``)."""
    P, K = t.b.shape
    order = torch.full((t.pair.numel(), K), -1, dtype=torch.int64)  # -1: not sorted
    cols = torch.nonzero(keys[t.pair], as_tuple=True)[0]
    order[cols] = t.H.mid[cols].sort(dim=1, descending=True, stable=True).indices
    beyond = torch.arange(K)[None, :] > t.ms[:, None]
    b_order = t.b.mid.masked_fill(beyond, torch.inf).sort(dim=1, stable=True).indices
    return dataclasses.replace(t, presorted=keys, order=order, b_order=b_order)


def exact_key_live(t: Tables, ops: Ops) -> Bool[Tensor, " columns"]:
    """Claim (c) in its exact form at the tables' columns. Claim (d) over the set of all
    k <= m gives M[p, x] = a_p max_{k <= m} H[k, x] - min_{k <= m} b_k D[p, x] >= F[p, k, x]
    for every k <= m, and over {m}, T[p, x] = a_p H[m, x] - b_m D[p, x] = F[p, m, x]. Then
    KB_x = Fq[x] + sum_p M[p, x] + max_p (T[p, x] - M[p, x]) (the last term for q < m only)
    bounds G_x on every input of the key, as in claim (c) (the slot holding m contributes
    exactly T[p, x], every other slot at most M[p, x]). True where KB_x is not proven
    negative. Rigorous ``Ops``, charged ``exact_live_flops``."""
    R, K = t.H.shape
    s1 = t.D.shape[1]
    scratch = Ops()
    m = t.ms[t.pair]
    beyond = torch.arange(K)[None, :] > t.ms[:, None]  # [pairs, K]
    b_lo = scratch.amin(t.b.map_layout(lambda v: v.masked_fill(beyond, torch.inf)), dim=1)
    h_hi = scratch.amax(t.H, dim=1)
    if t.presorted is not None:  # the first entries of the sorted orders: the same floats
        keys = torch.nonzero(t.presorted, as_tuple=True)[0]
        cols = torch.nonzero(t.presorted[t.pair], as_tuple=True)[0]
        b_lo.mid[keys] = t.b.mid[keys, t.b_order[keys, 0]]
        h_hi.mid[cols] = t.H.mid[cols, t.order[cols, 0]]
    a = t.a[t.pair]  # [R, slots]
    M = slot_bounds(a, h_hi[:, None], b_lo[t.pair][:, None], t.D, scratch)  # [R, slots]
    kb = scratch.add(t.Fq, scratch.sum(M, dim=1))
    H_m = t.H.map_layout(lambda v: v.gather(1, m[:, None]))  # [R, 1]
    b_m = t.b.map_layout(lambda v: v[t.pair, m][:, None])
    T = slot_bounds(a, H_m, b_m, t.D, scratch)  # [R, slots]
    with_max = scratch.add(kb, scratch.amax(scratch.sub(T, M), dim=1))
    has_max = (t.qs < t.ms)[t.pair]
    kb = Approx(
        torch.where(has_max, with_max.mid, kb.mid),
        max(kb.rad, with_max.rad),
        max(kb.mag, with_max.mag),
    )
    ops.ledger.add(exact_live_flops(s1, t.ms + 1, t.n_live, t.qs < t.ms), label=LABEL)
    return ~scratch.proven_negative(kb)


def exact_live_flops(s1: int, K, n_live: Tensor, has_max: Tensor) -> int:
    """Per key with columns: min of b (K - 1). Per real column: max of H over k (K - 1), M
    (3 s1), sum over slots (s1 - 1), add (1), decision (1); with a max slot (q < m) also T
    (3 s1), T - M (s1), their max (s1 - 1) and an add (1). ``K``: an int, or one per key."""
    return int(_exact_cost(s1, K, n_live, has_max).sum())


def _exact_cost(s1: int, K, n_live: Tensor, has_max: Tensor) -> Tensor:
    per = (K - 1) + 3 * s1 + (s1 - 1) + 1 + 1
    extra = 3 * s1 + s1 + (s1 - 1) + 1
    L = n_live.to(torch.int64)
    return L * (per + extra * has_max.to(torch.int64)) + (K - 1) * (L > 0)


@dataclass(frozen=True)
class SetGroups:
    """The distinct (key, set) and (key, slot, set) among the slots of a list of boxes
    (``distinct``): an id per (box, slot), and one (box, slot) per id."""

    set_id: Int[Tensor, "boxes slots"]
    set_at: Int[Tensor, "sets 2"]
    slot_id: Int[Tensor, "boxes slots"]
    slot_at: Int[Tensor, "slot_sets 2"]

    def restrict(self, idx: Int[Tensor, " some"]) -> "SetGroups":
        """The groups of the boxes ``idx`` alone, which must hold whole keys (every box of a
        key they hold, so each id's (box, slot) is among them)."""
        pos = torch.full((self.set_id.shape[0],), -1, dtype=torch.int64)
        pos[idx] = torch.arange(idx.numel())

        def part(ids: Tensor, at: Tensor) -> tuple[Tensor, Tensor]:
            kept, local = torch.unique(ids[idx], return_inverse=True)
            return local, torch.stack([pos[at[kept, 0]], at[kept, 1]], dim=1)

        return SetGroups(*part(self.set_id, self.set_at), *part(self.slot_id, self.slot_at))


def distinct(rows: Tensor, masks: Bool[Tensor, "boxes slots k"]) -> SetGroups:
    """The distinct (key, set) and (key, slot, set) of the slots of boxes with keys ``rows``
    [B] and slot sets ``masks`` [B, slots, K]. Free (index and bit work): each set is packed
    exactly into 64-bit words, so equal ids mean equal sets."""
    B, s1, K = masks.shape
    words = -(-K // 64)
    padded = torch.zeros(B, s1, words * 64, dtype=torch.int64)
    padded[:, :, :K] = masks
    # bit j of a word is token 64 w + j; bit 63 is the sign bit, and the sum of distinct powers
    # of two (with -2^63 for bit 63) is exact and differs for every other pattern
    packed = (padded.view(B, s1, words, 64) << torch.arange(64)).sum(dim=3)  # [B, s1, words]
    key = torch.cat([rows[:, None, None].expand(B, s1, 1), packed], dim=2)
    set_id = _row_ids(key.reshape(B * s1, words + 1))
    slot_id = _row_ids(torch.stack([set_id, torch.arange(s1).repeat(B)], dim=1))
    return SetGroups(
        set_id.view(B, s1), _firsts(set_id, s1), slot_id.view(B, s1), _firsts(slot_id, s1)
    )


def _firsts(ids: Int[Tensor, " n"], s1: int) -> Int[Tensor, "ids 2"]:
    """One (box, slot) per id of the flat (box, slot) ids ``ids``: the first."""
    first = torch.full((int(ids.max()) + 1 if ids.numel() else 0,), ids.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, ids, torch.arange(ids.numel()), reduce="amin")
    return torch.stack([first // s1, first % s1], dim=1)


def _row_ids(rows: Int[Tensor, "n cols"]) -> Int[Tensor, " n"]:
    """Ids 0, 1, ... of the distinct rows, in lexicographic order (``torch.unique(dim=0)``'s
    inverse, from one ``torch.unique`` per column: several times faster here). After column c,
    ``ids`` numbers the distinct prefixes (columns 0 .. c) in order, and ids * n + (the rank of
    column c + 1's value) orders the longer prefixes likewise (ranks are below n)."""
    n, cols = rows.shape
    ids = torch.unique(rows[:, 0], return_inverse=True)[1]
    for c in range(1, cols):
        rank = torch.unique(rows[:, c], return_inverse=True)[1]
        ids = torch.unique(ids * n + rank, return_inverse=True)[1]
    return ids


def use_exact_bound(
    t_live: Tensor, ms, n: int, rows: Tensor, masks: Tensor, qs: Tensor, groups: SetGroups
) -> Bool[Tensor, " queries"]:
    """Whether the exact key bound pays off for each key (qs[i], ms[i]) (``ms``: a tensor, or
    one max token for all): its prove claims (boxes ``rows`` with slot sets ``masks``, grouped
    by ``distinct`` in ``groups``) at every live output cost more than the bound itself (a rule
    the search can predict). ``t_live``: live outputs per key."""
    full = prove_key_flops(rows, masks, t_live, torch.as_tensor(ms).expand_as(qs), groups)
    return full > _exact_cost(n - 1, ms + 1, t_live, qs < ms)


def prove_claims_flops(
    t_live: Tensor, t_exact: Tensor, ms, n: int, rows: Tensor, masks: Tensor, qs: Tensor
) -> int:
    """What the checker charges for the prove claims of the keys (qs[i], ms[i]) (``ms``: a
    tensor, or one max token for all) after their tables: the exact key bound where
    ``use_exact_bound`` (live outputs per key ``t_live``), then ``prove`` at ``t_exact`` live
    outputs there and ``t_live`` elsewhere. Additive over keys."""
    return int(prove_claims_key_flops(t_live, t_exact, ms, n, rows, masks, qs).sum())


def prove_claims_key_flops(
    t_live: Tensor, t_exact: Tensor, ms, n: int, rows: Tensor, masks: Tensor, qs: Tensor
) -> Int[Tensor, " keys"]:
    """``prove_claims_flops`` per key."""
    ms = torch.as_tensor(ms).expand_as(qs)
    flops = _prove_shape(rows, masks, ms, distinct(rows, masks))
    exact = _exact_cost(n - 1, ms + 1, t_live, qs < ms)
    use = flops(t_live) > exact  # ``use_exact_bound``
    after = flops(torch.where(use, t_exact, t_live), use & flops.sort)  # ``refine``'s orders
    return torch.where(use, exact, 0) + after


def refine(t: Tables, use: Bool[Tensor, " pairs"], ops: Ops, sort: Tensor | None = None) -> Tables:
    """``t`` with the keys ``use`` restricted to the columns their exact key bound leaves live
    (``exact_key_live``); the other keys unchanged. The keys ``use & sort`` sort their columns
    of H and their b first and take the bound's max and min from the orders (the same floats,
    and the same charge: sort-verification instead of the reductions), which ``prove`` then
    reuses. Cost: the bound's, on ``use``."""
    keep = torch.ones(t.pair.numel(), dtype=torch.bool)
    if sort is not None:
        t = _sorted_orders(t, use & sort)
    if bool(use.any()):
        on = use[t.pair]
        sub = torch.nonzero(use, as_tuple=True)[0]
        part = _columns(
            t.qs[sub],
            t.ms[sub],
            torch.cumsum(use, 0)[t.pair[on]] - 1,  # index among ``sub``
            t.x[on],
            t.col.shape[1],
            t.H[on],
            t.D[on],
            t.Fq[on],
            t.a[sub],
            t.b[sub],
        )
        if t.presorted is not None:
            part = dataclasses.replace(
                part, presorted=t.presorted[sub], order=t.order[on], b_order=t.b_order[sub]
            )
        keep[on] = exact_key_live(part, ops)
    return t.keep(keep)


def _set_extreme(
    vals: Approx, masks: Bool[Tensor, "boxes slots k"], largest: bool, ops: Ops
) -> Approx:
    """Per box and slot, max (or min) over k in S_p of ``vals[box, k]`` ([boxes, K]).

    Claim: each output is within vals.rad of the exact max (min) over the same subset.
    Proof: a float max of a subset of entries is one of them, each within vals.rad of its
    exact value, and max is monotone and 1-Lipschitz in the sup norm.                    QED
    Masks must be non-empty in every slot. Cost: (|S_p| - 1) per slot.
    """
    fill = -torch.inf if largest else torch.inf
    v = vals.mid[:, None, :].masked_fill(~masks, fill)  # [boxes, slots, K]
    mid = v.amax(dim=2) if largest else v.amin(dim=2)
    ops.ledger.add(int((masks.sum(dim=2) - 1).clamp(min=0).sum()), label=LABEL)
    return Approx(mid, vals.rad, vals.mag)


def prove(
    t: Tables,
    rows: Int[Tensor, " boxes"],
    masks: Bool[Tensor, "boxes slots k"],
    ops: Ops,
    groups: SetGroups | None = None,
) -> Bool[Tensor, " boxes"]:
    """Claims (a), (c) and (d) for each box (rows index ``t.qs``; masks over k <= m): UB_x < 0
    for every live output x of the box's key; the other outputs are below m on the whole key.
    H and b are the same for every slot, and a split changes one slot of a box, so the boxes of
    a key share most of their slot sets: the max of H and the min of b are taken once per
    distinct (key, set), and the bound U once per distinct (key, slot, set) (``distinct``, or
    ``groups`` if the caller has them). The arithmetic is rigorous ``Ops`` on tensors padded to
    the most live outputs (padding entries are -inf, so they never decide), and the ledger is
    charged ``prove_flops`` for the real entries only."""
    B = rows.numel()
    out = torch.zeros(B, dtype=torch.bool)
    n_live = t.n_live[rows]
    out[n_live == 0] = True  # every output is below m on the whole key
    groups = distinct(rows, masks) if groups is None else groups
    ops.ledger.add(prove_flops(rows, masks, t.n_live, t.ms, groups, t.presorted), label=LABEL)
    todo = torch.nonzero(n_live > 0, as_tuple=True)[0]
    todo = todo[rows[todo].argsort(stable=True)]  # by key: a chunk holds whole keys
    scratch = Ops()  # not charged: the real entries are charged above
    for lo, hi in _key_chunks(rows[todo], n_live[todo], masks.shape[1]):
        idx = todo[lo:hi]
        out[idx] = _prove_keys(t, rows[idx], masks[idx], groups.restrict(idx), scratch)
    return out


def _key_chunks(rows: Tensor, n_live: Tensor, s1: int) -> list[tuple[int, int]]:
    """Ranges [lo, hi) of boxes sorted by key, whole keys each, with at most ``CHUNK_ELEMENTS``
    entries (boxes x slots x the range's most live outputs) unless one key alone has more."""
    out, lo, B = [], 0, rows.numel()
    ends = torch.cumsum(torch.unique_consecutive(rows, return_counts=True)[1], 0)
    while lo < B:
        e = ends[ends > lo]
        most = torch.cummax(n_live[e - 1], 0).values  # boxes of one key share n_live
        fits = (e - lo) * s1 * most <= CHUNK_ELEMENTS
        hi = int(e[max(0, int(fits.to(torch.int64).cumprod(0).sum()) - 1)])
        out.append((lo, hi))
        lo = hi
    return out


def _prove_keys(t: Tables, rows: Tensor, masks: Tensor, groups: SetGroups, ops: Ops) -> Tensor:
    """``prove`` for boxes whose keys all have live outputs, grouped as ``groups`` (``ops``:
    scratch)."""
    set_id, set_at, slot_id, slot_at = groups.set_id, groups.set_at, groups.slot_id, groups.slot_at
    W = int(t.n_live[rows].max())
    sets = masks[set_at[:, 0], set_at[:, 1]]
    by_order = _sorted_keys(sets, rows[set_at[:, 0]], t.ms)
    if t.presorted is not None:
        by_order |= t.presorted
    h, b_lo = _set_extremes(t, rows[set_at[:, 0]], sets, W, by_order[rows[set_at[:, 0]]])
    key, slot = rows[slot_at[:, 0]], slot_at[:, 1]  # each distinct (key, slot, set)
    which = set_id[slot_at[:, 0], slot_at[:, 1]]  # ... and its (key, set)
    U = slot_bounds(
        Approx(t.a.mid[key, slot][:, None], t.a.rad, t.a.mag),
        Approx(h[which], t.H.rad, t.H.mag),
        Approx(b_lo[which][:, None], t.b.rad, t.b.mag),
        Approx(t.D.mid[_key_columns(t, key, W), slot[:, None]], t.D.rad, t.D.mag),
        ops,
    )  # [J, W]
    U.mid.masked_fill_(_past_live(t, key, W), -torch.inf)  # (a = 0 would give NaN there)
    # Per box: its slots' bounds (gathered: the uniform bounds are kept), plus the query slot.
    fq = t.Fq.mid[_key_columns(t, rows, W)].masked_fill_(_past_live(t, rows, W), -torch.inf)
    per_slot = Approx(U.mid[slot_id], U.rad, U.mag)  # [b, slots, W]
    ub = ops.add(Approx(fq, t.Fq.rad, t.Fq.mag), ops.sum(per_slot, dim=1))
    return ops.proven_negative(ops.amax(ub, dim=1))


def _past_live(t: Tables, keys: Tensor, W: int) -> Tensor:
    """[J, W]: True past each key's live outputs."""
    return torch.arange(W)[None, :] >= t.n_live[keys][:, None]


def _key_columns(t: Tables, keys: Tensor, W: int) -> Tensor:
    """The first W columns of each key of ``keys`` [J] (past its live outputs: column 0)."""
    cols = t.start[keys][:, None] + torch.arange(W)[None, :]
    return cols.masked_fill(_past_live(t, keys, W), 0)


def _set_extremes(
    t: Tables, keys: Tensor, sets: Tensor, W: int, by_order: Tensor
) -> tuple[Tensor, Tensor]:
    """Per (key, set): max_{k in S} H at the key's columns [J, W] (-inf past its live
    outputs) and min_{k in S} b_k [J] (floats; ``prove`` wraps them with the tables' bounds).
    Where ``by_order`` (per set: its key's choice, ``_sorted_keys``), they are read from the
    key's sorted orders: the first token of S in its column's order by H (descending), and in
    the key's order by b (ascending), is the max, the min (the same floats); elsewhere they are
    reductions over S. One entry per (set, live column), in chunks of at most
    ``CHUNK_ELEMENTS`` gathered values."""
    J, K = sets.shape
    L = t.n_live[keys]
    which = torch.repeat_interleave(torch.arange(J), L)  # the set of each (set, column) entry
    offset = torch.arange(which.numel()) - torch.repeat_interleave(torch.cumsum(L, 0) - L, L)
    h = torch.full((J, W), -torch.inf, dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // K)
    for lo in range(0, which.numel(), step):
        j, o = which[lo : lo + step], offset[lo : lo + step]
        col = t.start[keys[j]] + o
        h[j, o] = _first_or_reduce(
            t.H.mid[:, :K], col, sets[j], by_order[j], True, None if t.order is None else t.order
        )
    b_lo = _first_or_reduce(t.b.mid[:, :K], keys, sets, by_order, False, t.b_order)
    return h, b_lo


def _first_or_reduce(
    table: Tensor,
    row: Tensor,
    sets: Tensor,
    by_order: Tensor,
    descending: bool,
    orders: Tensor | None = None,
) -> Tensor:
    """Per entry i, the max (``descending``) or min of ``table[row[i]]`` over the tokens
    ``sets[i]`` (non-empty): where ``by_order``, the first of them in the row's sorted order
    (each row sorted once, or ``orders[row]`` where already sorted: rows of ``orders`` with a
    negative entry are not), else a reduction over them (the same float either way)."""
    fill = -torch.inf if descending else torch.inf
    out = torch.empty(row.numel(), dtype=torch.float64)
    red = torch.nonzero(~by_order, as_tuple=True)[0]
    masked = table[row[red]].masked_fill(~sets[red], fill)
    out[red] = masked.amax(dim=1) if descending else masked.amin(dim=1)
    srt = torch.nonzero(by_order, as_tuple=True)[0]
    rows, of = torch.unique(row[srt], return_inverse=True)
    order = table[rows].sort(dim=1, descending=descending, stable=True).indices[of]  # [S, K]
    if orders is not None:  # rows sorted already (``refine``): the same orders
        have = orders[row[srt], 0] >= 0
        order[have] = orders[row[srt][have]]
    first = sets[srt].gather(1, order).to(torch.int8).argmax(dim=1, keepdim=True)
    out[srt] = table[row[srt]].gather(1, order.gather(1, first))[:, 0]
    return out


def _sorted_keys(sets: Tensor, set_keys: Tensor, ms: Tensor) -> Tensor:
    """Per key (``ms`` its max tokens), whether ``prove`` reads the maxima and minima over its
    distinct sets (``sets`` [J, K] of the keys ``set_keys``, every set of each key) from
    sorted orders: when that costs less, K - 1 comparisons per sorted column and for b
    (sort-verification, reference-algorithms §10.2) against sum_S (|S| - 1) per column and for
    b (the reductions), i.e. when the sets' sizes sum_S (|S| - 1) exceed m = K - 1."""
    reduce = torch.zeros(ms.numel(), dtype=torch.int64)
    reduce.index_add_(0, set_keys, (sets.sum(dim=1) - 1).clamp(min=0))
    return reduce > ms


def set_slot_bounds(
    t: Tables, rows: Tensor, cols: Tensor, masks: Tensor, ops: Ops, lower: bool = False
) -> tuple[Approx, Approx | None]:
    """Claim (d)'s U (and L if ``lower``) [boxes, W, slots] of boxes with keys ``rows``
    [boxes] and slot sets ``masks`` [boxes, slots, K] at the columns ``cols`` [boxes, W], box
    by box (``prove`` shares the sets' maxima among the boxes of a key: the same floats). The
    search evaluates its boxes with it, so that its decisions are the checker's."""
    B, s1 = masks.shape[:2]
    K = int(t.ms[rows].max()) + 1 if rows.numel() else 1  # the sets hold tokens <= m
    masks = masks[:, :, :K]
    h_hi = torch.empty(B, cols.shape[1], s1, dtype=torch.float64)
    b_lo = torch.empty(B, s1, dtype=torch.float64)
    h_lo, b_hi = torch.empty_like(h_hi), torch.empty_like(b_lo)
    # A single token's set is read directly (every max slot); larger ones reduced over it.
    one = masks.sum(dim=2) == 1
    b1, p1 = torch.nonzero(one, as_tuple=True)
    tok = masks[b1, p1].to(torch.int64).argmax(dim=1)
    h_hi[b1, :, p1] = h_lo[b1, :, p1] = t.H.mid[cols[b1], tok[:, None]]
    b_lo[b1, p1] = b_hi[b1, p1] = t.b.mid[rows[b1], tok]
    bm, pm = torch.nonzero(~one, as_tuple=True)
    if bm.numel():
        off = ~masks[bm, pm]  # [n, K]
        Hx = t.H.mid[cols[bm], :K]  # [n, W, K], a copy (filled in place)
        bx = t.b.mid[rows[bm], :K]
        h_hi[bm, :, pm] = Hx.masked_fill_(off[:, None, :], -torch.inf).amax(dim=2)
        b_lo[bm, pm] = bx.masked_fill(off, torch.inf).amin(dim=1)
        if lower:  # the same entries
            h_lo[bm, :, pm] = Hx.masked_fill_(off[:, None, :], torch.inf).amin(dim=2)
            b_hi[bm, pm] = bx.masked_fill(off, -torch.inf).amax(dim=1)
    a = Approx(t.a.mid[rows][:, None, :], t.a.rad, t.a.mag)
    D = Approx(t.D.mid[cols], t.D.rad, t.D.mag)

    def bound(h: Tensor, b: Tensor) -> Approx:
        return slot_bounds(
            a, Approx(h, t.H.rad, t.H.mag), Approx(b[:, None, :], t.b.rad, t.b.mag), D, ops
        )

    return bound(h_hi, b_lo), bound(h_lo, b_hi) if lower else None


def prove_flops(
    rows: Tensor,
    masks: Bool[Tensor, "boxes slots k"],
    n_live: Tensor,
    ms: Tensor,
    groups: SetGroups,
    presorted: Tensor | None = None,
) -> int:
    """Ledger total of ``prove`` for boxes with keys ``rows`` and slot sets ``masks`` (grouped
    by ``distinct`` in ``groups``), the keys having ``n_live`` live outputs and max tokens
    ``ms`` each, and ``presorted`` (if given) their sorted orders already."""
    return int(prove_key_flops(rows, masks, n_live, ms, groups, presorted).sum())


def prove_key_flops(
    rows: Tensor,
    masks: Bool[Tensor, "boxes slots k"],
    n_live: Tensor,
    ms: Tensor,
    groups: SetGroups,
    presorted: Tensor | None = None,
) -> Tensor:
    """``prove_flops`` per key (L = its live outputs; nothing for boxes of keys with L = 0):
    min(R, m) (L + 1) for the maxima of H at each live output and the minima of b over its
    distinct sets, with R = sum over its distinct (key, set)s of |S| - 1 (reductions) and
    m = K - 1 (sorting each column and b instead: ``_sorted_keys``), or nothing for a key
    ``presorted`` (its orders sorted and charged by ``refine``); per distinct (key, slot,
    set), 3 L (its bound U); per box, (s1 - 1) L (slot sum), L (query slot), L - 1 (max) and
    1 (decision)."""
    return _prove_shape(rows, masks, ms, groups)(n_live, presorted)


def _prove_shape(rows: Tensor, masks: Bool[Tensor, "boxes slots k"], ms: Tensor, groups):
    """``prove_key_flops`` as a function of the keys' live counts (it is linear in each) and
    of which keys are presorted; ``ms``: the keys' max tokens."""
    P = ms.numel()
    reduce, slot_sets, n_boxes = (torch.zeros(P, dtype=torch.int64) for _ in range(3))
    if rows.numel():
        set_at, slot_at = groups.set_at, groups.slot_at
        size = masks[set_at[:, 0], set_at[:, 1]].sum(dim=1)
        reduce.index_add_(0, rows[set_at[:, 0]], (size - 1).clamp(min=0))
        slot_sets.index_add_(0, rows[slot_at[:, 0]], torch.ones_like(slot_at[:, 0]))
        n_boxes.index_add_(0, rows, torch.ones_like(rows))
    return _ProveShape(reduce, ms.to(torch.int64), slot_sets, n_boxes, masks.shape[1])


@dataclass(frozen=True)
class _ProveShape:
    """Per key: the reductions R over its distinct sets, m, its distinct (slot, set)s and
    boxes; called with the live counts (and the presorted keys), ``prove``'s charge."""

    reduce: Tensor
    m: Tensor
    slot_sets: Tensor
    n_boxes: Tensor
    s1: int

    @property
    def sort(self) -> Tensor:
        """The keys whose set extremes cost less from sorted orders (``_sorted_keys``)."""
        return self.reduce > self.m

    def __call__(self, n_live: Tensor, presorted: Tensor | None = None) -> Tensor:
        L = n_live.to(torch.int64)
        ext = torch.minimum(self.reduce, self.m)
        if presorted is not None:
            ext = torch.where(presorted, 0, ext)
        boxes = self.n_boxes * (self.s1 + 1) * L
        return torch.where(L > 0, ext * (L + 1) + 3 * L * self.slot_sets + boxes, 0)


def prefers_orders(
    rows: Tensor, masks: Bool[Tensor, "boxes slots k"], ms: Tensor, groups: SetGroups
) -> Bool[Tensor, " keys"]:
    """The keys (max tokens ``ms``) whose prove boxes ``rows``, ``masks`` (grouped in
    ``groups``) take their sets' extremes from sorted orders (``_sorted_keys``)."""
    return _prove_shape(rows, masks, ms, groups).sort


def refute(
    t: Tables,
    rows: Int[Tensor, " boxes"],
    masks: Bool[Tensor, "boxes slots k"],
    witness: Int[Tensor, " boxes"],
    ops: Ops,
) -> Bool[Tensor, " boxes"]:
    """Claims (b) and (d) with x* = ``witness`` (must differ from m); only a live x* can hold
    (claim (c)), so a dead one is refused without cost. Cost: ``refute_flops`` for the live
    ones."""
    B = rows.numel()
    out = torch.zeros(B, dtype=torch.bool)
    cols = t.col[rows, witness]  # -1: x* is not live
    ok = torch.nonzero(cols >= 0, as_tuple=True)[0]
    if ok.numel() == 0:
        return out
    c, r, mk = cols[ok], rows[ok], masks[ok]
    h = _set_extreme(t.H[c], mk, False, ops)  # [b, slots]: min of H over S_p
    b_hi = _set_extreme(t.b[r], mk, True, ops)  # max of b_k over S_p
    L = slot_bounds(t.a[r], h, b_hi, t.D[c], ops)
    lb = ops.add(t.Fq[c], ops.sum(L, dim=1, label=LABEL), label=LABEL)
    out[ok] = ops.proven_positive(lb, label=LABEL)
    return out


def refute_flops(sizes: Int[Tensor, "boxes slots"]) -> int:
    """Ledger total of ``refute``: per box 2 (|S_p| - 1) per slot (the min of H, the max of
    b), 3 per slot (its bound L), the slot sum, the query slot and the decision."""
    B, s1 = sizes.shape
    return 2 * int((sizes - 1).clamp(min=0).sum()) + B * (3 * s1 + (s1 - 1) + 1 + 1)
