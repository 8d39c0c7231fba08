"""The torch model: TransformerLens names/order, bit-exact TL init, forward pass against an
independent float64 implementation, and (when transformer-lens is installed) against TL itself."""

import hashlib
import math

import pytest
import torch

from compact_proofs import model as M
from compact_proofs.config import ModelConfig, TrainConfig
from compact_proofs.weights import Weights

# named_parameters() of TransformerLens 2.9.1's HookedTransformer(n_layers=1, n_heads=1,
# attn_only=True, normalization_type=None), printed from the real library (d_vocab 64, n_ctx 4).
TL_PARAMS = [
    ("embed.W_E", (64, 32)),
    ("pos_embed.W_pos", (4, 32)),
    ("blocks.0.attn.W_Q", (1, 32, 32)),
    ("blocks.0.attn.W_O", (1, 32, 32)),
    ("blocks.0.attn.b_Q", (1, 32)),
    ("blocks.0.attn.b_O", (32,)),
    ("blocks.0.attn.W_K", (1, 32, 32)),
    ("blocks.0.attn.W_V", (1, 32, 32)),
    ("blocks.0.attn.b_K", (1, 32)),
    ("blocks.0.attn.b_V", (1, 32)),
    ("unembed.W_U", (32, 64)),
    ("unembed.b_U", (64,)),
]


def digest(w: Weights) -> str:
    h = hashlib.sha256()
    for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U"):
        h.update(getattr(w, k).contiguous().numpy().tobytes())
    return h.hexdigest()


def test_parameter_names_order_and_shapes_match_transformer_lens():
    net = M.AttnOnlyTransformer(ModelConfig(d_vocab=64, n_ctx=4))
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == TL_PARAMS
    assert list(net.state_dict()) == [n for n, _ in TL_PARAMS]  # no mask buffers
    for name, p in net.named_parameters():
        assert p.requires_grad == ("W_" in name), name
        if "b_" in name:
            assert not p.any()


def test_init_draws_normals_in_documented_order():
    cfg = ModelConfig(d_vocab=7, n_ctx=3, d_model=8, d_head=5)
    net = M.build(cfg, 12345)
    g = torch.Generator().manual_seed(12345)
    std = 0.8 / math.sqrt(8)
    shapes = {n: s for n, s in [(n, tuple(p.shape)) for n, p in net.named_parameters()]}
    order = ["embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "blocks.0.attn.W_O"]
    order += ["blocks.0.attn.W_K", "blocks.0.attn.W_V", "unembed.W_U"]
    sd = net.state_dict()
    for name in order:
        want = torch.empty(shapes[name]).normal_(0.0, std, generator=g)
        assert torch.equal(sd[name], want), name
    assert all(not sd[n].any() for n in sd if "b_" in n)


def test_init_matches_real_transformer_lens_golden_values():
    """Values printed from TransformerLens 2.9.1 (HookedTransformer with cfg.seed = model seed)."""
    seed = TrainConfig(seed=50).model_seed
    w = M.to_weights(M.build(ModelConfig(d_vocab=64, n_ctx=4), seed))
    assert [x.hex() for x in w.W_E[0, :3].tolist()] == [
        "0x1.17bf6c0000000p-3",
        "-0x1.e0bda20000000p-3",
        "-0x1.1ec2e00000000p-2",
    ]
    assert [x.hex() for x in w.W_U[-1, -2:].tolist()] == [
        "-0x1.c37eec0000000p-4",
        "0x1.bc76e60000000p-4",
    ]
    assert digest(w) == "bf1f735c4c96ca7655f12f60cac1790eba83557b16b360addaf4bf0487346416"
    w2 = M.to_weights(M.build(ModelConfig(d_vocab=6, n_ctx=3), TrainConfig(seed=123).model_seed))
    assert digest(w2) == "09e69dc2a6e91a0761bbda36ff7a0d9fe63027a1b440d35be861d695dd769dd3"


def test_init_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    M.build(ModelConfig(d_vocab=6, n_ctx=3), 99)
    assert torch.equal(torch.get_rng_state(), before)


def reference_logits(w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """Independent float64 forward pass of reference-algorithms §2.3, every position."""
    E, P, Q, K, Vw, O, U = (
        w.tensors()[k].double() for k in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")
    )
    n = tokens.shape[1]
    r = E[tokens] + P[None, :n]  # [b, n, d]
    q = torch.einsum("bid,dh->bih", r, Q)
    k = torch.einsum("bjd,dh->bjh", r, K)
    v = torch.einsum("bjd,dh->bjh", r, Vw)
    scores = torch.einsum("bih,bjh->bij", q, k) / math.sqrt(Q.shape[1])
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, -math.inf)
    attn = torch.softmax(scores, dim=-1)
    out = r + torch.einsum("bij,bjh,hd->bid", attn, v, O)
    return torch.einsum("bid,dv->biv", out, U)


@pytest.mark.parametrize("V,n,d,dh", [(6, 3, 8, 8), (64, 4, 32, 32), (11, 5, 16, 4)])
def test_forward_matches_float64_reference(V, n, d, dh):
    g = torch.Generator().manual_seed(V * n)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    w = Weights(
        W_E=r(V, d),
        W_pos=r(n, d),
        W_Q=r(d, dh),
        W_K=r(d, dh),
        W_V=r(d, dh),
        W_O=r(dh, d),
        W_U=r(d, V),
    )
    tokens = torch.randint(0, V, (50, n), generator=g)
    with torch.no_grad():
        got = M.from_weights(w)(tokens)
    want = reference_logits(w, tokens)
    assert got.shape == (50, n, V) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_weights_round_trip_is_exact():
    w = M.to_weights(M.build(ModelConfig(d_vocab=9, n_ctx=3), 5))
    w2 = M.to_weights(M.from_weights(w))
    for k, t in w.tensors().items():
        assert torch.equal(t, w2.tensors()[k])
    assert w.sha256() == w2.sha256()


def test_against_transformer_lens_when_installed():
    tl = pytest.importorskip("transformer_lens")
    cfg = ModelConfig(d_vocab=12, n_ctx=4, d_model=16, d_head=16)
    seed = 4242
    hc = tl.HookedTransformerConfig(
        n_layers=1, n_heads=1, d_model=16, d_head=16, d_vocab=12, n_ctx=4, attn_only=True,
        normalization_type=None, act_fn=None, d_mlp=None, device="cpu", seed=seed,
    )  # fmt: skip
    ref = tl.HookedTransformer(hc)
    ours = M.build(cfg, seed)
    ref_sd = ref.state_dict()
    for k, t in ours.state_dict().items():
        assert torch.equal(t, ref_sd[k]), k
    tokens = torch.randint(0, 12, (64, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours(tokens), ref(tokens))


def test_a_transposed_embedding_is_named_with_the_expected_layout():
    from compact_proofs.errors import ModelFormatError

    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    V, n, d = 8, 3, 16
    with pytest.raises(ModelFormatError) as err:
        Weights(W_E=r(d, V), W_pos=r(n, d), W_Q=r(d, d), W_K=r(d, d), W_V=r(d, d), W_O=r(d, d),
                W_U=r(d, V))  # fmt: skip
    message = str(err.value)
    assert message.startswith("the weight shapes disagree: W_pos is (3, 16), but W_E (16, 8)")
    assert "W_E [d_vocab, d_model], W_pos [n_ctx, d_model]" in message
    assert "output vocabulary" not in message
    with pytest.raises(ModelFormatError, match="the output vocabulary must be the input"):
        Weights(W_E=r(V, d), W_pos=r(n, d), W_Q=r(d, d), W_K=r(d, d), W_V=r(d, d), W_O=r(d, d),
                W_U=r(d, V + 1))  # fmt: skip
