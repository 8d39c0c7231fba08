"""The one-layer, one-head, attention-only transformer as a torch module (reference-algorithms §2).

Parameter names, shapes and registration order are those of TransformerLens 2.x's
``HookedTransformer`` for ``n_layers=1, n_heads=1, attn_only=True, normalization_type=None``, so
``model.state_dict()`` is a TransformerLens state dict (without its ``mask``/``IGNORE`` buffers).
The forward pass repeats TransformerLens 2.9.1's float32 operations one for one (the same
``F.linear``/``addmm`` calls on the same tensor layouts, the same ``+ 0.0`` on the query and key
inputs, the same masking and softmax), because reproducing the paper's trained weights bit for bit
depends on float32 operation order, in the forward pass and in the autograd graph it induces.

Shape glossary: ``batch`` inputs, ``n_ctx`` positions, ``d_model`` residual width, ``d_head`` head
width, ``n_heads`` (= 1) heads, ``d_vocab`` tokens (= ``d_vocab_out``).
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from compact_proofs.config import ModelConfig
from compact_proofs.weights import Weights

N_HEADS = 1


class Embed(nn.Module):
    """Token embedding ``W_E [d_vocab, d_model]``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, "batch n_ctx d_model"]:
        return self.W_E[tokens, :]


class PosEmbed(nn.Module):
    """Learned absolute positional embedding ``W_pos [n_ctx, d_model]``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, "batch n_ctx d_model"]:
        n = tokens.size(-1)
        pos_embed = self.W_pos[0:n, :]
        # TL: einops.repeat(pos_embed, "pos d_model -> batch pos d_model") = unsqueeze + expand.
        return pos_embed.unsqueeze(0).expand(tokens.size(0), -1, -1).clone()


class Attention(nn.Module):
    """One causal attention head; parameters registered in TransformerLens's order
    (``W_Q, W_O, b_Q, b_O`` in the abstract base, then ``W_K, W_V, b_K, b_V``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, dh = N_HEADS, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d))
        self.b_Q = nn.Parameter(torch.zeros(h, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.W_K = nn.Parameter(torch.empty(h, d, dh))
        self.W_V = nn.Parameter(torch.empty(h, d, dh))
        self.b_K = nn.Parameter(torch.zeros(h, dh))
        self.b_V = nn.Parameter(torch.zeros(h, dh))
        # Non-persistent: the saved state dict carries no mask buffers.
        self.register_buffer(
            "mask", torch.tril(torch.ones((cfg.n_ctx, cfg.n_ctx)).bool()), persistent=False
        )
        self.register_buffer("IGNORE", torch.tensor(-torch.inf), persistent=False)
        self.attn_scale = math.sqrt(cfg.d_head)

    @staticmethod
    def _linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        # TL simple_attn_linear: rearrange "h d_model d_head -> (h d_head) d_model",
        # then F.linear, then reshape.
        w2 = w.permute(0, 2, 1).reshape(w.shape[0] * w.shape[2], w.shape[1])
        b2 = b.reshape(b.shape[0] * b.shape[1])
        return F.linear(x, w2, b2).reshape(x.shape[0], x.shape[1], b.shape[0], b.shape[1])

    def forward(
        self,
        query_input: Float[Tensor, "batch n_ctx d_model"],
        key_input: Float[Tensor, "batch n_ctx d_model"],
        value_input: Float[Tensor, "batch n_ctx d_model"],
    ) -> Float[Tensor, "batch n_ctx d_model"]:
        q = self._linear(query_input, self.W_Q, self.b_Q)  # [batch, pos, head, d_head]
        k = self._linear(key_input, self.W_K, self.b_K)
        v = self._linear(value_input, self.W_V, self.b_V)
        q_ = q.permute(0, 2, 1, 3)  # [batch, head, query_pos, d_head]
        k_ = k.permute(0, 2, 3, 1)  # [batch, head, d_head, key_pos]
        attn_scores = q_ @ k_ / self.attn_scale
        n_q, n_k = attn_scores.size(-2), attn_scores.size(-1)
        final_mask = self.mask[None, None, -n_q:, -n_k:]
        attn_scores = torch.where(final_mask, attn_scores, self.IGNORE)
        pattern = F.softmax(attn_scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        v_ = v.permute(0, 2, 1, 3)  # [batch, head, key_pos, d_head]
        z = (pattern @ v_).permute(0, 2, 1, 3)  # [batch, query_pos, head, d_head]
        w_o = self.W_O.permute(2, 0, 1).reshape(
            self.W_O.shape[2], self.W_O.shape[0] * self.W_O.shape[1]
        )
        return F.linear(z.reshape(z.shape[0], z.shape[1], z.shape[2] * z.shape[3]), w_o, self.b_O)


class Block(nn.Module):
    """Attention-only residual block without normalization."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)

    def forward(
        self, resid_pre: Float[Tensor, "batch n_ctx d_model"]
    ) -> Float[Tensor, "batch n_ctx d_model"]:
        # TL adds 0.0 (its absent shortformer embedding) to the query and key inputs only.
        attn_out = self.attn(
            query_input=resid_pre + 0.0, key_input=resid_pre + 0.0, value_input=resid_pre
        )
        return resid_pre + attn_out


class Unembed(nn.Module):
    """Unembedding ``W_U [d_model, d_vocab]`` with bias ``b_U``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))

    def forward(
        self, residual: Float[Tensor, "batch n_ctx d_model"]
    ) -> Float[Tensor, "batch n_ctx d_vocab"]:
        size_out = residual.size()[:-1] + (self.W_U.shape[-1],)
        return torch.addmm(self.b_U, residual.view(-1, residual.size(-1)), self.W_U).view(size_out)


class AttnOnlyTransformer(nn.Module):
    """One layer, one head, attention only, no LayerNorm, causal attention scaled by sqrt(d_head).

    Biases exist (for TransformerLens-compatible state dicts), are zero and frozen
    (``requires_grad=False``). Weights are uninitialised until ``init_weights`` or
    ``from_weights``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.blocks = nn.ModuleList([Block(cfg)])
        self.unembed = Unembed(cfg)
        for name, param in self.named_parameters():
            if "b_" in name:
                param.requires_grad_(False)

    def forward(self, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, "batch n_ctx d_vocab"]:
        """Logits at every position."""
        residual = self.embed(tokens) + self.pos_embed(tokens)
        for block in self.blocks:
            residual = block(residual)
        return self.unembed(residual)


def init_weights(model: AttnOnlyTransformer, model_seed: int) -> AttnOnlyTransformer:
    """TransformerLens 2.9.1 ``init_weights`` in ``gpt2`` mode, without touching the global RNG.

    TL calls ``torch.manual_seed(seed)`` and then fills every parameter whose name contains
    ``W_``, in ``named_parameters()`` order (W_E, W_pos, W_Q, W_O, W_K, W_V, W_U), with
    ``normal_(0, 0.8 / sqrt(d_model))``; biases stay zero. A fresh ``torch.Generator`` seeded with
    ``model_seed`` produces the same stream as the seeded global generator.

    Args:
        model: the module to initialise in place.
        model_seed: the derived model seed, ``reseed(seed, "model")``.

    Returns:
        ``model``.
    """
    g = torch.Generator().manual_seed(model_seed)
    std = 0.8 / math.sqrt(model.cfg.d_model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "W_" in name:
                param.normal_(0.0, std, generator=g)
            else:
                param.zero_()
    return model


def build(cfg: ModelConfig, model_seed: int) -> AttnOnlyTransformer:
    """A freshly initialised model (``init_weights`` with ``model_seed``)."""
    return init_weights(AttnOnlyTransformer(cfg), model_seed)


def to_weights(model: AttnOnlyTransformer) -> Weights:
    """The model's weights as a ``Weights`` (validated: zero biases, float32, finite)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Weights.from_state_dict(sd)


def from_weights(weights: Weights) -> AttnOnlyTransformer:
    """A model holding exactly ``weights`` (biases zero and frozen)."""
    model = AttnOnlyTransformer(weights.config)
    model.load_state_dict(weights.to_state_dict(), strict=True)
    return model
