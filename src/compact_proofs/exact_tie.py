"""Exact decision of near-ties with python-flint: exact rationals plus Lindemann-Weierstrass.

For an input t (query q = t[n-1], max m) and a wrong logit x, with exact real weights,

    Z (logit(m) - logit(x)) = sum_p d_p exp(r_p / sqrt(d_head)),
    d_p = A[q, p, t_p, m] - A[q, p, t_p, x]      (rational: sums of products of float32 values)
    r_p = (E[q] + P[n-1]) W_Q W_K^T (E[t_p] + P[p])^T   (rational),

and Z > 0, so the sign of the logit difference is the sign of this exponential sum.

Claim: group the terms by equal r_p and let c_g be the sum of the d_p in group g. The sum is
exactly zero iff every c_g is zero; otherwise evaluating it in ball arithmetic (arb) at doubling
precision eventually yields a ball excluding zero, which gives its sign.
Proof: the s_g = r_g / sqrt(d_head) are distinct real algebraic numbers, so by the
Lindemann-Weierstrass theorem (Baker's form: e^{s_1}, ..., e^{s_k} are linearly independent over
the algebraic numbers for distinct algebraic s_i) sum_g c_g e^{s_g} = 0 with rational c_g forces
every c_g = 0; the converse is trivial. If some c_g != 0 the sum is a nonzero real, and arb balls
contain the exact value with radii -> 0 as the precision grows, so the loop terminates.   QED
"""

from dataclasses import dataclass, field

from flint import arb, ctx, fmpq, fmpq_mat

from compact_proofs.weights import Weights

MAX_PREC = 1 << 16  # bits; never reached for a nonzero sum of reasonable size


def _to_fmpq_mat(t) -> fmpq_mat:
    rows = t.double().tolist()  # float32 -> float64 is exact, and so is as_integer_ratio
    return fmpq_mat(len(rows), len(rows[0]), [fmpq(*x.as_integer_ratio()) for r in rows for x in r])


def _row(mat: fmpq_mat, i: int) -> list:
    return [mat[i, j] for j in range(mat.ncols())]


def sign_of_exp_sum(coeffs, exponents, d_head: int, max_prec: int = MAX_PREC) -> int | None:
    """Exact sign of ``sum_i coeffs[i] * exp(exponents[i] / sqrt(d_head))``.

    Args:
        coeffs: rationals (``fmpq`` or ints).
        exponents: rationals r_i (the exponent is r_i / sqrt(d_head)).
        d_head: a positive integer.
        max_prec: give up (return None) beyond this many bits; never reached for nonzero sums of
            moderate size.

    Returns:
        -1, 0 or +1 (0 exactly when the sum is zero), or None if ``max_prec`` was exhausted.
    """
    groups: dict = {}
    for c, r in zip(coeffs, exponents, strict=True):
        r = fmpq(r)
        groups[r] = groups.get(r, fmpq(0)) + fmpq(c)
    terms = [(c, r) for r, c in groups.items() if c != 0]
    if not terms:
        return 0
    if len(terms) == 1:
        return 1 if terms[0][0] > 0 else -1
    prec = 64
    while prec <= max_prec:
        with ctx.workprec(prec):
            root = arb(d_head).sqrt()
            total = arb(0)
            for c, r in terms:
                total += arb(c) * (arb(r) / root).exp()
            if total > 0:
                return 1
            if total < 0:
                return -1
        prec *= 2
    return None


@dataclass
class ExactModel:
    """The weights as exact rationals, with per-(q, p, token) rows computed on demand and cached."""

    weights: Weights
    E: fmpq_mat = field(init=False)
    P: fmpq_mat = field(init=False)
    QK: fmpq_mat = field(init=False)  # W_Q W_K^T   [d, d]
    VO: fmpq_mat = field(init=False)  # W_V W_O     [d, d]
    U: fmpq_mat = field(init=False)  # W_U         [d, V]
    _q_rows: dict = field(default_factory=dict, init=False)
    rows_cache: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        w = self.weights
        self.E, self.P, self.U = _to_fmpq_mat(w.W_E), _to_fmpq_mat(w.W_pos), _to_fmpq_mat(w.W_U)
        self.QK = _to_fmpq_mat(w.W_Q) * _to_fmpq_mat(w.W_K).transpose()
        self.VO = _to_fmpq_mat(w.W_V) * _to_fmpq_mat(w.W_O)
        self.n = int(w.W_pos.shape[0])
        self.d_head = int(w.W_Q.shape[1])

    def _resid(self, p: int, tok: int) -> fmpq_mat:
        d = self.E.ncols()
        return fmpq_mat(1, d, [self.E[tok, i] + self.P[p, i] for i in range(d)])

    def _query(self, q: int) -> tuple:
        """(E_q[q] W_Q W_K^T as a d x 1 column transposed, E_q[q] as a row) for query token q."""
        if q not in self._q_rows:
            eq = self._resid(self.n - 1, q)
            self._q_rows[q] = ((eq * self.QK).transpose(), eq)
        return self._q_rows[q]

    def row(self, q: int, p: int, tok: int) -> tuple:
        """(exact unscaled score r, [A[q, p, tok, x] for every x]) of key token ``tok`` at ``p``."""
        key = (q, p, tok)
        if key not in self.rows_cache:
            qk_col, eq = self._query(q)
            res = self._resid(p, tok)
            r = (res * qk_col)[0, 0]
            A = (eq + res * self.VO) * self.U
            self.rows_cache[key] = (r, _row(A, 0))
        return self.rows_cache[key]

    def verdict(self, tokens: list[int], xs: list[int]) -> int:
        """+1 if logit(m) > logit(x) for every x in ``xs``, -1 if some is smaller, 0 if the
        smallest difference is exactly zero (a tie) or undecidable within ``MAX_PREC``."""
        worst = 1
        q, m = tokens[-1], max(tokens)
        rows = [self.row(q, p, t) for p, t in enumerate(tokens)]
        exps = [r for r, _ in rows]
        for x in xs:
            s = sign_of_exp_sum([A[m] - A[x] for _, A in rows], exps, self.d_head)
            if s == -1:
                return -1
            if s is None or s == 0:
                worst = 0
        return worst


def exact_cost(n: int, d: int, V: int, n_rows: int, n_terms: int) -> int:
    """Arithmetic operations charged for the exact stage: ``n_rows`` new cached rows (resid, score,
    value row) and ``n_terms`` (input, x) sign decisions (n subtractions, grouping, and at most
    2n operations per arb evaluation counted once)."""
    per_row = d + d * (2 * d - 1) + (2 * d - 1) + d * (2 * d - 1) + d + V * (2 * d - 1)
    return n_rows * per_row + n_terms * (n + 3 * n)
