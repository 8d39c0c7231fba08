"""The adaptive proof: exact per-input verdicts on small models (every input proven correct or
proven incorrect, matching an independent truth), the anytime (budget) mode never over-claims and
respects its budget, FLOPs equal the closed form, and a bad certificate only loses coverage or is
rejected."""

import dataclasses
import time

import models
import pytest
import torch

from compact_proofs import exact
from compact_proofs.core.rigorous import Approx, Ops
from compact_proofs.errors import ProofPreconditionError, UserError
from compact_proofs.proofs import adaptive, cubic
from compact_proofs.proofs.adaptive import boxes, checker, counts, keys, plan, searcher, singles
from compact_proofs.proofs.cubic import cases, pessimize

SMALL = ["trained-V8-K3", "random-V6-K4-sharp", "planted-V8-K4-noisy", "neartie-planted-V7-K4"]


def _recording_ops(scratch: list) -> type[Ops]:
    """An ``Ops`` that appends every instance to ``scratch`` (to read the ledgers of the
    scratch ``Ops`` a module creates, once monkeypatched in)."""

    class Recording(Ops):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            scratch.append(self)

    return Recording


def _run(w, cert):
    ops = Ops()
    out = checker.run(w, cert, ops)
    return out, ops.ledger


@pytest.mark.parametrize("model_name", list(models.CATALOGUE))
def test_exact_input_by_input(model_name, soundness_model):
    """Every input is proven correct or proven incorrect, exactly as the independent truth says;
    the ledger equals the closed form (plus the exact stage's own charge)."""
    w, truth = soundness_model(model_name)
    cert = adaptive.search(w)
    out, ledger = _run(w, cert)
    assert out.exact and out.details["exact"]
    assert out.correct == int(truth.sum())
    assert out.incorrect == int((~truth).sum())
    assert torch.equal(out.covered(), truth)
    assert torch.equal(out.refuted(), ~truth)
    assert ledger.flop - ledger.by_label.get("adaptive:exact", 0) == cert["predicted"]


@pytest.mark.parametrize("model_name", SMALL)
def test_search_tree_is_the_one_the_checker_rebuilds(model_name, soundness_model):
    """The search predicts the check's FLOPs from its own tree (``_Tree.nodes``): node for node
    (query, max, sets, sizes, leaves), it is what ``tree.build`` rebuilds from the certificate."""
    w, _ = soundness_model(model_name)
    st = searcher.explore(w)
    cert = searcher.for_budget(w.config, st, None)
    built = checker.tree.build(
        cert["roots"],
        st.proven,
        st.istar,
        cert["split_parent"],
        cert["split_slot"],
        cert["split_mask"],
    )
    mine = st.tr.nodes()
    assert cert["split_parent"].numel() > 0 or model_name == "trained-V8-K3"
    for name in ("q", "m", "masks", "sizes", "leaf"):
        assert torch.equal(getattr(mine, name), getattr(built, name)), name


def test_check_in_small_batches(soundness_model, monkeypatch):
    """With small table batches (a few keys each: ``boxes.batches``, ``boxes.witness_batches``)
    the check counts the same inputs at the same FLOPs."""
    w, truth = soundness_model("random-V9-K4-perkey")
    cert = adaptive.search(w)
    out, ledger = _run(w, cert)
    monkeypatch.setattr(boxes, "TABLE_ELEMENTS", 200)
    ranges, batches = [], boxes.witness_batches

    def witness_batches(*args):
        ranges.append(batches(*args))
        return ranges[-1]

    monkeypatch.setattr(boxes, "witness_batches", witness_batches)
    small, small_ledger = _run(w, cert)
    assert len(ranges) == 1 and len(ranges[0]) > 1
    expected = (int(truth.sum()), int((~truth).sum()))
    assert (small.correct, small.incorrect) == (out.correct, out.incorrect) == expected
    assert small_ledger.flop == ledger.flop


def test_strategy_verdict_matches_exact_evaluator():
    """Through the Strategy protocol, against ``exact.correct_mask`` (the brute-force evaluator)."""
    w = models.trained_weights(10, 4, seed=2, steps=60)
    verdict = adaptive.STRATEGY.check(w, adaptive.STRATEGY.search(w), Ops())
    mask = exact.correct_mask(w)
    assert verdict.correct_count == int(mask.sum())
    assert torch.equal(verdict.expand(), mask)


def test_refines_beyond_the_cubic_proof(soundness_model):
    w, truth = soundness_model("planted-V8-K4-noisy")
    out, _ = _run(w, adaptive.search(w))
    assert out.details["cubic_correct"] < out.correct == int(truth.sum())
    assert out.details["leaves_proven"] > 0 and out.details["leaves_refuted"] > 0


@pytest.mark.parametrize("model_name", SMALL)
@pytest.mark.parametrize("frac", [0.0, 0.2, 0.6, 1.0])
def test_budget_never_overclaims_and_fits(model_name, frac, soundness_model):
    w, truth = soundness_model(model_name)
    base = searcher.stage1(w).flops
    full = adaptive.search(w)["predicted"]
    budget = base + int(frac * (full - base))
    cert = searcher.search(w, budget=budget)
    out, ledger = _run(w, cert)
    assert ledger.flop <= budget  # exact near-tie decisions included
    cov = out.covered()
    assert int(cov.sum()) == out.correct <= int(truth.sum())
    assert not bool((cov & ~truth).any())
    assert out.correct >= out.details["cubic_correct"]


@pytest.mark.parametrize("model_name", ["neartie-planted-V7-K4", "neartie-c0-V6-K4"])
def test_exact_charge_bound_covers_the_exact_decisions(model_name, soundness_model):
    """The search's bound on the exact (python-flint) stage of the full certificate is at least
    what the check charges for it, on models with near-ties."""
    w, _ = soundness_model(model_name)
    st = searcher.explore(w)
    _, ledger = _run(w, searcher.for_budget(w.config, st, None))
    charged = ledger.by_label.get("adaptive:exact", 0)
    assert 0 < charged <= searcher._exact_charge_bound(w.config, st)


@pytest.mark.parametrize("model_name", ["planted-V8-K4-noisy", "random-V9-K4-perkey"])
def test_budget_items_cost_what_their_rows_alone_cost(model_name, soundness_model):
    """The greedy prices each level-1 group as ``keys.level1_flops`` of its rows alone and each
    box package as its tables plus its prove claims alone (here recomputed one by one)."""
    from compact_proofs.proofs.adaptive import budget

    w, _ = soundness_model(model_name)
    st = searcher.explore(w, level1_in_box_pairs=True)  # as budgets fit it
    V, n = w.config.d_vocab, w.config.n_ctx
    items = budget._items(w.config, st)
    assert any(k[0] == "l1" for k in items) and any(k[0] == "box" for k in items)
    sizes = st.tr.masks.sum(dim=2)
    assert torch.equal(st.tr.sizes, sizes)  # the search keeps them split by split
    for key, it in items.items():
        if key[0] == "l1":
            rows, crows = it["rows"], it["class_rows"]
            want = keys.level1_flops(st.ck, st.l1[rows], st.l1c[crows], st.l1_out[rows])
        elif key[0] == "box":
            _, q, m = key
            L, L_exact = st.tr.live[q, m, :1], st.tr.live[q, m, 1:2]
            own = int(bool((st.tr.own_E == m).any()))
            want = boxes.table_flops(m, 1, n, V, int(L), int(q < m), own)
            screen, high = st.tr.live[q, m, 2:].tolist()
            want += int(boxes.high_flops(m + 1, screen, high, q < m))
            rows = torch.zeros(len(it["rows"]), dtype=torch.int64)
            want += boxes.prove_claims_flops(
                L, L_exact, m, n, rows, st.tr.masks[it["rows"]], torch.tensor([q])
            )
            assert it["gain"] == sum(int(r.prod()) for r in sizes[it["rows"]])
        else:
            continue
        assert it["cost"] == want, key


def test_box_pairs_skip_level1_unless_a_budget_leaves_out_boxes(soundness_model):
    """At n_ctx = 4 the unbudgeted certificate has no level-1 key in a pair (q, m) with box
    roots, and is still exact; a budget too small for everything is fitted from the
    exploration that keeps them."""
    from compact_proofs.proofs.adaptive import budget

    w, truth = soundness_model("planted-V8-K4-noisy")
    cfg = w.config
    st = searcher.explore(w)
    assert st.for_fit is not None and st.for_fit() is st.for_fit()  # explored once

    def pairs(*tensors):
        return {tuple(r) for t in tensors for r in t[:, :2].tolist()}

    full = searcher.for_budget(cfg, st, None)
    boxed = pairs(full["roots"])
    assert boxed and not boxed & pairs(full["l1_keys"], full["l1_class_keys"])
    kept = st.for_fit()
    assert pairs(kept.l1, kept.l1c) & pairs(kept.roots)  # there were keys to leave out
    out, _ = _run(w, full)
    assert out.correct == int(truth.sum()) and out.details["exact"]
    tight = (st.ck.flops + full["predicted"]) // 2
    cert = searcher.for_budget(cfg, st, tight)
    fitted = budget.fit(cfg, kept, tight)
    assert cert.keys() == fitted.keys()
    for name, value in cert.items():
        assert torch.equal(value, fitted[name]) if torch.is_tensor(value) else value == fitted[name]
    assert _run(w, cert)[1].flop <= tight


def test_budget_below_the_cubic_cost_gives_the_cubic_bound(soundness_model):
    w, _ = soundness_model("planted-V8-K4-noisy")
    out, _ = _run(w, searcher.search(w, budget=1))
    cub = cubic.check(w, {}, Ops()).correct_count
    assert out.correct == cub == out.details["cubic_correct"]


@pytest.mark.parametrize("model_name", SMALL)
def test_stage1_with_its_own_thresholds_decides_the_same(model_name, soundness_model):
    """Given the screen thresholds its own search finds (certificate field ``screen_j``), stage 1
    runs one screen test per pair and decides every key as without them, at the FLOPs
    ``keys.with_own_hints`` predicts; other thresholds (valid, but not the search's) only
    move keys between the screen and the per-triple tests, which prove the screen's keys too
    (cubic docstring; up to rounding, and exactly on these models), and nothing beyond the
    truth is counted."""
    w, truth = soundness_model(model_name)
    free_ops, hinted_ops = Ops(), Ops()
    free = keys.cubic_keys(w, free_ops)
    hinted = keys.cubic_keys(w, hinted_ops, free.thresholds, free.routes)
    assert torch.equal(hinted.proven, free.proven) and torch.equal(hinted.proven0, free.proven0)
    assert torch.equal(hinted.thresholds, free.thresholds)
    predicted = keys.with_own_hints(free, w.config)
    assert hinted_ops.ledger.flop == hinted.flops == predicted.flops
    assert hinted.tiers == predicted.tiers
    assert hinted.flops < free.flops or free.tiers.mid_tests + free.tiers.last_tests == 0
    # The certificate's shorter form (one row for a triple's skipped keys) reads back the same.
    short = keys.certificate_routes(free)
    assert short.shape[0] <= free.routes.shape[0]
    short_ops = Ops()
    again = keys.cubic_keys(w, short_ops, free.thresholds, short)
    assert torch.equal(again.proven, free.proven) and short_ops.ledger.flop == hinted.flops
    V = w.config.d_vocab
    m = torch.arange(V)[None, :].expand(V, V)
    q = torch.arange(V)[:, None].expand(V, V)
    for j in (m.clone(), torch.zeros(V, V, dtype=torch.int64), (m + 1) // 2):
        j[q > m] = 0
        other = keys.cubic_keys(w, Ops(), j)
        assert torch.equal(other.proven0, free.proven0)
        assert torch.equal(other.proven, free.proven)
        out = checker.run(w, {"screen_j": j}, Ops())
        assert not bool((out.covered() & ~truth).any())
    # Other routes for every key the screen leaves: each test alone, or none.
    n = w.config.n_ctx
    g = torch.Generator().manual_seed(V)
    for route in (1, 2, 3, None):
        leftover = torch.nonzero(
            (torch.arange(V)[None, None, :] >= free.thresholds[:, :, None])
            & (torch.arange(V)[None, None, :] < torch.arange(V)[None, :, None])
            & (torch.arange(V)[:, None, None] <= torch.arange(V)[None, :, None])
        )  # (q, m, k) with j <= k < m
        rows = [
            [qq, mm, kk, c, route or int(torch.randint(1, 4, (1,), generator=g))]
            for qq, mm, kk in leftover.tolist()
            for c in range(1, n)
            if c <= n - 2 or qq == mm
        ]
        routes = torch.tensor(rows, dtype=torch.int64).reshape(-1, 5)
        other = keys.cubic_keys(w, Ops(), free.thresholds, routes)
        assert not bool((other.proven & ~free.proven).any())  # no test proves more
        if route == 3:  # only the screen's keys k < j are proven
            by_screen = torch.arange(V)[None, None, :, None] < free.thresholds[:, :, None, None]
            assert torch.equal(other.proven, free.proven & by_screen)
        out = checker.run(w, {"screen_j": free.thresholds, "cubic_routes": routes}, Ops())
        assert not bool((out.covered() & ~truth).any())


def test_budget_at_the_cubic_cost_skips_the_exploration(soundness_model, monkeypatch):
    w, _ = soundness_model("planted-V8-K4-noisy")
    cfg = w.config
    base = searcher.stage1(w).flops  # stage 1 with its own screen thresholds
    assert base < keys.cubic_keys(w, Ops()).flops  # (which save screen tests)
    explored = searcher.for_budget(cfg, searcher.explore(w), base)
    monkeypatch.setattr(searcher, "explore", lambda _: pytest.fail("explored"))
    cert = searcher.search(w, budget=base)
    out, ledger = _run(w, cert)
    assert out.correct == _run(w, explored)[0].correct == out.details["cubic_correct"]
    assert ledger.flop == cert["predicted"] == base and cert["budget"] == base


def test_one_prove_call_explores_each_model_once(soundness_model, monkeypatch):
    """The unbudgeted search and the budgets of one ``prove`` call share one exploration, with
    the same results as separate searches; outside a call nothing is kept."""
    from compact_proofs import api

    w, _ = soundness_model("planted-V8-K4-noisy")
    names = ["adaptive", "adaptive-budget-1e5", "adaptive-budget-1e9"]
    alone = [api.prove(w, name)[0] for name in names]
    calls = []
    explore = searcher.explore

    def slow_explore(*args, **kwargs):  # 0.2 s longer: every search reports it, as if alone
        calls.append(kwargs)
        time.sleep(0.2)
        return explore(*args, **kwargs)

    monkeypatch.setattr(searcher, "explore", slow_explore)
    together = api.prove(w, names)
    # once, and once more with level 1 in the box pairs for the budget too small for boxes
    assert calls == [{}, {"level1_in_box_pairs": True}]
    for a, b in zip(alone, together, strict=True):
        assert (a.strategy, a.correct_count, a.flops) == (b.strategy, b.correct_count, b.flops)
        assert b.search_seconds >= 0.2
    assert alone[1].correct_count < alone[0].correct_count  # the budget did bind
    searcher.search(w)
    assert len(calls) == 3


def test_empty_certificate_is_the_cubic_proof(soundness_model):
    w, _ = soundness_model("trained-V10-K4-partial")
    out, ledger = _run(w, {})
    cfg = w.config
    v = cubic.check(w, {}, Ops())
    assert out.correct == v.correct_count
    tiers = cases.Tiers.from_details(v.details)
    assert ledger.flop == cubic.cubic_flops(cfg.d_vocab, cfg.n_ctx, cfg.d_model, cfg.d_head, tiers)


def test_budget_names():
    s = adaptive.strategy_for_name("adaptive-budget-3e7")
    assert s is not None and s.name == "adaptive-budget-3e7"
    assert adaptive.strategy_for_name("adaptive-budget-1000").name == "adaptive-budget-1000"
    assert adaptive.strategy_for_name("adaptive") is adaptive.STRATEGY
    assert adaptive.strategy_for_name("adaptive-budget-x") is None
    assert adaptive.strategy_for_name("cubic") is None
    assert adaptive.strategy_for_name("adaptive-budget-2.5e6").name == "adaptive-budget-2.5e6"
    assert adaptive.budget_of("adaptive-budget-2.5e6") == 2_500_000
    assert adaptive.budget_of("adaptive-budget-1e18") == 10**18 == adaptive.MAX_BUDGET
    assert adaptive.budget_of("adaptive") is None
    # Not a whole number of FLOPs from 1 to 1e18: refused with the reason, not "unknown".
    for bad in ("2.5", "1e-3", "0", "-5", "1e400", "1000000000000000001"):
        with pytest.raises(UserError, match=f"whole number from 1 to 1e18, got {bad}"):
            adaptive.strategy_for_name(f"adaptive-budget-{bad}")
    assert {s.name for s in adaptive.BUDGET_STRATEGIES} == {
        "adaptive-budget-2e7",
        "adaptive-budget-3e7",
        "adaptive-budget-1e8",
    }


# ------------------------------------------------------------------ the lemmas, on their own
@pytest.mark.parametrize("high", [True, False])
def test_box_bound_against_enumeration(high, monkeypatch):
    """Claims (a) and (b) of ``boxes`` on random boxes of a random model: a proven box holds only
    correct inputs, a refuted one only incorrect inputs; both fire (with and without claim
    (e)'s second key screen; without it, the exact key bound drops outputs)."""
    if not high:
        monkeypatch.setattr(boxes, "HIGH_MAX", 0)
    w = models.planted_weights(7, 4, noise=0.08, pos_noise=0.3, seed=2)
    V, n = 7, 4
    truth = models.truth_mask(w)
    ops = Ops()
    ck = keys.cubic_keys(w, ops)
    g = torch.Generator().manual_seed(0)
    fired = {"prove": 0, "refute": 0, "dropped": 0}
    powers = V ** torch.arange(n)
    for m in range(1, V):
        qs = torch.arange(m + 1)
        t = boxes.tables(qs, qs * 0 + m, qs < 0, *boxes.table_inputs(ck), ops)
        B = 40
        rows = torch.randint(0, m + 1, (B,), generator=g)
        masks = torch.rand(B, n - 1, m + 1, generator=g) < 0.4
        masks[..., m] = False
        is_max = torch.rand(B, n - 1, generator=g) < 0.4
        is_max[rows < m, 0] |= ~is_max[rows < m].any(dim=1)  # q < m needs a max slot
        masks[is_max] = False
        masks[is_max, m] = True
        masks[~is_max, torch.randint(0, m, (1,), generator=g)] |= True  # non-empty
        wit = torch.randint(0, V - 1, (B,), generator=g)
        wit = wit + (wit >= m).long()  # x* != m
        proven = boxes.prove(t, rows, masks, ops)
        # The exact key bound (claim (c), exact form) on every query: it drops only dead
        # outputs (some here), so it never loses a proof; the proofs it may add are checked
        # below with the others.
        refined = boxes.refine(t, torch.ones(m + 1, dtype=torch.bool), ops)
        assert bool((refined.n_live <= t.n_live).all())
        sharp = boxes.prove(refined, rows, masks, ops)
        assert bool((sharp | ~proven).all())
        fired["dropped"] += int((t.n_live - refined.n_live).sum())
        proven = sharp
        # The same boxes with every output x != m live: the key-level pruning never loses a
        # proof, and proves the same boxes here.
        every = _every_output_but_m(m, qs, ck, monkeypatch)
        assert torch.equal(boxes.prove(every, rows, masks, ops), proven)
        refuted = boxes.refute(t, rows, masks, wit, ops)
        assert torch.equal(boxes.refute(every, rows, masks, wit, ops), refuted)
        for b in range(B):
            sets = [torch.nonzero(masks[b, p], as_tuple=True)[0] for p in range(n - 1)]
            grid = torch.cartesian_prod(*sets, rows[b : b + 1]).reshape(-1, n)
            verdicts = truth[(grid * powers).sum(dim=1)]
            if proven[b]:
                fired["prove"] += 1
                assert bool(verdicts.all())
            if refuted[b]:
                fired["refute"] += 1
                assert not bool(verdicts.any())
    assert fired["prove"] > 0 and fired["refute"] > 0 and (high or fired["dropped"] > 0)


@pytest.mark.parametrize("K", [5, 63, 64, 65, 130])
def test_distinct_groups_equal_sets_only(K):
    """``boxes.distinct`` gives two (box, slot)s one set id iff their keys and token sets are
    equal (one slot id iff the slots are equal too), and each id's representative has that set:
    against Python frozensets, with sets that differ in one token only (tokens 0, 63, 64 and the
    last among them: the bit-packing's sign bit and word edges)."""
    g = torch.Generator().manual_seed(K)
    B, s1 = 400, 3
    base = torch.rand(6, K, generator=g) < 0.5
    rows = torch.randint(0, 3, (B,), generator=g)
    masks = base[torch.randint(0, 6, (B, s1), generator=g)]
    edge = torch.tensor([t for t in (0, 63, 64, K - 1) if t < K])
    flip = torch.rand(B, s1, generator=g) < 0.3
    tok = edge[torch.randint(0, edge.numel(), (B, s1), generator=g)]
    b, p = torch.nonzero(flip, as_tuple=True)
    masks[b, p, tok[b, p]] ^= True
    groups = boxes.distinct(rows, masks)
    want_set, want_slot = {}, {}
    for i in range(B):
        for j in range(s1):
            key = (int(rows[i]), frozenset(torch.nonzero(masks[i, j]).flatten().tolist()))
            sid, lid = int(groups.set_id[i, j]), int(groups.slot_id[i, j])
            assert want_set.setdefault(key, sid) == sid
            assert want_slot.setdefault((key, j), lid) == lid
    assert sorted(want_set.values()) == list(range(len(want_set)))  # one id per distinct set
    assert sorted(want_slot.values()) == list(range(len(want_slot)))
    assert len(want_set) < B * s1 // 3  # the sets repeat, and many differ in one token only
    for at, ids in ((groups.set_at, groups.set_id), (groups.slot_at, groups.slot_id)):
        assert torch.equal(ids[at[:, 0], at[:, 1]], torch.arange(at.shape[0]))
    # restricted to whole keys, the groups are those of the boxes alone
    idx = torch.nonzero(rows != 1, as_tuple=True)[0]
    part, alone = groups.restrict(idx), boxes.distinct(rows[idx], masks[idx])
    for a, b_ in ((part.set_id, alone.set_id), (part.slot_id, alone.slot_id)):
        pairs = torch.unique(torch.stack([a.flatten(), b_.flatten()], 1), dim=0)
        assert pairs.shape[0] == int(a.max()) + 1 == int(b_.max()) + 1  # the same partition
    at = part.set_at
    assert torch.equal(part.set_id[at[:, 0], at[:, 1]], torch.arange(at.shape[0]))


def _random_boxes(ms, B: int, s1: int, K: int, density, g) -> tuple[torch.Tensor, torch.Tensor]:
    """B boxes of random keys (rows into ``ms``), each slot either the max slot {m} or one of a
    few candidate sets per key (``density`` [keys, sets, 1]: each token's chance), as the
    splits of a tree make them: sets that repeat across boxes."""
    rows = torch.randint(0, ms.numel(), (B,), generator=g)
    m = ms[rows]
    S = density.shape[1]
    pool = torch.rand(ms.numel(), S, K, generator=g) < density
    pool &= torch.arange(K) < ms[:, None, None]
    pool[:, :, 0] = True  # non-empty (token 0 < m)
    pick = torch.randint(0, S + 1, (B, s1), generator=g)  # S: the max slot {m}
    masks = pool[rows[:, None], pick.clamp(max=S - 1)]
    is_max = pick == S
    masks[is_max] = False
    masks[is_max, m[:, None].expand(B, s1)[is_max]] = True
    return rows, masks


def test_refine_sorts_once_for_the_exact_bound_and_the_proofs(soundness_model):
    """Keys that take the exact key bound and prefer sorted orders sort their columns in
    ``refine``: the bound keeps the same columns, ``prove`` the same verdicts, and its charge
    drops by the sets' extremes of those keys (they are read off the orders)."""
    w = models.planted_weights(9, 4, noise=0.08, pos_noise=0.3, seed=5)
    ck = keys.cubic_keys(w, Ops())
    V, n = w.config.d_vocab, w.config.n_ctx
    qm = torch.triu_indices(V, V)
    qs, ms = qm[0][qm[1] > 1], qm[1][qm[1] > 1]
    t = boxes.tables(qs, ms, qs < 0, *boxes.table_inputs(ck), Ops())
    g = torch.Generator().manual_seed(3)
    density = torch.rand(qs.numel(), 4, 1, generator=g)  # four candidate sets per key
    rows, masks = _random_boxes(ms, 400, n - 1, t.H.shape[1], density, g)
    groups = boxes.distinct(rows, masks)
    use = torch.ones(qs.numel(), dtype=torch.bool)
    sort = boxes.prefers_orders(rows, masks, ms, groups)
    assert bool(sort.any()) and not bool(sort.all())
    plain_ops, sorted_ops = Ops(), Ops()
    plain, presorted = boxes.refine(t, use, plain_ops), boxes.refine(t, use, sorted_ops, sort)
    assert plain_ops.ledger.flop == sorted_ops.ledger.flop > 0
    assert torch.equal(plain.pair, presorted.pair) and torch.equal(plain.x, presorted.x)
    a, b = Ops(), Ops()
    got = boxes.prove(presorted, rows, masks, a, groups)
    assert torch.equal(got, boxes.prove(plain, rows, masks, b, groups))
    assert bool(got.any()) and not bool(got.all())
    L = presorted.n_live
    saved = boxes.prove_key_flops(rows, masks, L, ms, groups)
    saved -= boxes.prove_key_flops(rows, masks, L, ms, groups, sort)
    assert b.ledger.flop - a.ledger.flop == int(saved.sum()) > 0


@pytest.mark.parametrize("descending", [True, False])
def test_set_extremes_from_sorted_orders_are_the_reductions(descending):
    """``boxes._first_or_reduce``: the first token of a set in its row's sorted order is the
    set's max (min), the same float as the reduction, with ties and rows shared by sets."""
    g = torch.Generator().manual_seed(int(descending))
    table = (torch.randn(7, 40, generator=g, dtype=torch.float64) * 2).round() / 2  # ties
    row = torch.randint(0, 7, (500,), generator=g)
    sets = torch.rand(500, 40, generator=g) < torch.rand(500, 1, generator=g)
    sets[torch.arange(500), torch.randint(0, 40, (500,), generator=g)] = True  # non-empty
    masked = table[row].masked_fill(~sets, -torch.inf if descending else torch.inf)
    want = masked.amax(dim=1) if descending else masked.amin(dim=1)
    for by_order in (torch.ones(500, dtype=torch.bool), torch.rand(500, generator=g) < 0.5):
        got = boxes._first_or_reduce(table, row, sets, by_order, descending)
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "seed,w",
    [
        (0, models.planted_weights(7, 4, noise=0.08, pos_noise=0.3, seed=2)),
        (1, models.random_small_model(11)),
        (2, models.planted_weights(9, 5, noise=0.1, pos_noise=0.3, seed=4)),
    ],
)
def test_prove_shares_set_maxima_across_boxes(seed, w, monkeypatch):
    """``boxes.prove`` takes each distinct (key, set)'s maxima and each distinct (key, slot,
    set)'s bound once: on random boxes drawn from a few sets per key (as the splits of a tree
    make them), its verdicts equal a box-by-box evaluation, its charge equals the closed form
    counted here with Python sets, and its key-aligned chunks (tiny here) change neither."""
    V, n = w.config.d_vocab, w.config.n_ctx
    assert n >= 3
    ck = keys.cubic_keys(w, Ops())
    qm = torch.triu_indices(V, V)
    qs, ms = qm[0][qm[1] > 0], qm[1][qm[1] > 0]
    t = boxes.tables(qs, ms, qs < 0, *boxes.table_inputs(ck), Ops())
    g = torch.Generator().manual_seed(seed)
    B, s1 = 300, n - 1
    density = torch.full((qs.numel(), 3, 1), 0.5)  # three candidate sets per key
    rows, masks = _random_boxes(ms, B, s1, t.H.shape[1], density, g)
    ops = Ops()
    got = boxes.prove(t, rows, masks, ops)
    # Box by box, as the search evaluates them.
    W = int(t.n_live.max())
    cols = t.start[rows][:, None] + torch.arange(W)
    pad = torch.arange(W) >= t.n_live[rows][:, None]
    U, _ = boxes.set_slot_bounds(t, rows, cols.masked_fill(pad, 0), masks, Ops())
    ub = Ops().add(t.Fq[cols.masked_fill(pad, 0)], Ops().sum(U, dim=2))
    naive = (ub.mid.masked_fill(pad, -torch.inf) < -ub.rad).all(dim=1)
    assert torch.equal(got, naive) and bool(got.any()) and not bool(got.all())
    # The charge, from Python sets: per key the reductions over its distinct sets, or sorting
    # its columns and b (m comparisons each) where that is cheaper.
    want, sets, slot_sets, reduce = 0, set(), set(), {}
    for b in range(B):
        key, L = int(rows[b]), int(t.n_live[rows[b]])
        if L == 0:
            continue
        want += (s1 - 1) * L + L + (L - 1) + 1  # slot sum, query slot, max over outputs, sign
        for p in range(s1):
            toks = frozenset(torch.nonzero(masks[b, p]).flatten().tolist())
            if (key, toks) not in sets:
                sets.add((key, toks))
                reduce[key] = reduce.get(key, 0) + len(toks) - 1
            if (key, p, toks) not in slot_sets:
                slot_sets.add((key, p, toks))
                want += 3 * L
    for key, r in reduce.items():
        want += min(r, int(ms[key])) * (int(t.n_live[key]) + 1)
    assert ops.ledger.flop == want
    by_order = [key for key, r in reduce.items() if r > int(ms[key])]
    assert len(by_order) < len(reduce) and (len(by_order) > 0 or seed != 0)  # both ways
    assert len(sets) < (B * s1) // 2  # the sharing is real here
    monkeypatch.setattr(boxes, "CHUNK_ELEMENTS", 8)
    small = Ops()
    assert torch.equal(boxes.prove(t, rows, masks, small), got)
    assert small.ledger.flop == want


def _every_output_but_m(m, qs, ck, monkeypatch) -> boxes.Tables:
    """The tables of the keys (q, m) with every output x != m live (no key-level bound)."""
    with monkeypatch.context() as mp:

        def every_live(qs, ms, a, bk, beyond, E, top, e, u, Fq, ops):
            none = torch.zeros_like(qs)
            return torch.arange(top.shape[1])[None, :] != ms[:, None], none, none

        mp.setattr(boxes, "_live", every_live)
        t = boxes.tables(qs, qs * 0 + m, qs < 0, *boxes.table_inputs(ck), Ops())
    V = ck.circ.EVOU.shape[1]
    assert bool((t.n_live == V - 1).all())
    return t


@pytest.mark.parametrize(
    "w",
    [
        models.planted_weights(7, 4, noise=0.08, pos_noise=0.3, seed=2),
        models.random_small_model(11),
        models.random_small_model(37),
    ],
)
def test_tables_of_many_max_tokens_equal_each_alone(w, monkeypatch):
    """``boxes.tables`` on the keys of every max token at once (padded to the largest; half the
    max tokens with their keys' own E) gives each key the live outputs, values and radii it
    gets with its max token alone, -inf past its max token, and the sum of their charges;
    alone (nothing padded), the charge is exactly what the rigorous operations counted."""
    V = w.config.d_vocab
    ck = keys.cubic_keys(w, Ops())
    tabs = boxes.table_inputs(ck)
    scratch: list[Ops] = []
    Recording = _recording_ops(scratch)
    monkeypatch.setattr(boxes, "Ops", Recording)
    qm = torch.triu_indices(V, V)
    order = torch.randperm(qm.shape[1], generator=torch.Generator().manual_seed(0))
    qs, ms = qm[0, order], qm[1, order]
    own = ms % 2 == 1
    every = Ops()
    t = boxes.tables(qs, ms, own, *tabs, every)
    charged, checked = 0, 0
    for m in range(V):
        sel = torch.nonzero(ms == m, as_tuple=True)[0]
        for mine in (False, True):
            alone, scratch[:] = Ops(), []
            tm = boxes.tables(qs[sel], ms[sel], own[sel] | mine, *tabs, alone)
            assert alone.ledger.flop == scratch[0].ledger.flop  # the formula counts the ops
            if mine != (m % 2 == 1):
                continue
            charged += alone.ledger.flop
            assert torch.equal(t.live[sel], tm.live)
            cols = t.col[sel][tm.live]  # the same outputs, in the same order
            assert torch.equal(t.H.mid[cols, : m + 1], tm.H.mid)
            assert torch.equal(t.D.mid[cols], tm.D.mid)
            assert torch.equal(t.Fq.mid[cols], tm.Fq.mid)
            assert torch.equal(t.a.mid[sel], tm.a.mid)
            assert torch.equal(t.b.mid[sel, : m + 1], tm.b.mid)
            assert bool((t.H.mid[cols, m + 1 :] == -torch.inf).all())
            assert bool((t.b.mid[sel, m + 1 :] == 0).all())
            radii = [(x.rad, x.mag) for x in (t.H, t.D, t.Fq, t.a, t.b)]
            assert radii == [(x.rad, x.mag) for x in (tm.H, tm.D, tm.Fq, tm.a, tm.b)]
            checked += cols.numel()
    assert every.ledger.flop == charged
    assert checked == t.pair.numel() > 0


@pytest.mark.parametrize(
    "w",
    [
        models.planted_weights(7, 4, noise=0.08, pos_noise=0.3, seed=2),
        models.random_small_model(11),
        models.random_small_model(37),
    ],
)
def test_witness_tables_equal_the_full_tables(w, monkeypatch):
    """``boxes.witness_tables`` at random columns of many keys at once (padded) gives the
    values and radii ``boxes.tables`` gives at the same columns, whether live there or not
    (its screen left aside), -inf past each key's max token; alone (one max token, nothing
    padded), its charge is exactly what the rigorous operations counted."""
    V = w.config.d_vocab
    ck = keys.cubic_keys(w, Ops())
    tabs = boxes.table_inputs(ck)
    scratch: list[Ops] = []
    Recording = _recording_ops(scratch)
    qm = torch.triu_indices(V, V)
    qs, ms = qm[0], qm[1]
    order = torch.argsort(ms * V + qs)
    qs, ms = qs[order], ms[order]
    g = torch.Generator().manual_seed(0)
    pick = (torch.rand(qs.numel(), V, generator=g) < 0.4) & (torch.arange(V) != ms[:, None])
    pair, x = torch.nonzero(pick, as_tuple=True)
    t, flops = boxes.witness_tables(qs, ms, pair, x, *tabs)
    charged, lives = 0, []
    for m in range(V):
        sel = torch.nonzero(ms == m, as_tuple=True)[0]
        on = torch.isin(pair, sel)
        full = boxes.tables(qs[sel], ms[sel], torch.ones_like(sel, dtype=torch.bool), *tabs, Ops())
        monkeypatch.setattr(boxes, "Ops", Recording)
        scratch[:] = []
        local = torch.searchsorted(sel, pair[on])
        tm, fm = boxes.witness_tables(qs[sel], ms[sel], local, x[on], *tabs)
        monkeypatch.undo()
        assert fm == scratch[0].ledger.flop  # the formula counts the ops
        charged += fm
        cols = t.col[pair[on], x[on]]
        assert torch.equal(t.H.mid[cols, : m + 1], tm.H.mid)
        assert bool((t.H.mid[cols, m + 1 :] == -torch.inf).all())
        for name in ("D", "Fq"):
            assert torch.equal(getattr(t, name).mid[cols], getattr(tm, name).mid)
        for name in ("a", "b"):
            assert torch.equal(getattr(tm, name).mid, getattr(full, name).mid)
        live = full.col[local, x[on]] >= 0  # the full tables' columns where they have them
        for name in ("H", "D", "Fq"):
            mine, theirs = getattr(tm, name), getattr(full, name)
            assert torch.equal(mine.mid[live], theirs.mid[full.col[local, x[on]][live]])
            assert (mine.rad, mine.mag) == (theirs.rad, theirs.mag)
        lives.append(live)
    assert flops == charged and t.pair.numel() == pair.numel()
    live = torch.cat(lives)
    assert bool(live.any()) and not bool(live.all())


@pytest.mark.parametrize(
    "w",
    [
        models.planted_weights(7, 4, noise=0.08, pos_noise=0.3, seed=2),
        models.random_weights(6, 4, seed=3, qk_scale=2.0),
        models.random_small_model(11),
        # wide ranges of b_k over the queries of an m (each side of E's range matters)
        models.random_small_model(37),
        models.random_small_model(21),
        # a max slot's own term T matters (dropping it over-claims)
        models.random_small_model(7),
    ],
)
@pytest.mark.parametrize("own", [False, True])
def test_dead_outputs_never_reach_the_max_logit(w, own):
    """Claim (c) of ``boxes``, with either form of E: an output that is not live for the key
    (q, m) is below m's logit on every input of the key (checked on every input, float64 logits
    with a 1e-9 margin), and the bound is not vacuous (some outputs are dead)."""
    V, n = w.config.d_vocab, w.config.n_ctx
    ops = Ops()
    ck = keys.cubic_keys(w, ops)
    tokens = models.all_tokens(V, n)
    logits = models.naive_last_logits(w, tokens).double()  # [inputs, x]
    q, m = tokens[:, -1], tokens.max(dim=1).values
    dead = 0
    for mv in range(V):
        qs = torch.arange(mv + 1)
        t = boxes.tables(
            qs,
            qs * 0 + mv,
            torch.full_like(qs, own, dtype=torch.bool),
            *boxes.table_inputs(ck),
            ops,
        )
        # Both forms of the key bound: the separable one (the tables' live outputs) and the
        # exact one at those.
        live = t.live.clone()  # [q, x]
        live[t.pair, t.x] = boxes.exact_key_live(t, ops)  # per column
        dead += int((~live).sum()) - (mv + 1)  # x = m is never live and never counts
        sel = m == mv
        beats = logits[sel] >= logits[sel, mv][:, None] - 1e-9  # [inputs, x]
        beats[:, mv] = False
        assert not bool((beats & ~live[q[sel]]).any())
    assert dead > 0


def test_high_token_screen_is_exact_without_positions():
    """Claim (e) of ``boxes`` is exact when every token k <= m is in Hi and the positions play no
    part (W_pos = 0: equal slot weights a_p, top = c_p): then KB'_x is the max over the key's
    inputs of G_x. So on such models an output is live for the key (q, m) iff some input with
    query q and max m has logit(x) >= logit(m) (float64 logits, up to 1e-9), on both sides.
    Small weights put many of these maxima near 0 (about 1 in 25 within 0.02), so lowering or
    raising N' by 0.01 fails this test; claim (c) alone is looser."""
    checked, loose = 0, 0
    for seed in range(30):
        w = models.random_weights(5, 4, seed=seed, scale=0.3, pos_scale=0.0)
        V, n = 5, 4
        ck = keys.cubic_keys(w, Ops())
        tokens = models.all_tokens(V, n)
        logits = models.naive_last_logits(w, tokens).double()
        q, m = tokens[:, -1], tokens.max(dim=1).values
        diff = logits - logits.gather(1, m[:, None])  # [inputs, x]
        qs, ms = torch.triu_indices(V, V)
        t = boxes.tables(qs, ms, qs >= 0, *boxes.table_inputs(ck), Ops())
        all_high = t.n_high == ms + 1  # every token k <= m in Hi
        for i in torch.nonzero(all_high, as_tuple=True)[0].tolist():
            sel = (q == qs[i]) & (m == ms[i])
            best = diff[sel].amax(dim=0)  # [x]: max over the key's inputs
            for x in range(V):
                if x == int(ms[i]) or abs(float(best[x])) < 1e-9:
                    continue
                checked += 1
                assert bool(t.live[i, x]) == bool(best[x] > 0), (seed, i, x, float(best[x]))
        loose += int((t.n_screen - t.n_live)[all_high].sum())  # what claim (c) left
    assert checked > 1500 and loose > 0


@pytest.mark.parametrize("high", [True, False])
def test_own_E_is_at_least_as_tight(high, soundness_model, monkeypatch):
    """A key's own E is at most the shared one (its b_k lie in the range over the queries), so
    its live outputs are a subset of the shared E's (claims (c) and (e) are monotone in E), and
    by claim (c) alone on some models fewer."""
    if not high:
        monkeypatch.setattr(boxes, "HIGH_MAX", 0)
    fewer = 0
    for name in ("planted-V8-K4-noisy", "trained-V10-K4-partial", "random-V9-K3-scale3"):
        w, _ = soundness_model(name)
        V = w.config.d_vocab
        ck = keys.cubic_keys(w, Ops())
        tabs = boxes.table_inputs(ck)
        qs, ms = torch.triu_indices(V, V)
        shared = boxes.tables(qs, ms, qs < 0, *tabs, Ops()).live
        own = boxes.tables(qs, ms, qs >= 0, *tabs, Ops()).live
        assert not bool((own & ~shared).any())
        fewer += int(shared.sum()) - int(own.sum())
    assert high or fewer > 0


def test_shared_E_bounds_every_query():
    """The shared E (``boxes._shared_E``): for every query q' <= m, every k <= m and every x,
    b_k(q') e[k, x] <= E[x] as exact rationals of the floats (b_k(q') = exp of the shifted
    scores, e of either sign, some outputs with e < 0 for every k); equal to 0 exactly where
    every e[k, x] < 0; charged K V + (K - 1) V + V."""
    from fractions import Fraction

    g = torch.Generator().manual_seed(7)
    K, V, Q = 6, 9, 5
    d = -torch.rand(Q, K, generator=g, dtype=torch.float64) * 4
    d[torch.arange(Q), torch.randint(0, K, (Q,), generator=g)] = 0.0  # each query's max
    b = torch.exp(d)  # [Q, K]: b_k(q') in (0, 1]
    e = torch.randn(1, K, V, generator=g, dtype=torch.float64)
    e[0, :, :3] = -e[0, :, :3].abs()  # outputs 0 .. 2: every e < 0
    ops = Ops()
    hi = ops.exp_nonpositive(ops.amax(Approx(d, 0.0, 4.0), 0)).map_layout(lambda t: t[None])
    E = boxes._shared_E(
        hi, Approx(e, 0.0, float(e.abs().max())), torch.zeros(1, K, dtype=torch.bool), ops
    )
    assert ops.ledger.flop == (Q - 1) * K + K + K * V + (K - 1) * V + V  # hi (max, exp), then E
    upper = [Fraction(v) + Fraction(E.rad) for v in E.mid[0].tolist()]
    for q in range(Q):
        for k in range(K):
            for x in range(V):
                assert Fraction(float(b[q, k])) * Fraction(float(e[0, k, x])) <= upper[x]
    assert E.mid[0, :3].tolist() == [0.0] * 3 and bool((E.mid[0, 3:] > 0).all())


@pytest.mark.parametrize("model_name", ["planted-V8-K4-noisy", "trained-V10-K4-partial"])
def test_class_form_reads_the_cubic_tables_only_where_they_hold(model_name, soundness_model):
    """The class form reads its Dmax class maxima from the cubic's leftover tables: they cover
    every key the cubic leaves unproven, and a key they do not cover (its pair is not there, or
    its k is the row maximum whose runner-up was not computed) is never proven."""
    w, _ = soundness_model(model_name)
    V, n = w.config.d_vocab, w.config.n_ctx
    ck = keys.cubic_keys(w, Ops())
    cand = searcher._candidate_keys(ck.proven, V, n)
    q, m, k, _ = cand.unbind(1)
    assert bool(pessimize.leftover_rows(ck.leftover, q, m, k, V)[1].all())
    grid = torch.cartesian_prod(*[torch.arange(V)] * 3, torch.arange(n))
    every = grid[keys.valid_keys(grid, V, n) & (grid[:, 3] <= n - 2)]
    _, usable = pessimize.leftover_rows(ck.leftover, *every[:, :3].unbind(1), V)
    assert not bool(usable.all())  # some pairs were fully screened
    _, in_classes = keys.level1(ck, every[:0], every, Ops())
    assert not bool((in_classes & ~usable).any())


@pytest.mark.parametrize("model_name", ["planted-V8-K4-noisy", "trained-V10-K4-partial"])
def test_mixed_form_dmax_rows_come_sorted_from_stage_1(model_name, soundness_model):
    """Level 1's Dmax class maxima read the rows of EUPU and own stage 1 sorted: none is sorted
    again for the keys the cubic leaves unproven. Without stage 1's rows, level 1 sorts them
    itself, charged as ``level1_flops`` predicts (d_vocab - 1 each), with the same verdicts;
    a key alone is decided as among all."""
    w, _ = soundness_model(model_name)
    V, n = w.config.d_vocab, w.config.n_ctx
    ck = keys.cubic_keys(w, Ops())
    cand = searcher._candidate_keys(ck.proven, V, n)
    assert keys._dmax_rows(ck, cand[cand[:, 3] <= n - 2], Ops()).new_rows == 0
    grid = torch.cartesian_prod(*[torch.arange(V)] * 3, torch.arange(n))
    every = grid[keys.valid_keys(grid, V, n) & (grid[:, 3] <= n - 2)]
    g = torch.Generator().manual_seed(3)
    solo = torch.rand(every.shape[0], V, generator=g) < 0.2
    bare = dataclasses.replace(ck, leftover=None)
    new = keys._dmax_rows(bare, every, Ops()).new_rows
    assert new == torch.unique(every[:, 0]).numel() + torch.unique(every[:, 1]).numel()
    verdicts, charged = [], []
    for stage1 in (ck, bare):
        ops = Ops()
        verdicts.append(keys.level1(stage1, every, every[:0], ops, solo)[0])
        assert ops.ledger.flop == keys.level1_flops(stage1, every, every[:0], solo)
        charged.append(ops.ledger.flop)
    assert torch.equal(verdicts[0], verdicts[1]) and bool(verdicts[0].any())
    assert charged[1] - charged[0] == (new - keys._dmax_rows(ck, every, Ops()).new_rows) * (V - 1)
    for i in torch.randperm(every.shape[0], generator=g)[:40].tolist():
        alone = keys.level1(ck, every[i : i + 1], every[:0], Ops(), solo[i : i + 1])[0]
        assert bool(alone[0]) == bool(verdicts[0][i])


@pytest.mark.parametrize(
    "model_name", ["planted-V8-K4-noisy", "trained-V10-K4-partial", "trained-V6-K5-partial"]
)
def test_level1_class_form_is_weaker_than_per_output(model_name, soundness_model):
    """On every key the cubic leaves unproven, the class form proves a subset of what the
    per-output test proves (its bound is never lower), and both prove some. Each form's proven
    keys, combined with the cubic's, add inputs and cover only correct ones (the mixture
    argument)."""
    w, truth = soundness_model(model_name)
    V, n = w.config.d_vocab, w.config.n_ctx
    ops = Ops()
    ck = keys.cubic_keys(w, ops)
    cand = searcher._candidate_keys(ck.proven, V, n)
    per_output, in_classes = keys.level1(ck, cand, cand, ops)
    assert bool((per_output | ~in_classes).all())
    assert int(in_classes.sum()) > 0
    for field, ok in (("l1_keys", per_output), ("l1_class_keys", in_classes)):
        out, _ = _run(w, {field: cand[ok]})
        assert out.correct > out.details["cubic_correct"]
        assert not bool((out.covered() & ~truth).any())


# Models whose search re-checks many keys per output (d_vocab 9, 7, 14; n_ctx 4, 5, 3).
PER_OUTPUT_KEYS = [
    lambda: models.random_small_model(32),
    lambda: models.random_small_model(93),
    lambda: models.trained_weights(14, 3, seed=4, steps=100),
]


@pytest.mark.parametrize("make", PER_OUTPUT_KEYS)
def test_level1_mixed_form(make):
    """The mixed form (some outputs one by one, the others as one class) proves a subset of
    what the per-output test proves, whatever the solo outputs, and its proven keys cover only
    correct inputs. The search's solo outputs prove every key it lists, with fewer FLOPs."""
    w = make()
    truth = models.truth_mask(w)
    V, n = w.config.d_vocab, w.config.n_ctx
    ops = Ops()
    ck = keys.cubic_keys(w, ops)
    cand = searcher._candidate_keys(ck.proven, V, n)
    per_output = keys.level1(ck, cand, cand[:0], ops)[0]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        solo = torch.rand(cand.shape[0], V, generator=g) < 0.3
        mixed = keys.level1(ck, cand, cand[:0], ops, solo)[0]
        assert bool(mixed.any()) and not bool((mixed & ~per_output).any())
        cert = {"l1_keys": cand[mixed], "l1_outputs": solo[mixed]}
        out, _ = _run(w, cert)
        assert out.details["level1_proven"] == int(mixed.sum())
        assert not bool((out.covered() & ~truth).any())
    st = searcher.explore(w, level1_in_box_pairs=True)  # every key level 1 proves
    l1, solo = st.l1, st.l1_out
    assert bool(keys.level1(ck, l1, l1[:0], ops, solo)[0].all())
    assert int(solo.sum()) < solo.numel() // 2  # mostly mixed
    full = keys.level1_flops(ck, l1, l1[:0])
    assert keys.level1_flops(ck, l1, l1[:0], solo) < full


@pytest.mark.parametrize(
    "make",
    [*PER_OUTPUT_KEYS, lambda: models.random_small_model(91)],  # 91: a class of one
)
def test_solo_outputs_never_cost_more(make):
    """Key by key, the search's solo outputs cost at most what every output one by one costs."""
    w = make()
    st = searcher.explore(w, level1_in_box_pairs=True)  # every key level 1 proves
    l1, solo = st.l1, st.l1_out
    assert l1.shape[0] > 0
    for i in range(l1.shape[0]):
        one = l1[i : i + 1]
        mixed = keys.level1_flops(st.ck, one, one[:0], solo[i : i + 1])
        assert mixed <= keys.level1_flops(st.ck, one, one[:0])


@pytest.mark.parametrize("make", PER_OUTPUT_KEYS[:2])
@pytest.mark.parametrize("n_solo", [0, 1, 3, None])
def test_level1_charges_what_it_computes(make, n_solo, monkeypatch):
    """With the same number of solo outputs on every key (nothing padded), ``level1`` charges
    exactly what its rigorous operations count, and ``level1_flops`` predicts it (None: every
    output one by one; 0: one class)."""
    w = make()
    V, n = w.config.d_vocab, w.config.n_ctx
    ck = keys.cubic_keys(w, Ops())
    cand = searcher._candidate_keys(ck.proven, V, n)
    assert cand.shape[0] > 0
    g = torch.Generator().manual_seed(1)
    if n_solo is None:
        solo = torch.ones(cand.shape[0], V, dtype=torch.bool)
    else:  # n_solo outputs other than m, at random
        score = torch.rand(cand.shape[0], V, generator=g)
        score[torch.arange(cand.shape[0]), cand[:, 1]] = 2.0
        solo = score.argsort(dim=1)[:, :n_solo]
        solo = torch.zeros(cand.shape[0], V, dtype=torch.bool).scatter_(1, solo, True)
    scratch: list[Ops] = []
    Recording = _recording_ops(scratch)
    ops = Ops()
    keys.level1(ck, cand, cand[:0], ops, solo)
    assert ops.ledger.flop == keys.level1_flops(ck, cand, cand[:0], solo)
    # The per-key part is computed on scratch ops and charged by formula: without that charge,
    # the ledger plus the scratch ops count the same total.
    monkeypatch.setattr(keys, "Ops", Recording)
    monkeypatch.setattr(keys, "_level1_key_flops", lambda V, last, J, R, d: torch.zeros_like(J))
    direct = Ops()
    keys.level1(ck, cand, cand[:0], direct, solo)
    computed = direct.ledger.flop + sum(s.ledger.flop for s in scratch)
    assert scratch and computed == ops.ledger.flop


@pytest.mark.parametrize(
    "model_name", ["trained-V10-K4-partial", "neartie-planted-V7-K4", "trained-V6-K5-partial"]
)
def test_count_key_bound_against_enumeration(model_name, soundness_model):
    """The count-key lemma (``counts``) holds for any split of [0, m) into K and U: with random
    K sets, every input of a proven count key (q, m, c, i) is correct; some keys are proven."""
    w, truth = soundness_model(model_name)
    V, n = w.config.d_vocab, w.config.n_ctx
    ops = Ops()
    ck = keys.cubic_keys(w, ops)
    g = torch.Generator().manual_seed(1)
    ks, ms = torch.arange(V), torch.arange(V)
    below = ks[None, None, :, None] < ms[None, :, None, None]
    r = torch.rand(V, V, V, n, generator=g)
    # K: the cubic's proven tokens with some moved to U, plus some unproven ones.
    proven = below & torch.where(ck.proven, r < 0.7, r < 0.1)
    q, m, c, i = torch.meshgrid(*(torch.arange(d) for d in (V, V, n, n)), indexing="ij")
    cand = torch.stack([x.reshape(-1) for x in (q, m, c, i)], 1)
    cand = cand[counts.valid(cand, V, n)]
    tops = counts.position_tops(ck.EQKP_s, ops)
    ok = counts.evaluate(ck, tops, proven, cand, ops)
    won = torch.zeros(V, V, n, n, dtype=torch.bool)
    won[tuple(cand[ok].T)] = True
    tok = models.all_tokens(V, n)
    tq, tm = tok[:, -1], tok.max(dim=1).values
    nonmax = tok[:, :-1] < tm[:, None]
    tc = nonmax.sum(dim=1)
    ti = (nonmax & ~proven[tq[:, None], tm[:, None], tok[:, :-1], tc[:, None]]).sum(dim=1)
    hit = won[tq, tm, tc, ti] & (ti >= 1)
    assert int(ok.sum()) > 0 and bool(hit.any())
    assert bool(truth[hit].all())


# ------------------------------------------------------------ untrusted certificates
def _cert(soundness_model, name="planted-V8-K4-noisy"):
    w, truth = soundness_model(name)
    return w, truth, adaptive.search(w)


@pytest.mark.parametrize("model_name", ["random-V7-K3", "random-V6-K4-sharp", "neartie-c0-V6-K4"])
def test_c0_margins_refute_only_incorrect_inputs(model_name, soundness_model):
    """The cubic's exact c = 0 margins (``cubic.Stage.margin0``) hold the exact margins of their
    inputs (arb, independently); ``singles.decide_c0`` refutes with them only incorrect inputs,
    at 2 FLOPs each, and decides the rest as ``singles.decide`` does."""
    w, truth = soundness_model(model_name)
    V, n = w.config.d_vocab, w.config.n_ctx
    ck = keys.cubic_keys(w, Ops())
    qs, ms = torch.nonzero(~torch.isnan(ck.margin0.mid), as_tuple=True)
    assert qs.numel() > 0
    scratch = Ops()
    lo, hi = scratch.lower(ck.margin0[qs, ms]), scratch.upper(ck.margin0[qs, ms])
    for q, m, a, b in zip(qs.tolist(), ms.tolist(), lo.tolist(), hi.tolist(), strict=True):
        margin = -models.exact_margin(w, [m] * (n - 1) + [q])  # max_x logit(x) - logit(m)
        assert a <= float(margin.lower()) and float(margin.upper()) <= b
    todo = torch.nonzero(~ck.proven0 & torch.triu(torch.ones(V, V, dtype=torch.bool)))
    tables = (ck.EQKE_s, ck.EQKP_s, ck.circ.EUPU, ck.circ.EVOU, ck.circ.PVOU)
    ops = Ops()
    exact_decider = singles.ExactDecider(w)
    verdict = singles.decide_c0(todo[:, 0], todo[:, 1], ck.margin0, tables, exact_decider, ops)
    tokens = singles.c0_tokens(todo[:, 0], todo[:, 1], n)
    index = (tokens * V ** torch.arange(n)).sum(dim=1)
    assert torch.equal(verdict == 1, truth[index]) and torch.equal(verdict == -1, ~truth[index])
    refuted = int((lo[~ck.proven0[qs, ms]] > 0).sum())
    rest = todo.shape[0] - refuted
    assert refuted > 0
    charged = ops.ledger.flop - ops.ledger.by_label.get(singles.EXACT_LABEL, 0)
    assert charged == singles.c0_flops(refuted, rest, n, V)


def test_false_claims_are_not_counted(soundness_model):
    """Claim 'prove' on every leaf (and 'exact' on the singles): still sound, just not exact."""
    w, truth, cert = _cert(soundness_model)
    bad = dict(cert)
    claim = cert["claim"].clone()
    claim[claim == plan.REFUTE] = plan.PROVE
    bad["claim"] = claim
    out, _ = _run(w, bad)
    assert out.correct == int(truth.sum())  # refuted boxes never re-check as proven
    claim2 = cert["claim"].clone()
    claim2[claim2 != plan.NONE] = plan.REFUTE
    bad["claim"] = claim2
    bad["witness"] = (_node_max(w, cert) + 1) % w.config.d_vocab  # some other output
    out, _ = _run(w, bad)
    assert not bool((out.refuted() & truth).any())


@pytest.mark.parametrize("seed", range(4))
def test_random_trees_are_sound(seed, soundness_model):
    """Random splits and claims over the search's roots: whatever the tree, covered inputs are
    correct and refuted ones incorrect."""
    w, truth, cert = _cert(soundness_model, "random-V6-K4-sharp")
    g = torch.Generator().manual_seed(seed)
    R = cert["roots"].shape[0]
    V, n = w.config.d_vocab, w.config.n_ctx
    T = 3 * R
    parent = torch.empty(T, dtype=torch.int64)
    free = list(range(R))
    for i in range(T):
        j = int(torch.randint(0, len(free), (1,), generator=g))
        parent[i] = free.pop(j)
        free += [R + 2 * i, R + 2 * i + 1]
    rnd = {
        "l1_keys": cert["l1_keys"],
        "roots": cert["roots"],
        "split_parent": parent,
        "split_slot": torch.randint(0, n - 1, (T,), generator=g),
        "split_mask": torch.rand(T, V, generator=g) < 0.5,
        "claim": torch.zeros(R + 2 * T, dtype=torch.int8),
        "witness": torch.randint(0, V, (R + 2 * T,), generator=g),
    }
    leaves = torch.tensor(free)
    rnd["claim"][leaves] = torch.randint(1, 4, (leaves.numel(),), generator=g).to(torch.int8)
    m_of = torch.cat([cert["roots"][:, 1], torch.zeros(2 * T, dtype=torch.int64)])
    rnd["witness"] = torch.where(rnd["witness"] == m_of, (rnd["witness"] + 1) % V, rnd["witness"])
    try:
        out, _ = _run(w, rnd)
    except ProofPreconditionError as e:  # only a witness equal to a child's m may be rejected
        assert "witness" in str(e)
        return
    assert not bool((out.covered() & ~truth).any())
    assert not bool((out.refuted() & truth).any())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_mutated_certificates_never_overclaim(seed):
    """The search's certificate on a random small model, mutated at random (claims and witnesses
    re-drawn on half the leaves, random split masks, extra c = 0 and level-1 keys, random solo
    outputs of the level-1 keys, a random choice of E per max token, all still well-formed):
    the checker counts only truly correct inputs as correct and truly incorrect ones as
    incorrect, and its counts equal its covered and refuted sets."""
    w = models.random_small_model(1000 + seed)
    truth = models.truth_mask(w)
    V, n = w.config.d_vocab, w.config.n_ctx
    base = adaptive.search(w)
    leaves = torch.ones(base["claim"].shape[0], dtype=torch.bool)
    leaves[base["split_parent"]] = False
    leaves = torch.nonzero(leaves, as_tuple=True)[0]
    node_m = _node_max(w, base)
    g = torch.Generator().manual_seed(seed)
    for _ in range(6):
        cert = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in base.items()}
        if leaves.numel():  # claims stay on leaves and witnesses differ from m: well-formed
            idx = leaves[
                torch.randint(0, leaves.numel(), (max(1, leaves.numel() // 2),), generator=g)
            ]
            cert["claim"][idx] = torch.randint(1, 4, idx.shape, generator=g).to(torch.int8)
            shift = torch.randint(1, V, idx.shape, generator=g)
            cert["witness"][idx] = (node_m[idx] + shift) % V
        if cert["split_mask"].shape[0] and bool(torch.rand(1, generator=g) < 0.5):
            cert["split_mask"] = torch.rand(cert["split_mask"].shape, generator=g) < 0.5
        qm = torch.triu_indices(V, V).T
        cert["c0"] = qm[torch.rand(qm.shape[0], generator=g) < 0.5].contiguous()
        m = torch.randint(1, V, (20,), generator=g)  # valid keys (q <= m, k < m, c in range)
        k = (torch.rand(20, generator=g) * m).long()
        q = (torch.rand(20, generator=g) * (m + 1)).long()
        c_max = torch.where(q == m, n - 1, n - 2)
        c = 1 + (torch.rand(20, generator=g) * c_max).long()
        extra = torch.stack([q, m, k, c], 1)[c_max >= 1]
        half = extra.shape[0] // 2 if V >= 3 else extra.shape[0]  # class keys need V >= 3
        cert["l1_keys"] = torch.cat([cert["l1_keys"], extra[:half]]).contiguous()
        cert["l1_outputs"] = torch.rand(cert["l1_keys"].shape[0], V, generator=g) < 0.3
        cert["l1_class_keys"] = torch.cat([cert["l1_class_keys"], extra[half:]]).contiguous()
        cert["own_E"] = torch.nonzero(torch.rand(V, generator=g) < 0.5, as_tuple=True)[0]
        out, _ = _run(w, cert)
        covered, refuted = out.covered(), out.refuted()
        assert not bool((covered & ~truth).any()) and not bool((refuted & truth).any())
        assert out.correct == int(covered.sum()) and out.incorrect == int(refuted.sum())


def test_class_keys_need_three_tokens():
    w = models.random_weights(2, 3, seed=0)
    with pytest.raises(ProofPreconditionError, match="need d_vocab >= 3"):
        _run(w, {"l1_class_keys": torch.tensor([[0, 1, 0, 1]])})
    assert adaptive.search(w)["l1_class_keys"].shape[0] == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["roots"].__setitem__(-1, c["roots"][0]), "duplicate roots"),
        (lambda c: c["roots"].__setitem__((0, 1), 99), "out of range"),
        (lambda c: c["split_parent"].__setitem__(0, 10**6), "does not exist"),
        (lambda c: c["split_parent"].__setitem__(1, int(c["split_parent"][0])), "split twice"),
        (lambda c: c["claim"].__setitem__(int(c["split_parent"][0]), 1), "carries a claim"),
        (
            lambda c: c.update(
                l1_keys=torch.tensor([[0, 1, 1, 1]]), l1_outputs=torch.ones(1, 8, dtype=torch.bool)
            ),
            "not a valid key",
        ),
        (
            lambda c: c.update(l1_outputs=torch.ones(len(c["l1_keys"]) + 1, 8, dtype=torch.bool)),
            "one row per l1_keys row",
        ),
        (lambda c: c.update(l1_outputs=c["l1_outputs"].to(torch.int64)), "must be a 2-d"),
        (lambda c: c.update(l1_class_keys=torch.tensor([[2, 1, 0, 1]])), "l1_class_keys entry"),
        (lambda c: c.update(claim=c["claim"].to(torch.int64)), "must be a 1-d"),
        (lambda c: c.update(extra=1), "unknown certificate field"),
        (lambda c: c.update(c0=torch.tensor([[3, 1]])), "c0 entry"),
        (lambda c: c["split_slot"].__setitem__(0, 7), "slot is out of range"),
        (lambda c: c.update(own_E=torch.tensor([8])), "own_E entry is not a token"),
        (lambda c: c.update(own_E=torch.tensor([-1])), "own_E entry is not a token"),
        (lambda c: c.update(screen_j=torch.zeros(7, 8, dtype=torch.int64)), r"\[8, 8\] table"),
        (lambda c: c["screen_j"].__setitem__((2, 5), 6), "0 <= j <= m"),  # j > m
        (lambda c: c["screen_j"].__setitem__((2, 5), -1), "0 <= j <= m"),
        (lambda c: c["screen_j"].__setitem__((5, 2), 1), "0 for q > m"),
        (lambda c: c.update(cubic_routes=torch.tensor([[0, 3, 1, 1, 4]])), "route 1 - 3"),
        (lambda c: c.update(cubic_routes=torch.tensor([[0, 3, 3, 1, 1]])), "valid key"),
        (lambda c: c.update(cubic_routes=torch.tensor([[0, 3, 1, 3, 1]])), "valid key"),  # c
        (lambda c: c.update(cubic_routes=torch.tensor([[2, 3, 1, 1, 1]] * 2)), "two routes"),
        (lambda c: c.update(cubic_routes=torch.tensor([[2, 3, 1, 0, 3]] * 2)), "two routes"),
        (lambda c: c.update(cubic_routes=torch.tensor([[2, 3, 1, -1, 3]])), "valid key"),
        (lambda c: c.update(cubic_routes=torch.zeros(1, 4, dtype=torch.int64)), "5 columns"),
    ],
)
def test_malformed_certificates_are_rejected(mutate, message, soundness_model):
    w, _, cert = _cert(soundness_model)
    bad = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in cert.items()}
    mutate(bad)
    with pytest.raises(ProofPreconditionError, match=message):
        _run(w, bad)


def test_refute_witness_must_differ_from_the_max(soundness_model):
    w, _, cert = _cert(soundness_model)
    bad = dict(cert)
    ref = torch.nonzero(cert["claim"] == plan.REFUTE, as_tuple=True)[0]
    assert ref.numel()
    nodes_m = _node_max(w, cert)
    witness = cert["witness"].clone()
    witness[ref[0]] = nodes_m[ref[0]]
    bad["witness"] = witness
    with pytest.raises(ProofPreconditionError, match="witness"):
        _run(w, bad)


@pytest.mark.parametrize("seed", range(3))
def test_tree_sizes_count_the_sets(seed, soundness_model):
    """The sizes ``tree.build`` derives split by split (the counts credited to each leaf) are
    the sizes of its sets, on the search's trees and on random re-splits of its roots; every
    leaf set is inside its root's and the leaves of a root add up to it."""
    w, _, cert = _cert(soundness_model, "random-V9-K4-perkey")
    proven, istar = _proven(w, cert)
    g = torch.Generator().manual_seed(seed)
    R, V, n = cert["roots"].shape[0], w.config.d_vocab, w.config.n_ctx
    T = 4 * R
    parent, free = torch.empty(T, dtype=torch.int64), list(range(R))
    for i in range(T):
        parent[i] = free.pop(int(torch.randint(0, len(free), (1,), generator=g)))
        free += [R + 2 * i, R + 2 * i + 1]
    trees = [
        (cert["split_parent"], cert["split_slot"], cert["split_mask"]),
        (parent, torch.randint(0, n - 1, (T,), generator=g), torch.rand(T, V, generator=g) < 0.4),
    ]
    for split_parent, split_slot, split_mask in trees:
        nodes = checker.tree.build(
            cert["roots"], proven, istar, split_parent, split_slot, split_mask
        )
        assert torch.equal(nodes.sizes, nodes.masks.sum(dim=2))
        inputs = nodes.sizes.prod(dim=1)
        root_of = torch.arange(nodes.q.shape[0])
        for i, p in enumerate(split_parent.tolist()):
            root_of[R + 2 * i] = root_of[R + 2 * i + 1] = root_of[p]
        per_root = torch.zeros(R, dtype=torch.int64).index_add_(
            0, root_of[nodes.leaf], inputs[nodes.leaf]
        )
        assert torch.equal(per_root, inputs[:R])


def _node_max(w, cert):
    proven, istar = _proven(w, cert)
    return checker.tree.build(
        cert["roots"], proven, istar, cert["split_parent"], cert["split_slot"], cert["split_mask"]
    ).m


def _proven(w, cert):
    """The checker's proven keys and counted count-key prefixes, recomputed from its stages."""
    ops = Ops()
    ck = keys.cubic_keys(w, ops)
    proven = ck.proven.clone()
    l1 = cert["l1_keys"]
    proven[l1[:, 0], l1[:, 1], l1[:, 2], l1[:, 3]] = True
    cnt = cert["count_keys"]
    V, n = w.config.d_vocab, w.config.n_ctx
    tops = counts.position_tops(ck.EQKP_s, ops)
    ok = counts.evaluate(ck, tops, proven, cnt, ops)
    return proven, counts.prefix(cnt, ok, V, n)


@pytest.mark.parametrize("model_name", [*SMALL, "random-V7-K3"])
def test_count_keys_at_every_n_ctx(model_name, soundness_model, monkeypatch):
    """Count keys (used by default from n_ctx = 5) forced on small n_ctx: still exact and
    input-by-input right, and they are used."""
    monkeypatch.setattr(searcher, "COUNT_FROM", 0)
    w, truth = soundness_model(model_name)
    cert = adaptive.search(w)
    out, ledger = _run(w, cert)
    assert out.exact and out.correct == int(truth.sum())
    assert torch.equal(out.covered(), truth) and torch.equal(out.refuted(), ~truth)
    assert ledger.flop - ledger.by_label.get("adaptive:exact", 0) == cert["predicted"]
    if model_name == "neartie-planted-V7-K4":
        assert out.details["count_keys_counted"] > 0
