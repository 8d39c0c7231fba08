"""compact_proofs.analysis against independent naive computations on tiny models: path
ablations (all 32 combinations), the EQKE residual decomposition, the attention-error bounds."""

import itertools
import math

import pytest
import torch

from compact_proofs import analysis
from compact_proofs.analysis import ablation, noise, paths
from compact_proofs.weights import Weights


def make_weights(
    V: int, n: int, d: int, seed: int, *, scale: float = 0.7, structured: bool = True
) -> Weights:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float()

    W_E = r(V, d)
    if structured:  # a "size" direction, so that some inputs are classified correctly
        W_E[:, 0] += torch.linspace(-2, 2, V)
    W_U = r(d, V)
    if structured:
        W_U[0] += torch.linspace(-2, 2, V)
    return Weights(
        W_E=W_E, W_pos=r(n, d), W_Q=r(d, d), W_K=r(d, d), W_V=r(d, d), W_O=r(d, d), W_U=W_U
    )


def all_inputs(V: int, n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(V), repeat=n)))


def naive_logits(w: Weights, tokens: torch.Tensor, ablated: tuple[str, ...] = ()) -> torch.Tensor:
    """Float64 forward pass at the last position, written from the model definition; a removed
    path contributes nothing (the attention score splits into the token part with the mean
    position, and the centred position part)."""
    E, P = w.W_E.double(), w.W_pos.double()
    Q, K, Wv, O, U = (x.double() for x in (w.W_Q, w.W_K, w.W_V, w.W_O, w.W_U))
    P_bar = P.mean(0)
    query = (E[tokens[:, -1]] + P[-1]) @ Q  # [b, dh]
    key_tok = (E[tokens] + P_bar) @ K  # [b, n, dh]
    key_pos = ((P - P_bar) @ K).expand_as(key_tok)
    score = torch.zeros(tokens.shape, dtype=torch.float64)
    if "EQKE" not in ablated:
        score += torch.einsum("bh,bph->bp", query, key_tok)
    if "EQKP" not in ablated:
        score += torch.einsum("bh,bph->bp", query, key_pos)
    attn = torch.softmax(score / math.sqrt(w.W_Q.shape[1]), dim=-1)
    value = torch.zeros(*tokens.shape, U.shape[1], dtype=torch.float64)
    if "EVOU" not in ablated:
        value += E[tokens] @ Wv @ O @ U
    if "PVOU" not in ablated:
        value += (P @ Wv @ O @ U).expand_as(value)
    logits = torch.einsum("bp,bpx->bx", attn, value)
    if "EU" not in ablated:
        logits += (E[tokens[:, -1]] + P[-1]) @ U
    return logits


def strict_stats(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[int, float, float]:
    m = tokens.max(dim=1).values
    right = logits.gather(1, m[:, None])
    wrong = logits.clone()
    wrong.scatter_(1, m[:, None], -math.inf)
    correct = int((wrong.max(dim=1).values < right[:, 0]).sum())
    logp = torch.log_softmax(logits, dim=1).gather(1, m[:, None])[:, 0]
    return correct, float(-logp.mean()), float(logp.exp().mean())


@pytest.mark.parametrize("V,n,d,seed", [(5, 3, 8, 0), (7, 4, 6, 1), (4, 2, 5, 2)])
def test_every_ablation_matches_naive_forward(V, n, d, seed):
    w = make_weights(V, n, d, seed)
    tokens = all_inputs(V, n)
    table = ablation.ablation_table(w, chunk=37)  # odd chunk size: exercises the ragged last batch
    assert table["method"] == "exact" and table["n_inputs"] == V**n
    rows = {tuple(r["ablated"]): r for r in table["rows"]}
    assert len(rows) == 32
    base = None
    for combo in ablation.combinations():
        correct, loss, prob = strict_stats(naive_logits(w, tokens, combo), tokens)
        r = rows[combo]
        assert r["num_correct"] == correct, combo
        assert r["num_incorrect"] == V**n - correct
        assert r["accuracy"] == correct / V**n
        assert r["loss"] == pytest.approx(loss, rel=1e-5), combo
        assert r["prob_correct"] == pytest.approx(prob, rel=1e-5), combo
        base = base if combo else correct / V**n
        assert r["normalized_accuracy"] == pytest.approx((correct / V**n) / base)
    everything = rows[ablation.PATHS]  # all logits equal: every input is a tie, hence wrong
    assert everything["num_correct"] == 0 and everything["loss"] == pytest.approx(math.log(V))


def test_nothing_ablated_equals_exact_accuracy_of_plain_forward_pass():
    """The unablated row is the model's exact accuracy (strict: ties wrong) over all inputs,
    checked against a forward pass that uses no path decomposition at all."""
    V, n, d = 6, 3, 8
    w = make_weights(V, n, d, 5)
    tokens = all_inputs(V, n)
    E, P = w.W_E.double(), w.W_pos.double()
    resid = E[tokens] + P
    q = resid[:, -1] @ w.W_Q.double()
    k = resid @ w.W_K.double()
    v = resid @ w.W_V.double()
    attn = torch.softmax(torch.einsum("bh,bph->bp", q, k) / math.sqrt(d), dim=-1)
    logits = (resid[:, -1] + torch.einsum("bp,bph->bh", attn, v) @ w.W_O.double()) @ w.W_U.double()
    correct, loss, _ = strict_stats(logits, tokens)
    assert 0 < correct < V**n
    row = ablation.ablation_table(w)["rows"][0]
    assert row["name"] == "none" and row["num_correct"] == correct
    assert row["loss"] == pytest.approx(loss, rel=1e-5)


def test_eu_only_is_counted_by_enumeration():
    """Regression for the reference's closed form: with only EU kept, an input is correct iff
    EUPU[query] has its strict maximum at the max token."""
    V, n = 6, 3
    w = make_weights(V, n, 8, 3)
    tokens = all_inputs(V, n)
    EU = paths.path_matrices(w)["EUPU"]
    m = tokens.max(dim=1).values
    rows_eu = EU[tokens[:, -1]]
    right = rows_eu.gather(1, m[:, None])[:, 0]
    rows_eu = rows_eu.scatter(1, m[:, None], -math.inf)
    expected = int((rows_eu.max(dim=1).values < right).sum())
    table = {r["name"]: r for r in ablation.ablation_table(w)["rows"]}
    assert table["EQKE+EQKP+EVOU+PVOU"]["num_correct"] == expected
    assert table["EQKP+EVOU+PVOU"]["num_correct"] == expected  # attention cannot matter


def test_sampled_ablation_estimates_exact_accuracy():
    V, n = 7, 4
    w = make_weights(V, n, 6, 1)
    exact = ablation.ablation_table(w)["rows"]
    sampled = ablation.ablation_table(w, max_exhaustive=100, n_samples=20_000)
    assert sampled["method"] == "sampled" and sampled["n_inputs"] == 20_000
    again = ablation.ablation_table(w, max_exhaustive=100, n_samples=20_000)
    assert again["rows"] == sampled["rows"]  # fixed generator: reproducible
    for e, s in zip(exact, sampled["rows"], strict=True):
        p = e["accuracy"]
        se = math.sqrt(max(p * (1 - p), 1e-4) / 20_000)
        assert abs(s["accuracy"] - p) < 5 * se, e["name"]


def test_path_matrices_reproduce_forward_logits():
    V, n, d = 6, 3, 8
    w = make_weights(V, n, d, 7)
    pm = paths.path_matrices(w)
    tokens = all_inputs(V, n)
    q = tokens[:, -1]
    score = pm["EQKE"][q[:, None], tokens] + pm["EQKP"][q][:, :]
    attn = torch.softmax(score / math.sqrt(d), dim=-1)
    logits = pm["EUPU"][q] + torch.einsum("bp,bpx->bx", attn, pm["EVOU"][tokens] + pm["PVOU"][None])
    assert torch.allclose(logits, naive_logits(w, tokens), atol=1e-10)


@pytest.mark.parametrize("V,n,d,seed", [(5, 3, 8, 0), (16, 4, 12, 1), (64, 4, 32, 2)])
def test_eqke_decomposition_identity(V, n, d, seed):
    w = make_weights(V, n, d, seed)
    dec = noise.decompose(w)
    M = dec["EQKE"]
    assert torch.allclose(M, paths.path_matrices(w)["EQKE"], atol=1e-12 * float(M.abs().max()))
    total = dec["main"] + dec["rank_one_sum"] + dec["residual"]
    assert torch.allclose(total, M, atol=1e-10 * float(M.abs().max()))
    assert torch.allclose(
        dec["simple"], dec["rank_one_sum"] + dec["residual"], atol=1e-10 * float(M.abs().max())
    )
    assert torch.linalg.matrix_rank(dec["main"]) <= 1
    R = dec["m0"] @ dec["m1"] @ dec["m2"] @ dec["m3"]
    assert torch.allclose(R, dec["residual"])


@pytest.mark.parametrize("seed", range(6))
def test_every_error_mode_bounds_the_residual_row_range(seed):
    V, d = (8, 5) if seed % 2 else (20, 12)
    w = make_weights(V, 3, d, seed, structured=seed % 3 != 0)
    dec = noise.decompose(w)
    actual = noise.row_range(dec["residual"])  # per query row
    bounds = noise.mode_bounds(dec["m0"], dec["m1"], dec["m2"], dec["m3"])
    assert set(bounds) == set(noise.ERROR_MODES)
    tol = 1e-9 * float(actual.max())
    for mode, eps in bounds.items():
        assert eps.shape == actual.shape
        assert bool((eps >= actual - tol).all()), mode
    assert torch.allclose(bounds["max_diff_exact"], actual)
    # the subproduct min over splits can only tighten the single split
    assert bool((bounds["max_diff_subproduct"] <= bounds["max_diff"] + tol).all())


def test_row_range_bounds_on_adversarial_random_factors():
    g = torch.Generator().manual_seed(11)
    for _ in range(20):
        ms = [
            torch.randn(9, 4, generator=g, dtype=torch.float64),
            torch.randn(4, 4, generator=g, dtype=torch.float64),
        ]
        ms += [
            torch.randn(4, 4, generator=g, dtype=torch.float64),
            torch.randn(4, 9, generator=g, dtype=torch.float64),
        ]
        ms[0] = ms[0] + 5 * torch.randn(
            1, 4, generator=g, dtype=torch.float64
        )  # large common row part
        actual = noise.row_range(ms[0] @ ms[1] @ ms[2] @ ms[3])
        for mode, eps in noise.mode_bounds(*ms).items():
            assert bool((eps >= actual - 1e-9).all()), mode


def test_noise_analysis_values_and_determinism():
    w = make_weights(16, 4, 12, 4)
    a, ta = noise.noise_analysis(w, n_resamples=10)
    b, tb = noise.noise_analysis(w, n_resamples=10)
    assert torch.equal(ta["noise.resample_shuffle"], tb["noise.resample_shuffle"])
    assert torch.equal(ta["noise.resample_gaussian"], tb["noise.resample_gaussian"])
    assert ta["noise.resample_shuffle"].shape == (10,)
    R = ta["noise.residual"]
    assert a["noise_residual_max_row_diff"] == pytest.approx(float(noise.row_range(R).max()))
    assert a["noise_bound_max_diff_exact"] == pytest.approx(a["noise_residual_max_row_diff"])
    # a shuffle keeps each factor's entries: the same Frobenius norms
    for i in range(4):
        assert a[f"noise_factor{i}_std"] == pytest.approx(float(ta[f"noise.m{i}"].std()))
    assert a["noise_prod_fro"] >= a["noise_residual_fro"] * (1 - 1e-12)  # submultiplicativity
    assert a["noise_prod_sigma1"] >= a["noise_residual_sigma1"] * (1 - 1e-12)


def test_analyze_save_load_roundtrip(tmp_path):
    w = make_weights(6, 3, 8, 9)
    info, tensors = analysis.analyze_model(w)
    key = analysis.analysis_key(3, 6, 9)
    assert key == "k3-v6-s9"
    path = analysis.save_analysis(tmp_path, key, info, tensors)
    assert path.name == "k3-v6-s9.json"
    info2, tensors2 = analysis.load_analysis(tmp_path, key)
    assert info2["ablations"] == info["ablations"]
    assert info2["model_sha256"] == w.sha256()
    assert info2["eqke_sigma_ratio"] == pytest.approx(
        float(tensors["EQKE_singular_values"][0] / tensors["EQKE_singular_values"][1])
    )
    assert set(tensors2) == set(tensors)
    for k in tensors:
        assert torch.equal(tensors2[k], tensors[k].double())
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def _checker_recursive_eps(w: Weights) -> dict[str, torch.Tensor]:
    """Per recursive mode, rigorous upper bounds on the subcubic checker's own eps (per query),
    computed by the checker's component with the search's directions."""
    from compact_proofs.core import circuits
    from compact_proofs.core.rigorous import Ops
    from compact_proofs.proofs.subcubic import eqke, search
    from compact_proofs.proofs.subcubic.variants import RECURSIVE_MEANS

    ops = Ops()
    lv = circuits.leaves(w, ops)
    em = eqke.embeds(lv, ops)
    cert = search.directions(w)
    return {
        mode: ops.upper(eqke.subproduct(mode, lv, em, cert, ops).eps) for mode in RECURSIVE_MEANS
    }


@pytest.mark.parametrize("model", ["random-V16-K4", "trained-V8-K3"])
def test_recursive_mode_bounds_are_what_the_checker_uses(model, soundness_model):
    """The recursive modes' bound in the analysis (and hence the noise figure) is the checker's
    eps, min(paper's recursive bound, Cauchy–Schwarz), not the paper's bound alone: it equals the
    checker's eps up to the checker's rounding control (eps is a rigorous upper bound, so ours may
    only be below it, by a tiny relative amount) and never exceeds the paper's recursive bound."""
    w = make_weights(16, 4, 12, 4) if model.startswith("random") else soundness_model(model)[0]
    info, _ = noise.noise_analysis(w, n_resamples=2)
    dec = noise.decompose(w)
    ms = [dec["m0"], dec["m1"], dec["m2"], dec["m3"]]
    bounds = noise.mode_bounds(*ms)
    checker = _checker_recursive_eps(w)
    assert set(checker) == {m for m in noise.ERROR_MODES if m.endswith("_recursive")}
    for mode, eps in checker.items():
        ours = bounds[mode]
        assert bool((ours <= eps * (1 + 1e-9)).all()), mode
        assert bool((ours >= eps * (1 - 1e-3)).all()), mode
        assert info[f"noise_bound_{mode}"] == float(ours.max())
        assert info[f"noise_bound_{mode}"] == pytest.approx(float(eps.max()), rel=1e-3)
        paper = info[f"noise_paper_bound_{mode}"]
        assert info[f"noise_bound_{mode}"] <= paper
        # on these models Cauchy–Schwarz wins: the paper's bound alone overstates the proof's eps
        assert info[f"noise_bound_{mode}"] < 0.6 * paper, mode
        assert info[f"noise_bound_{mode}"] == min(paper, info[f"noise_cs_bound_{mode}"])


def test_recursive_parts_min_is_the_mode_bound_and_both_parts_are_valid():
    """Both parts of a recursive mode bound the residual's row ranges on their own (so their min
    does), on factors with a large common row part (where the mean tricks matter)."""
    g = torch.Generator().manual_seed(12)
    for _ in range(10):
        ms = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((9, 5), (5, 3), (3, 5))]
        ms.append(torch.randn(5, 9, generator=g, dtype=torch.float64) + 3.0)
        ms[0] = ms[0] + 4 * torch.randn(1, 5, generator=g, dtype=torch.float64)
        actual = noise.row_range(ms[0] @ ms[1] @ ms[2] @ ms[3])
        bounds = noise.mode_bounds(*ms)
        for mode, (paper, cs) in noise.recursive_parts(*ms).items():
            assert bool((paper >= actual - 1e-9).all()) and bool((cs >= actual - 1e-9).all())
            assert torch.equal(bounds[mode], torch.minimum(paper, cs)), mode
