"""Adaptive proof (untrusted search): writing the certificate of chosen refinements, and
choosing, under a FLOP budget, the refinements with the most proven inputs per FLOP.

Items, each with its gain (inputs newly proven) and an upper estimate of its cost: a level-1
group (the successful level-1 keys of one key (q, m, c); gain C(n-1, c) ((N + s)^c - N^c)), a
count group (the counted count keys of one (q, m, c); it needs that key's level-1 group, since
U was cut against it) and a box package (the trees of one (q, m), proven leaves only; it needs
every group of the same (q, m)). Greedy by gain / cost over items bundled with their missing
dependencies; the certificate is then trimmed (last picks first) until ``cost.predict`` fits.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.proofs.adaptive import boxes, cost, counts, keys, plan
from compact_proofs.proofs.protocol import Certificate


@dataclass
class State:
    """What the search found (all untrusted)."""

    ck: keys.CubicKeys
    proven: Tensor  # after level 1
    istar: Tensor  # counted count-key prefixes
    tr: object  # searcher._Tree
    l1: Tensor  # level-1 keys proven per output (and not in the class form)
    l1_out: Tensor  # ... their solo outputs (``keys.level1``'s mixed form)
    l1c: Tensor  # level-1 keys proven in the class form
    cnt: Tensor
    roots: Tensor
    c0: Tensor  # c = 0 keys (q, m) the cubic leaves unproven
    # The exploration to fit budgets from, if not this one (``searcher.explore``), memoised
    for_fit: Callable[[], "State"] | None = None


def certificate(
    tr,
    l1: Tensor,
    l1_out: Tensor,
    l1c: Tensor,
    cnt: Tensor,
    c0: Tensor,
    roots: Tensor,
    keep: Tensor,
    ck: keys.CubicKeys,
) -> Certificate:
    """The certificate of the trees under the roots ``keep`` (bool per root), renumbered, with
    the screen thresholds and key routes of stage 1 ``ck``."""
    R = roots.shape[0]
    V = tr.masks.shape[2]
    parent = torch.cat(tr.parent) if tr.parent else torch.zeros(0, dtype=torch.int64)
    slot = torch.cat(tr.slot) if tr.slot else torch.zeros(0, dtype=torch.int64)
    smask = torch.cat(tr.split_mask) if tr.split_mask else torch.zeros(0, V, dtype=torch.bool)
    node_keep = keep[tr.root]
    split_keep = node_keep[parent] if parent.numel() else torch.zeros(0, dtype=torch.bool)
    R2 = int(keep.sum())
    new_id = torch.full((tr.q.shape[0],), -1, dtype=torch.int64)
    new_id[torch.nonzero(keep, as_tuple=True)[0]] = torch.arange(R2)
    kept_splits = torch.nonzero(split_keep, as_tuple=True)[0]
    T2 = kept_splits.numel()
    new_id[R + 2 * kept_splits] = R2 + 2 * torch.arange(T2)
    new_id[R + 2 * kept_splits + 1] = R2 + 2 * torch.arange(T2) + 1
    old = torch.nonzero(new_id >= 0, as_tuple=True)[0]
    claim = torch.zeros(R2 + 2 * T2, dtype=torch.int8)
    witness = torch.zeros(R2 + 2 * T2, dtype=torch.int64)
    claim[new_id[old]] = tr.claim[old]
    witness[new_id[old]] = tr.witness[old]
    return {
        "l1_keys": l1.contiguous(),
        "l1_outputs": l1_out.contiguous(),
        "l1_class_keys": l1c.contiguous(),
        "count_keys": cnt.contiguous(),
        "c0": c0.contiguous(),
        "roots": roots[keep].contiguous(),
        "split_parent": new_id[parent[kept_splits]].contiguous(),
        "split_slot": slot[kept_splits].contiguous(),
        "split_mask": smask[kept_splits].contiguous(),
        "claim": claim,
        "witness": witness,
        "own_E": tr.own_E.contiguous(),
        "screen_j": ck.thresholds.clone(),
        "cubic_routes": keys.certificate_routes(ck),
    }


def fit(cfg: ModelConfig, st: State, budget: int) -> Certificate:
    """The greedy certificate (gain per FLOP) whose check costs at most ``budget`` FLOPs."""
    V, n = cfg.d_vocab, cfg.n_ctx
    base = st.ck.flops
    items = _items(cfg, st)
    picked: list = []  # item ids in pick order (dependencies first)
    have: set = set()
    spent = base
    fixed = {"tops": counts.tops_flops(V, n)}
    for key in sorted(items, key=lambda k: -_ratio(items, k)):
        bundle = [d for d in items[key]["deps"] + [key] if d not in have]
        need = set().union(*(items[d]["fixed"] for d in bundle)) - have if bundle else set()
        extra = sum(items[d]["cost"] for d in bundle) + sum(fixed[f] for f in need)
        if not bundle or spent + extra > budget:
            continue
        spent += extra
        for d in bundle:
            have.add(d)
            have.update(items[d]["fixed"])
            picked.append(d)
    while True:
        cert = _assemble(st, items, picked)
        cert["budget"] = int(budget)
        cert["predicted"] = cost.predict(cfg, cert, st.ck, st.proven, st.istar, st.tr.live)
        if cert["predicted"] <= budget or not picked:
            return cert
        picked.pop()


def _ratio(items: dict, key) -> float:
    """Gain per FLOP of an item bundled with its dependencies."""
    bundle = items[key]["deps"] + [key]
    return sum(items[d]["gain"] for d in bundle) / max(sum(items[d]["cost"] for d in bundle), 1)


def _items(cfg: ModelConfig, st: State) -> dict:
    """Level-1 groups ("l1", q, m, c), count groups ("cnt", q, m, c), packages ("box", q, m)."""
    V, n = cfg.d_vocab, cfg.n_ctx
    N0 = keys.key_counts(st.ck.proven)
    N1 = keys.key_counts(st.proven)
    items: dict = {}
    for kind, ks in (("rows", st.l1), ("class_rows", st.l1c)):
        for i, (q, m, _, c) in enumerate(ks.tolist()):
            new = {"rows": [], "class_rows": [], "deps": [], "fixed": set()}
            items.setdefault(("l1", q, m, c), new)[kind].append(i)
    # A group's cost is ``keys.level1_flops`` of its rows alone: its pair's terms, then its keys.
    per_key, per_class_key = (
        t.tolist() for t in keys.level1_key_flops(st.ck, st.l1, st.l1c, st.l1_out)
    )
    for (_, q, m, c), it in items.items():  # only level-1 groups so far
        n0, s_ = int(N0[q, m, c]), len(it["rows"]) + len(it["class_rows"])
        it["gain"] = math.comb(n - 1, c) * ((n0 + s_) ** c - n0**c)
        rows, class_rows = it["rows"], it["class_rows"]
        # its pair's row (and its query's sorted row of W, if per output)
        pair_terms = 2 * V + ((V - 1) if rows else 0)
        it["cost"] = (
            pair_terms + sum(per_key[i] for i in rows) + sum(per_class_key[i] for i in class_rows)
        )
    for i, (q, m, c, k) in enumerate(st.cnt.tolist()):
        if k > int(st.istar[q, m, c]):
            continue
        it = items.setdefault(("cnt", q, m, c), {"rows": [], "fixed": {"tops"}})
        it["rows"].append(i)
    for key, it in list(items.items()):
        if key[0] != "cnt":
            continue
        _, q, m, c = key
        Nk = int(N1[q, m, c])
        it["deps"] = [d for d in [("l1", q, m, c)] if d in items]
        it["gain"] = counts.covered_one(n, m, c, Nk, len(it["rows"]))
        sizes = torch.tensor([[c, i, Nk] for i in range(1, len(it["rows"]) + 1)])
        it["cost"] = counts.count_flops(V, n, m, 1, sizes)
    tr = st.tr
    sizes = tr.sizes
    won = torch.nonzero(tr.nodes().leaf & (tr.claim == plan.PROVE), as_tuple=True)[0]
    for i, q, m in zip(won.tolist(), tr.q[won].tolist(), tr.m[won].tolist(), strict=True):
        it = items.setdefault(("box", q, m), {"rows": [], "fixed": set()})
        it["rows"].append(i)
    by_pair: dict = {}  # (q, m) -> its level-1 and count groups
    for d in items:
        if d[0] in ("l1", "cnt"):
            by_pair.setdefault(d[1:3], []).append(d)
    box_keys = [k for k in items if k[0] == "box"]
    if not box_keys:
        return items
    qs = torch.tensor([k[1] for k in box_keys])
    ms = torch.tensor([k[2] for k in box_keys])
    rows = torch.cat([torch.full((len(items[k]["rows"]),), j) for j, k in enumerate(box_keys)])
    box_rows = torch.cat([torch.tensor(items[k]["rows"]) for k in box_keys])
    box_sizes = sizes[box_rows]
    # Each package as checked alone (one query per key): its tables, then its prove claims.
    claims = boxes.prove_claims_key_flops(
        tr.live[qs, ms, 0], tr.live[qs, ms, 1], ms, n, rows, tr.masks[box_rows], qs
    ).tolist()
    box_inputs = [math.prod(r) for r in box_sizes.tolist()]  # exact ints
    own = torch.isin(ms, tr.own_E).tolist()
    at = 0
    for j, key in enumerate(box_keys):
        _, q, m = key
        it = items[key]
        it["deps"] = by_pair.get((q, m), [])
        it["gain"] = sum(box_inputs[at : at + len(it["rows"])])
        at += len(it["rows"])
        L, screen, high = tr.live[q, m, [0, 2, 3]].tolist()
        tables = boxes.table_flops(m, 1, n, V, L, int(q < m), int(own[j]))
        high = int(boxes.high_flops(m + 1, screen, high, q < m))
        it["cost"] = tables + high + claims[j]
    return items


def _assemble(st: State, items: dict, picked: list) -> Certificate:
    """Certificate with the picked items (box packages keep their proven claims only)."""
    chosen = set(picked)
    l1_rows = sorted(i for k in chosen if k[0] == "l1" for i in items[k]["rows"])
    l1c_rows = sorted(i for k in chosen if k[0] == "l1" for i in items[k]["class_rows"])
    cnt_rows = sorted(i for k in chosen if k[0] == "cnt" for i in items[k]["rows"])
    pk = {k[1:] for k in chosen if k[0] == "box"}
    keep = torch.tensor(
        [(q, m) in pk for q, m in st.roots[:, :2].tolist()], dtype=torch.bool
    ).reshape(-1)
    cert = certificate(
        st.tr,
        st.l1[l1_rows],
        st.l1_out[l1_rows],
        st.l1c[l1c_rows],
        st.cnt[cnt_rows],
        torch.zeros(0, 2, dtype=torch.int64),
        st.roots,
        keep,
        st.ck,
    )
    cert["claim"] = torch.where(
        cert["claim"] == plan.PROVE, cert["claim"], torch.zeros_like(cert["claim"])
    )
    return cert
