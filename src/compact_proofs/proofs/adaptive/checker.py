"""Adaptive proof: the trusted checker (stages 1-4 and the count).

Claim: ``run(weights, certificate, ops)`` returns ``correct`` and ``incorrect`` such that at least
``correct`` inputs are correct and at least ``incorrect`` inputs are incorrect (exact real forward
pass, ties wrong), whatever the certificate; when ``correct + incorrect == d_vocab**n_ctx`` the
correct count is exact.
Assumes: zero biases; the arithmetic model of ``core/rigorous.py``; python-flint's arb balls.
Proof:
  (1) Stage 1 (``keys.cubic_keys``): the cubic proof's verdicts; stage 2 (``keys.level1``,
      per output, mixed, or in the class form) proves more homogeneous keys with the same
      property, so by the cubic's counting argument every input of key (q, m, c >= 1) whose
      non-max tokens lie in the proven set K(q, m, c) is correct: sum_c C(n-1, c) N^c inputs,
      N = |K|, plus the c = 0 inputs the cubic proved.
  (1b) Stage 2b (``counts``): a counted prefix i = 1 .. i* of proven count keys of (q, m, c)
      adds the inputs with exactly i non-max tokens outside K(q, m, c), all correct by the
      count-key lemma; these sets are disjoint from each other and from (1).
  (2) Stage 3 (``singles.decide_c0``): listed c = 0 keys the cubic did not prove are refuted
      by the margin its exact evaluation found, or decided input by input.
  (3) Stage 4 (``tree``, ``boxes``, ``singles``): the leaves of the listed refinement trees are
      disjoint boxes outside (1) and (2) (``tree`` docstring); a leaf's claim counts only if it
      re-checks: prove (box bounds (a) and (c)), refute (box bound (b) at the witness; for a
      key without prove claims, from F at its witnesses only: ``boxes.witness_tables``),
      exact (a single input, decided as in (2)).
  (4) The sets counted in (1)-(3) are pairwise disjoint (the keys partition the inputs; (2) is
      c = 0, (3) has more than i* tokens outside K and c >= 1), so the counts add. The
      refuted sets (``incorrect``) are disjoint likewise, and from the correct ones.      QED
Cost: stage 1 ``CubicKeys.flops`` (``cubic.cubic_flops``); stage 2 ``keys.level1_flops``; stage 3
``singles.c0_flops``; stage 4 ``boxes.table_flops`` per (max token, queries) group (it depends
on the keys' numbers of live outputs) for keys with prove claims, ``witness_table_flops`` for
the others, plus ``prove_flops`` / ``refute_flops`` per leaf.
Reading, indexing and the bool set work of rebuilding the trees are free (paper rules).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import ProofPreconditionError
from compact_proofs.proofs.adaptive import boxes, counts, keys, plan, singles, tree
from compact_proofs.proofs.protocol import Certificate
from compact_proofs.weights import Weights

EXPAND_LIMIT = 1 << 24


@dataclass
class Outcome:
    """What the checker established, with builders of the per-input masks (small models)."""

    correct: int
    incorrect: int
    total: int
    details: dict[str, Any]
    covered: Callable[[], Bool[Tensor, " n_inputs"]] | None = None
    refuted: Callable[[], Bool[Tensor, " n_inputs"]] | None = None
    stage: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.correct + self.incorrect == self.total


def run(weights: Weights, certificate: Certificate, ops: Ops) -> Outcome:
    """The trusted check (module docstring)."""
    cfg = weights.config
    V, n = cfg.d_vocab, cfg.n_ctx
    pl = plan.parse(certificate, V)
    ck = keys.cubic_keys(weights, ops, pl.thresholds, pl.routes)  # (1) stage 1
    proven = ck.proven.clone()
    cubic_correct = keys.count_covered(keys.key_counts(proven), ck.proven0)
    l1, l1c, cnt = pl.l1_keys, pl.l1_class_keys, pl.count_keys
    for name, ks in (("l1_keys", l1), ("l1_class_keys", l1c)):
        if ks.shape[0] and not bool(keys.valid_keys(ks, V, n).all()):
            raise ProofPreconditionError(f"an {name} entry is not a valid key (q, m, k, c)")
    if l1c.shape[0] and V < 3:
        raise ProofPreconditionError("l1_class_keys need d_vocab >= 3")
    if cnt.shape[0] and not bool(counts.valid(cnt, V, n).all()):
        raise ProofPreconditionError("a count_keys entry is not a valid count key (q, m, c, i)")
    sel, sel_c = keys.unproven(l1, proven), keys.unproven(l1c, proven)
    todo, todo_c = l1[sel], l1c[sel_c]
    ok, ok_c = keys.level1(ck, todo, todo_c, ops, pl.l1_outputs[sel])  # (1) stage 2
    for ks, good in ((todo, ok), (todo_c, ok_c)):
        proven[ks[good, 0], ks[good, 1], ks[good, 2], ks[good, 3]] = True
    N = keys.key_counts(proven)
    correct = keys.count_covered(N, ck.proven0)
    tops = counts.position_tops(ck.EQKP_s, ops) if cnt.shape[0] else None
    cnt_ok = counts.evaluate(ck, tops, proven, cnt, ops)  # (1) stage 2b
    istar = counts.prefix(cnt, cnt_ok, V, n)
    correct += counts.covered(istar, N)
    ops.ledger.add(int_op=int(ok.sum()) + int(ok_c.sum()) + V * V * (n - 1), label="adaptive:count")
    circ = ck.circ
    tabs = (ck.EQKE_s, ck.EQKP_s, circ.EUPU, circ.EVOU, circ.PVOU)
    exact = singles.ExactDecider(weights)
    # (2) stage 3: c = 0 keys, input by input
    c0 = pl.c0
    if c0.shape[0]:
        q0, m0 = c0.unbind(1)
        if not bool(((q0 >= 0) & (q0 <= m0) & (m0 < V)).all()):
            raise ProofPreconditionError("a c0 entry is not a key (q, m) with q <= m < d_vocab")
        if (q0 * V + m0).unique().numel() != c0.shape[0]:
            raise ProofPreconditionError("duplicate c0 entries in the certificate")
        c0 = c0[~ck.proven0[q0, m0]]
    c0_tokens = singles.c0_tokens(c0[:, 0], c0[:, 1], n)
    c0_verdict = singles.decide_c0(c0[:, 0], c0[:, 1], ck.margin0, tabs, exact, ops)
    correct += int((c0_verdict == 1).sum())
    incorrect = int((c0_verdict == -1).sum())
    # (3) stage 4: refinement trees
    nodes = tree.build(pl.roots, proven, istar, pl.split_parent, pl.split_slot, pl.split_mask)
    claim = torch.where(nodes.leaf, pl.claim, torch.zeros_like(pl.claim))
    if bool((pl.claim[~nodes.leaf] != plan.NONE).any()):
        raise ProofPreconditionError("a split node carries a claim (claims belong to leaves)")
    sizes = nodes.sizes
    nonempty = (sizes > 0).all(dim=1)
    verdict = torch.zeros(nodes.q.shape[0], dtype=torch.int64)
    if not bool(((pl.own_E >= 0) & (pl.own_E < V)).all()):
        raise ProofPreconditionError("an own_E entry is not a token")
    _check_boxes(nodes, claim, pl.witness, pl.own_E, nonempty, ck, ops, verdict)
    single = (sizes == 1).all(dim=1)
    ex = torch.nonzero((claim == plan.EXACT) & single, as_tuple=True)[0]
    if ex.numel():
        toks = _single_tokens(nodes, ex)
        verdict[ex] = singles.decide(toks, tabs, exact, ops)
    won = torch.nonzero(verdict == 1, as_tuple=True)[0]
    lost = torch.nonzero(verdict == -1, as_tuple=True)[0]
    ops.ledger.add(int_op=(won.numel() + lost.numel()) * n, label="adaptive:count")
    correct += sum(math.prod(r) for r in sizes[won].tolist())  # exact ints
    incorrect += sum(math.prod(r) for r in sizes[lost].tolist())
    won, lost = won.tolist(), lost.tolist()
    details = {
        "cubic_correct": cubic_correct,
        "level1_proven": int(ok.sum()) + int(ok_c.sum()),
        "level1_checked": int(todo.shape[0]) + int(todo_c.shape[0]),
        "count_keys_proven": int(cnt_ok.sum()),
        "count_keys_counted": int(istar.sum()),
        "c0_decided": int((c0_verdict != 0).sum()),
        "leaves": int(nodes.leaf.sum()),
        "leaves_proven": len(won),
        "leaves_refuted": len(lost),
        "proven_incorrect": incorrect,
        "exact": correct + incorrect == cfg.n_inputs,
    }
    out = Outcome(correct=correct, incorrect=incorrect, total=cfg.n_inputs, details=details)
    if cfg.n_inputs <= EXPAND_LIMIT:
        out.covered = lambda: _mask(
            V, n, (proven, ck.proven0, istar), c0_tokens[c0_verdict == 1], nodes, won
        )
        out.refuted = lambda: _mask(V, n, None, c0_tokens[c0_verdict == -1], nodes, lost)
    return out


def _check_boxes(nodes, claim, witness, own_E, nonempty, ck, ops, verdict) -> None:
    """Re-check the prove / refute claims of non-empty leaves, with the tables of their keys."""
    circ = ck.circ
    want = ((claim == plan.PROVE) | (claim == plan.REFUTE)) & nonempty
    if not bool(want.any()):
        return
    rq = (claim == plan.REFUTE) & want
    if bool((witness[rq] == nodes.m[rq]).any()) or bool(
        ((witness[rq] < 0) | (witness[rq] >= circ.EVOU.shape[1])).any()
    ):
        raise ProofPreconditionError("a refute claim needs a witness output x != m in range")
    idx = torch.nonzero(want, as_tuple=True)[0]
    V = circ.EVOU.shape[0]
    # Keys (q, m) with a prove claim get the full tables (claim (c)); the others only F at
    # their refute claims' witnesses.
    code = nodes.m[idx] * V + nodes.q[idx]
    full = torch.isin(code, code[claim[idx] == plan.PROVE])
    _check_with_tables(nodes, claim, witness, own_E, ck, ops, verdict, idx[full])
    _check_refutations(nodes, witness, ck, ops, verdict, idx[~full])


def _check_with_tables(nodes, claim, witness, own_E, ck, ops, verdict, idx) -> None:
    """The claims of the leaves ``idx``, with the tables of their keys (``boxes.tables``)."""
    circ = ck.circ
    V, n = circ.EVOU.shape[0], circ.PVOU.shape[0]
    # The keys (q, m) of the leaves, by max token, then query; their tables in a few batches.
    codes, pair = torch.unique(nodes.m[idx] * V + nodes.q[idx], return_inverse=True)
    ms, qs = codes // V, codes % V
    own = torch.isin(ms, own_E)  # E per key (else shared by the max token's keys): both sound
    for lo, hi in boxes.batches(ms, n, V):
        inb = (pair >= lo) & (pair < hi)
        sel, rows = idx[inb], pair[inb] - lo
        t = boxes.tables(qs[lo:hi], ms[lo:hi], own[lo:hi], *boxes.table_inputs(ck), ops)
        masks = nodes.masks[sel, :, : t.H.shape[1]]
        pr = claim[sel] == plan.PROVE
        if bool(pr.any()):
            groups = boxes.distinct(rows[pr], masks[pr])  # shared by the next three
            use = boxes.use_exact_bound(t.n_live, t.ms, n, rows[pr], masks[pr], t.qs, groups)
            sort = boxes.prefers_orders(rows[pr], masks[pr], t.ms, groups)
            t = boxes.refine(t, use, ops, sort)
            verdict[sel[pr]] = boxes.prove(t, rows[pr], masks[pr], ops, groups).to(torch.int64)
        if bool((~pr).any()):
            rf = boxes.refute(t, rows[~pr], masks[~pr], witness[sel[~pr]], ops)
            verdict[sel[~pr]] = -rf.to(torch.int64)


def _check_refutations(nodes, witness, ck, ops, verdict, idx) -> None:
    """The refute claims of the leaves ``idx``, with F at their witnesses only
    (``boxes.witness_tables``), a few keys at a time."""
    if idx.numel() == 0:
        return
    circ = ck.circ
    V, n = circ.EVOU.shape[0], circ.PVOU.shape[0]
    code = nodes.m[idx] * V + nodes.q[idx]
    cols = torch.unique(code * V + witness[idx])  # (key, witness), by key, then witness
    codes, col_key = torch.unique(cols // V, return_inverse=True)
    leaf_key = torch.searchsorted(codes, code)
    for lo, hi in boxes.witness_batches(torch.bincount(col_key), codes // V, n):
        on = (col_key >= lo) & (col_key < hi)
        t, flops = boxes.witness_tables(
            codes[lo:hi] % V,
            codes[lo:hi] // V,
            col_key[on] - lo,
            cols[on] % V,
            *boxes.table_inputs(ck),
        )
        ops.ledger.add(flops, label=boxes.LABEL)
        leaves = (leaf_key >= lo) & (leaf_key < hi)
        sel = idx[leaves]
        masks = nodes.masks[sel, :, : t.H.shape[1]]
        rf = boxes.refute(t, leaf_key[leaves] - lo, masks, witness[sel], ops)
        verdict[sel] = -rf.to(torch.int64)


def _single_tokens(nodes: tree.Nodes, idx: Tensor) -> Tensor:
    """Tokens of single-input boxes: slot tokens, then the query."""
    slot_tok = nodes.masks[idx].to(torch.int64).argmax(dim=2)  # the one token of each slot
    return torch.cat([slot_tok, nodes.q[idx][:, None]], dim=1)


def _mask(V, n, key_state, extra_tokens, nodes, leaves) -> Tensor:
    """Inputs (paper index order) covered by the keys (if given), ``extra_tokens`` and the boxes
    of ``leaves``."""
    total = V**n
    powers = V ** torch.arange(n, dtype=torch.int64)
    out = torch.zeros(total, dtype=torch.bool)
    if key_state is not None:
        for start in range(0, total, 1 << 20):
            idx = torch.arange(start, min(total, start + (1 << 20)), dtype=torch.int64)
            tok = (idx[:, None] // powers) % V
            out[idx] = _key_covered(tok, *key_state)
    if extra_tokens.numel():
        out[(extra_tokens * powers).sum(dim=1)] = True
    for i in leaves:
        sets = [torch.nonzero(nodes.masks[i, p], as_tuple=True)[0] for p in range(n - 1)]
        grid = torch.cartesian_prod(*sets, nodes.q[i : i + 1]).reshape(-1, n)
        out[(grid * powers).sum(dim=1)] = True
    return out


def _key_covered(tok: Tensor, proven: Tensor, proven0: Tensor, istar: Tensor) -> Tensor:
    """Stage 1-2b coverage: c = 0 by proven0, else at most i*(q, m, c) non-max tokens whose
    key is unproven."""
    q, m = tok[:, -1], tok.max(dim=1).values
    others = tok[:, :-1]
    nonmax = others < m[:, None]
    c = nonmax.sum(dim=1)
    bad = nonmax & ~proven[q[:, None], m[:, None], others, c[:, None]]
    return torch.where(c == 0, proven0[q, m], bad.sum(dim=1) <= istar[q, m, c])
