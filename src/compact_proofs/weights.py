"""The weights of a one-layer, one-head, attention-only transformer, in the squeezed layout the
proofs use, and the single conversion point from/to TransformerLens 2.x state-dict names.

Shape glossary: ``d_vocab`` tokens, ``n_ctx`` positions, ``d_model`` residual width, ``d_head``
head width. Biases are not stored: the model class we prove about has all biases exactly zero,
which ``from_state_dict`` checks.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.errors import ModelFormatError, UnsupportedModelError

# TransformerLens 2.x state-dict keys of a 1-layer attention-only model without LayerNorm.
WEIGHT_KEYS = (
    "embed.W_E",
    "pos_embed.W_pos",
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_K",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "unembed.W_U",
)
BIAS_KEYS = (
    "blocks.0.attn.b_Q",
    "blocks.0.attn.b_K",
    "blocks.0.attn.b_V",
    "blocks.0.attn.b_O",
    "unembed.b_U",
)
# Buffers TransformerLens keeps in its state dict; they carry no parameters and are ignored.
IGNORED_BUFFER_SUFFIXES = ("attn.mask", "attn.IGNORE")


@dataclass(frozen=True, eq=False)
class Weights:
    """Float32 CPU weights of the model, squeezed to one layer and one head.

    The proofs read these float32 values as exact real numbers.
    """

    W_E: Float[Tensor, "d_vocab d_model"]
    W_pos: Float[Tensor, "n_ctx d_model"]
    W_Q: Float[Tensor, "d_model d_head"]
    W_K: Float[Tensor, "d_model d_head"]
    W_V: Float[Tensor, "d_model d_head"]
    W_O: Float[Tensor, "d_head d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]

    def __post_init__(self) -> None:
        for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U"):
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise ModelFormatError(f"{name} must be a torch tensor, got {type(t).__name__}")
            if t.dtype != torch.float32:
                raise ModelFormatError(
                    f"{name} must be float32, got {t.dtype}; convert with .float()"
                )
            if t.ndim != 2:
                raise ModelFormatError(
                    f"{name} must be 2-D after squeezing, got shape {tuple(t.shape)}"
                )
            if not bool(torch.isfinite(t).all()):
                raise ModelFormatError(
                    f"{name} contains NaN or Inf values; a proof needs finite weights"
                )
        V, d = self.W_E.shape
        n = self.W_pos.shape[0]
        dh = self.W_Q.shape[1]
        expected = {
            "W_pos": (n, d),
            "W_Q": (d, dh),
            "W_K": (d, dh),
            "W_V": (d, dh),
            "W_O": (dh, d),
            "W_U": (d, V),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                out_vocab = (
                    " (the output vocabulary must be the input vocabulary)"
                    if name == "W_U" and got[0] == d
                    else ""
                )
                raise ModelFormatError(
                    f"the weight shapes disagree: {name} is {got}, but W_E {tuple(self.W_E.shape)}"
                    f" read as [d_vocab, d_model] makes it {shape}{out_vocab}; the layout is "
                    "TransformerLens's: W_E [d_vocab, d_model], W_pos [n_ctx, d_model], "
                    "W_Q, W_K, W_V [d_model, d_head], W_O [d_head, d_model], W_U [d_model, d_vocab]"
                )
        ModelConfig(d_vocab=V, n_ctx=n, d_model=d, d_head=dh)  # validates the sizes

    @property
    def config(self) -> ModelConfig:
        V, d = self.W_E.shape
        return ModelConfig(
            d_vocab=int(V),
            n_ctx=int(self.W_pos.shape[0]),
            d_model=int(d),
            d_head=int(self.W_Q.shape[1]),
        )

    def tensors(self) -> dict[str, Tensor]:
        """The seven weight matrices by their short names."""
        return {
            name: getattr(self, name)
            for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")
        }

    def sha256(self) -> str:
        """Digest of the exact float32 values (and shapes), independent of file layout."""
        h = hashlib.sha256()
        for name, t in self.tensors().items():
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def to_state_dict(self) -> dict[str, Tensor]:
        """TransformerLens 2.x state dict (head dimension restored, zero biases, no buffers)."""
        cfg = self.config
        z = torch.zeros
        return {
            "embed.W_E": self.W_E.clone(),
            "pos_embed.W_pos": self.W_pos.clone(),
            "blocks.0.attn.W_Q": self.W_Q[None].clone(),
            "blocks.0.attn.W_K": self.W_K[None].clone(),
            "blocks.0.attn.W_V": self.W_V[None].clone(),
            "blocks.0.attn.W_O": self.W_O[None].clone(),
            "blocks.0.attn.b_Q": z(1, cfg.d_head),
            "blocks.0.attn.b_K": z(1, cfg.d_head),
            "blocks.0.attn.b_V": z(1, cfg.d_head),
            "blocks.0.attn.b_O": z(cfg.d_model),
            "unembed.W_U": self.W_U.clone(),
            "unembed.b_U": z(cfg.d_vocab),
        }

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor]) -> "Weights":
        """Validate a TransformerLens-style state dict and squeeze it to ``Weights``.

        Raises ``UnsupportedModelError`` for architectures the proofs do not cover (extra layers,
        MLPs, LayerNorm, several heads, nonzero biases) and ``ModelFormatError`` for malformed ones.
        """
        sd = _ungrouped(sd)
        keys = {k for k in sd if not k.endswith(IGNORED_BUFFER_SUFFIXES)}
        _refuse_unsupported_keys(keys)
        missing = [k for k in WEIGHT_KEYS if k not in keys]
        if missing:
            raise ModelFormatError(
                f"state dict is missing {', '.join(missing)}; expected TransformerLens 2.x names"
            )
        unknown = sorted(keys - set(WEIGHT_KEYS) - set(BIAS_KEYS))
        if unknown:
            raise ModelFormatError(
                f"state dict has unknown keys {unknown[:5]}; expected only "
                f"{list(WEIGHT_KEYS)} and zero biases"
            )
        for k in BIAS_KEYS:
            if k in keys:
                b = sd[k]
                if not isinstance(b, Tensor) or not bool(torch.isfinite(b).all()):
                    raise ModelFormatError(f"{k} is not a finite tensor")
                if bool((b != 0).any()):
                    raise UnsupportedModelError(
                        f"{k} is nonzero (max |b| = {b.abs().max().item():.3g}); the proofs "
                        "need all biases exactly zero (train with frozen zero biases)"
                    )
        heads = {}
        for k in (
            "blocks.0.attn.W_Q",
            "blocks.0.attn.W_K",
            "blocks.0.attn.W_V",
            "blocks.0.attn.W_O",
        ):
            t = sd[k]
            if not isinstance(t, Tensor) or t.ndim != 3:
                raise ModelFormatError(
                    f"{k} must have shape [n_heads, ., .], got {getattr(t, 'shape', None)}"
                )
            if t.shape[0] != 1:
                raise UnsupportedModelError(
                    f"{k} has {t.shape[0]} heads; only one-head models are supported"
                )
            heads[k] = t[0]

        def f32(t: Tensor, name: str) -> Tensor:
            if not isinstance(t, Tensor):
                raise ModelFormatError(f"{name} is not a tensor")
            if not t.dtype.is_floating_point:
                raise ModelFormatError(f"{name} has dtype {t.dtype}; expected float32")
            if t.dtype != torch.float32:
                raise ModelFormatError(
                    f"{name} has dtype {t.dtype}; the proofs read float32 weights exactly: "
                    "convert the model with model.to(torch.float32) first"
                )
            return t.detach().to("cpu").contiguous()

        weights = cls(
            W_E=f32(sd["embed.W_E"], "embed.W_E"),
            W_pos=f32(sd["pos_embed.W_pos"], "pos_embed.W_pos"),
            W_Q=f32(heads["blocks.0.attn.W_Q"], "blocks.0.attn.W_Q"),
            W_K=f32(heads["blocks.0.attn.W_K"], "blocks.0.attn.W_K"),
            W_V=f32(heads["blocks.0.attn.W_V"], "blocks.0.attn.W_V"),
            W_O=f32(heads["blocks.0.attn.W_O"], "blocks.0.attn.W_O"),
            W_U=f32(sd["unembed.W_U"], "unembed.W_U"),
        )
        _check_causal_mask(sd.get("blocks.0.attn.mask"), weights.config.n_ctx)
        return weights


def _check_causal_mask(mask: Any, n_ctx: int) -> None:
    """TransformerLens 2.x attends through the ``attn.mask`` buffer it saves. The proofs read
    only the last position, so only that row matters; still, a buffer other than the causal
    [n_ctx, n_ctx] lower triangle means the file is not the model its config describes, so it
    is refused (a deliberately conservative choice)."""
    if mask is None or (isinstance(mask, Tensor) and mask.numel() == 0):
        return  # none, or TransformerLens 3.x's empty placeholder (built causal when used)
    causal = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))
    ok = isinstance(mask, Tensor) and tuple(mask.shape) == (n_ctx, n_ctx)
    if not (ok and bool(((mask == 0) | (mask == 1)).all()) and torch.equal(mask.bool(), causal)):
        raise UnsupportedModelError(
            "blocks.0.attn.mask is not the causal mask (the lower triangle of an "
            f"[{n_ctx}, {n_ctx}] matrix of ones), so the file is not the causal model its config "
            "describes; save the model's state dict without changing its mask buffer"
        )


def _ungrouped(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """TransformerLens's grouped-query attention stores keys and values as ``_W_K``, ``_W_V``,
    ``_b_K``, ``_b_V`` (one entry per key/value head). With one key/value head and one query
    head (the only case the config check admits) it is ordinary attention: read them under
    the usual names. More heads are refused later by the head count."""
    attn = "blocks.0.attn."
    if f"{attn}W_K" in sd or f"{attn}_W_K" not in sd:
        return sd
    names = {f"{attn}_{w}": f"{attn}{w}" for w in ("W_K", "W_V", "b_K", "b_V")}
    return {names.get(k, k): v for k, v in sd.items()}


def _refuse_unsupported_keys(keys: set[str]) -> None:
    if any(k.startswith("blocks.") and not k.startswith("blocks.0.") for k in keys):
        raise UnsupportedModelError(
            "the model has more than one layer; only one-layer models are supported"
        )
    if any(".mlp." in k for k in keys):
        raise UnsupportedModelError(
            "the model has MLP layers; only attention-only models are supported"
        )
    if any(".ln" in k or k.startswith("ln_final") for k in keys):
        raise UnsupportedModelError(
            "the model has LayerNorm; only models without normalization are supported"
        )
