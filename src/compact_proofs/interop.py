"""TransformerLens interop: live models to ``Weights`` and back, with the architecture validated.

Works without TransformerLens installed (every TransformerLens import is local to the function
that needs it). Supported sources:

* ``HookedTransformer`` (TransformerLens 2.x and 3.x; removed in 4.0);
* ``TransformerBridge`` (3.x and 4.x), e.g. ``TransformerBridge.boot_native(cfg)``, also in
  compatibility mode (its processed weights are what it computes with, so they are what we read);
* our own ``compact_proofs.model.AttnOnlyTransformer``.

The proofs cover exactly one architecture (``SUPPORTED``). ``validate_tl_config`` refuses every
configuration flag that changes the computed function away from it, reading a missing field as
TransformerLens's default (so a config that omits ``attn_only`` describes a model with MLPs, as
it would in TransformerLens). Flags that only add hook points (``use_split_qkv_input``,
``use_attn_result``, ``use_attn_in``, ``use_hook_tokens``, ...) do not change the function and are
accepted. As defence in depth, ``from_transformer_lens`` then runs the model (on every input when
there are at most 1,024, else on 1,024 random ones and the constant sequences) and refuses it
unless its logits agree with the float64 forward pass of the extracted weights up to float32
round-off. That catches a feature the flag list does not know about when it shows on those
inputs: a sanity check, not a proof.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import Tensor

from compact_proofs.config import ModelConfig
from compact_proofs.errors import ModelFormatError, UnsupportedModelError, UserError
from compact_proofs.weights import Weights

SUPPORTED = (
    "one layer, one head, attention only (attn_only=True), no normalization, causal attention "
    "scaled by 1/sqrt(d_head), learned absolute positions ('standard'), all biases zero, "
    "float32, d_vocab_out == d_vocab"
)
INSTALL_HINT = "install it: pip install -e '.[tl]' in a clone, or pip install transformer-lens"

# TransformerLens defaults for fields a config may omit (HookedTransformerConfig 2.x and
# TransformerBridgeConfig agree on these).
TL_DEFAULTS: dict[str, Any] = {
    "n_heads": -1,
    "d_vocab": -1,
    "d_vocab_out": -1,
    "attn_only": False,
    "normalization_type": "LN",
    "attention_dir": "causal",
    "positional_embedding_type": "standard",
    "use_attn_scale": True,
    "attn_scale": -1.0,
    "dtype": "float32",
}

# Hugging Face names of config fields, with the TransformerLens field each stands for: a config
# written with them would otherwise be read as TransformerLens defaults.
HF_FIELDS: dict[str, str] = {
    "num_layers": "n_layers",
    "num_hidden_layers": "n_layers",
    "n_layer": "n_layers",
    "hidden_size": "d_model",
    "n_embd": "d_model",
    "num_attention_heads": "n_heads",
    "n_head": "n_heads",
    "vocab_size": "d_vocab",
    "max_position_embeddings": "n_ctx",
    "n_positions": "n_ctx",
}

# Flags that change the computed function: (field, "is harmless" test, what it means).
_REFUSED_FLAGS: tuple[tuple[str, Any, str], ...] = (
    ("final_rms", lambda v: not v, "an RMSNorm before the unembedding"),
    ("post_embedding_ln", lambda v: not v, "a LayerNorm after the embedding"),
    ("use_normalization_before_and_after", lambda v: not v, "extra normalization layers"),
    ("use_qk_norm", lambda v: not v, "normalization of queries and keys"),
    ("use_local_attn", lambda v: not v, "local (sliding-window) attention"),
    ("attn_types", lambda v: v is None or all(t == "global" for t in v), "local attention layers"),
    ("attn_scores_soft_cap", lambda v: v is None or v <= 0, "soft-capped attention scores"),
    ("output_logits_soft_cap", lambda v: v is None or v <= 0, "soft-capped output logits"),
    ("scale_embedding", lambda v: not v, "a scaled token embedding"),
    ("n_key_value_heads", lambda v: v in (None, 1), "grouped-query attention"),
    ("num_experts", lambda v: not v, "mixture-of-experts layers"),
    ("relative_attention_num_buckets", lambda v: v is None, "relative attention"),
    ("load_in_4bit", lambda v: not v, "4-bit quantized weights"),
    ("is_multimodal", lambda v: not v, "a multimodal model"),
    ("is_audio_model", lambda v: not v, "an audio model"),
    ("is_visual_model", lambda v: not v, "a vision model"),
    ("is_stateful", lambda v: not v, "a stateful (recurrent) model"),
    # Tied embeddings share one parameter between W_E and W_U: checkpoints then store W_U only as
    # an alias (or not at all) and training updated both roles at once. Refused so that a tied
    # model is never read with a stale or missing unembedding; untie it (W_U = W_E.T.clone()).
    ("tie_word_embeddings", lambda v: not v, "tied embeddings (W_U shares W_E's parameter)"),
    ("tied_embeddings", lambda v: not v, "tied embeddings (W_U shares W_E's parameter)"),
    # These leave no trace in the tensors and need not show on a few sampled inputs.
    ("clip_qkv", lambda v: v is None, "queries, keys and values clipped to [-clip_qkv, clip_qkv]"),
    ("use_logn_attn", lambda v: not v, "log-n scaled attention scores (in eval mode)"),
    ("use_attention_sinks", lambda v: not v, "attention sinks (a learned extra softmax logit)"),
    ("parallel_attn_mlp", lambda v: not v, "attention and MLP in parallel"),
    (
        "original_architecture",
        lambda v: v not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"),
        "OLMo-style normalization of queries and keys",
    ),
)

# TransformerBridge state-dict names (3.x/4.x, one head) -> (TransformerLens 2.x name, reshape).
_BRIDGE_KEYS: dict[str, tuple[str, Any]] = {
    "embed.weight": ("embed.W_E", lambda t: t),
    "pos_embed.weight": ("pos_embed.W_pos", lambda t: t),
    "blocks.0.attn.q.weight": ("blocks.0.attn.W_Q", lambda t: t.T[None]),
    "blocks.0.attn.k.weight": ("blocks.0.attn.W_K", lambda t: t.T[None]),
    "blocks.0.attn.v.weight": ("blocks.0.attn.W_V", lambda t: t.T[None]),
    "blocks.0.attn.o.weight": ("blocks.0.attn.W_O", lambda t: t.T[None]),
    "blocks.0.attn.q.bias": ("blocks.0.attn.b_Q", lambda t: t[None]),
    "blocks.0.attn.k.bias": ("blocks.0.attn.b_K", lambda t: t[None]),
    "blocks.0.attn.v.bias": ("blocks.0.attn.b_V", lambda t: t[None]),
    "blocks.0.attn.o.bias": ("blocks.0.attn.b_O", lambda t: t),
    "unembed.weight": ("unembed.W_U", lambda t: t.T),
    "unembed.bias": ("unembed.b_U", lambda t: t),
}


# ------------------------------------------------------------------------------- configuration
def config_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config: a mapping, a ``HookedTransformerConfig`` or
    ``TransformerBridgeConfig`` (via ``to_dict``), or another dataclass / object."""
    if isinstance(cfg, Mapping):
        return dict(cfg)
    to_dict = getattr(cfg, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return dict(out)
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if hasattr(cfg, "__dict__"):
        return dict(vars(cfg))
    raise ModelFormatError(
        f"cannot read a model config from a {type(cfg).__name__}; pass a dict of "
        "HookedTransformerConfig fields"
    )


def jsonable_config(cfg: Any) -> dict[str, Any]:
    """A config as JSON-serialisable fields, for a ``config.json`` beside a checkpoint.

    ``torch.dtype`` becomes e.g. ``"float32"``, devices and numpy scalars become plain values,
    and fields JSON cannot hold (tokenizers, callables) are dropped.
    """
    out: dict[str, Any] = {}
    for key, v in config_dict(cfg).items():
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif isinstance(v, torch.device):
            v = str(v)
        elif hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
            v = v.item()  # numpy / torch scalars
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[key] = v
    return out


def _is_float32(dtype: Any) -> bool:
    return dtype is torch.float32 or str(dtype) in ("float32", "torch.float32", "fp32")


def _int_field(cfg: Mapping[str, Any], key: str, where: str) -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        raise ModelFormatError(f"{where}: {key}={v!r} is not an integer; fix the config")
    return int(v)


def validate_tl_config(
    cfg: Mapping[str, Any], *, where: str = "config", check_dtype: bool = True
) -> dict[str, int]:
    """Check a TransformerLens-style config against ``SUPPORTED``.

    Missing fields take TransformerLens's defaults (e.g. ``attn_only=False``,
    ``normalization_type="LN"``), so a config must say ``attn_only: true`` and
    ``normalization_type: null`` explicitly.

    Args:
        cfg: ``HookedTransformerConfig`` / ``TransformerBridgeConfig`` fields as a mapping.
        where: names the source in error messages.
        check_dtype: refuse a ``dtype`` other than float32 (for a live model the tensors' own
            dtype is checked instead: a ``TransformerBridge`` may hold float32 weights while its
            config says otherwise).

    Returns:
        The sizes the config states, among ``d_vocab, n_ctx, d_model, d_head`` (an absent or
        ``-1`` size is left out; the tensors then define it).

    Raises:
        UnsupportedModelError: the config describes another architecture; the message names the
            feature and what is supported.
        ModelFormatError: a field has an unusable value.
    """
    foreign = [k for k in cfg if k in HF_FIELDS and HF_FIELDS[k] not in cfg]
    if foreign:
        named = ", ".join(f"{k} (TransformerLens: {HF_FIELDS[k]})" for k in foreign)
        raise ModelFormatError(
            f"{where}: not TransformerLens config fields: {named}; write the model's "
            "HookedTransformerConfig fields"
        )
    c = {**TL_DEFAULTS, **{k: v for k, v in cfg.items()}}
    if "n_layers" in cfg and cfg["n_layers"] is None:
        raise ModelFormatError(f"{where}: n_layers is null; write the number of layers (1)")
    n_layers = _int_field(c, "n_layers", where)
    if n_layers is not None and n_layers != 1:
        raise UnsupportedModelError(
            f"{where}: n_layers={n_layers}; only one-layer models are supported ({SUPPORTED})"
        )
    d_model, d_head = _int_field(c, "d_model", where), _int_field(c, "d_head", where)
    n_heads = _int_field(c, "n_heads", where)
    derived = ""
    if n_heads == -1 and d_model is not None and d_head:
        n_heads = d_model // d_head  # TransformerLens's rule for an unset n_heads
        derived = " (TransformerLens's d_model // d_head: the config does not set n_heads)"
    if n_heads not in (-1, 1, None):
        raise UnsupportedModelError(
            f"{where}: n_heads={n_heads}{derived}; only one-head models are supported ({SUPPORTED})"
        )
    if c["attn_only"] not in (True,):
        raise UnsupportedModelError(
            f"{where}: attn_only={c['attn_only']!r}{_default_note(cfg, 'attn_only')}, i.e. the "
            "model has MLP layers; only attention-only models are supported: set "
            "attn_only: true if the model has no MLP"
        )
    if c["normalization_type"] is not None:
        raise UnsupportedModelError(
            f"{where}: normalization_type={c['normalization_type']!r}"
            f"{_default_note(cfg, 'normalization_type')}; only models without normalization are "
            "supported: set normalization_type: null if the model has none"
        )
    if c["attention_dir"] != "causal":
        raise UnsupportedModelError(
            f"{where}: attention_dir={c['attention_dir']!r}; only causal attention is supported "
            f"({SUPPORTED})"
        )
    if c["positional_embedding_type"] != "standard":
        raise UnsupportedModelError(
            f"{where}: positional_embedding_type={c['positional_embedding_type']!r}; only learned "
            f"absolute positions ('standard') are supported ({SUPPORTED})"
        )
    for key, harmless, meaning in _REFUSED_FLAGS:
        if key in c and not harmless(c[key]):
            raise UnsupportedModelError(
                f"{where}: {key}={c[key]!r} means {meaning}, which the proofs do not model; "
                f"supported: {SUPPORTED}"
            )
    if d_head is not None:
        scale = float(c["attn_scale"]) if c["use_attn_scale"] else 1.0
        if c["use_attn_scale"] and scale == -1.0:
            scale = math.sqrt(d_head)  # TransformerLens's sentinel for the default
        if scale != math.sqrt(d_head):
            raise UnsupportedModelError(
                f"{where}: attention scores are divided by {scale!r} (use_attn_scale="
                f"{c['use_attn_scale']!r}, attn_scale={c['attn_scale']!r}) but the proofs assume "
                f"sqrt(d_head) = {math.sqrt(d_head)!r}; retrain with the default scale"
            )
    if check_dtype and not _is_float32(c["dtype"]):
        raise UnsupportedModelError(
            f"{where}: dtype={c['dtype']}; the proofs read float32 weights exactly: convert the "
            "model with model.to(torch.float32) and save it again (model.float() leaves "
            "cfg.dtype as it was; the bound is then about the float32-rounded weights)"
        )
    d_vocab, d_vocab_out = _int_field(c, "d_vocab", where), _int_field(c, "d_vocab_out", where)
    if d_vocab_out not in (None, -1) and d_vocab not in (None, -1) and d_vocab_out != d_vocab:
        raise UnsupportedModelError(
            f"{where}: d_vocab_out={d_vocab_out} differs from d_vocab={d_vocab}; Max-of-K reads "
            "and predicts the same tokens, so d_vocab_out must equal d_vocab"
        )
    sizes = {"d_vocab": d_vocab, "n_ctx": _int_field(c, "n_ctx", where), "d_model": d_model}
    sizes["d_head"] = d_head
    if sizes["d_vocab"] == -1:
        sizes["d_vocab"] = d_vocab_out if d_vocab_out not in (None, -1) else None
    return {k: v for k, v in sizes.items() if v is not None}


def _default_note(cfg: Mapping[str, Any], key: str) -> str:
    return "" if key in cfg else " (TransformerLens's default: the config does not set it)"


def check_sizes(weights: Weights, sizes: Mapping[str, int], *, where: str = "config") -> None:
    """Raise ``ModelFormatError`` if the config's sizes disagree with the tensors' shapes."""
    cfg = weights.config
    got = {"d_vocab": cfg.d_vocab, "n_ctx": cfg.n_ctx, "d_model": cfg.d_model, "d_head": cfg.d_head}
    for key, want in sizes.items():
        if got[key] != want:
            raise ModelFormatError(
                f"{where} says {key}={want} but the weights have {key}={got[key]}; the config "
                "and the tensors do not belong together"
            )


# ------------------------------------------------------------------------------- state dicts
def bridge_to_tl_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A one-head ``TransformerBridge`` state dict in TransformerLens 2.x names and shapes.

    Keys it does not know pass through unchanged, so ``Weights.from_state_dict`` names them
    (extra layers, MLP, LayerNorm, or unknown keys).
    """
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key in _BRIDGE_KEYS and isinstance(t, Tensor):
            name, reshape = _BRIDGE_KEYS[key]
            if t.ndim != (2 if key.endswith("weight") else 1):
                raise ModelFormatError(f"{key} has shape {tuple(t.shape)}; expected a linear layer")
            out[name] = reshape(t)
        else:
            out[key] = t
    return out


def tl_to_bridge_state_dict(weights: Weights) -> dict[str, Tensor]:
    """``weights`` in ``TransformerBridge`` (3.x/4.x native) names, zero biases included."""
    cfg = weights.config
    return {
        "embed.weight": weights.W_E.clone(),
        "pos_embed.weight": weights.W_pos.clone(),
        "blocks.0.attn.q.weight": weights.W_Q.T.contiguous(),
        "blocks.0.attn.q.bias": torch.zeros(cfg.d_head),
        "blocks.0.attn.k.weight": weights.W_K.T.contiguous(),
        "blocks.0.attn.k.bias": torch.zeros(cfg.d_head),
        "blocks.0.attn.v.weight": weights.W_V.T.contiguous(),
        "blocks.0.attn.v.bias": torch.zeros(cfg.d_head),
        "blocks.0.attn.o.weight": weights.W_O.T.contiguous(),
        "blocks.0.attn.o.bias": torch.zeros(cfg.d_model),
        "unembed.weight": weights.W_U.T.contiguous(),
        "unembed.bias": torch.zeros(cfg.d_vocab),
    }


def _kind(model: Any) -> str:
    from compact_proofs.model import AttnOnlyTransformer

    if isinstance(model, AttnOnlyTransformer):
        return "ours"
    names = {c.__name__ for c in type(model).__mro__}
    module = type(model).__module__ or ""
    if "HookedTransformer" in names:
        return "hooked"
    if "TransformerBridge" in names:
        return "bridge"
    if module.startswith("transformer_lens"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a HookedTransformer or TransformerBridge; only "
            f"decoder-only models of this kind are supported ({SUPPORTED})"
        )
    if isinstance(model, Mapping):  # most likely a state dict: it needs its config
        raise UserError(
            f"cannot read a model from a mapping ({type(model).__name__}) alone: if it is a state "
            "dict, save it with torch.save and pass the path with its config (config= in the "
            "API, --config on the command line), or load it into a HookedTransformer"
        )
    raise UserError(
        f"cannot read a model from an object of type {type(model).__name__}; pass a Weights, a "
        "model directory or checkpoint path, a TransformerLens HookedTransformer or "
        "TransformerBridge"
    )


def from_transformer_lens(model: Any, *, check_forward: bool = True) -> Weights:
    """The ``Weights`` of a live TransformerLens model, after validating its architecture.

    Args:
        model: a ``HookedTransformer`` (TL 2.x/3.x), a ``TransformerBridge`` (TL 3.x/4.x) or a
            ``compact_proofs.model.AttnOnlyTransformer``.
        check_forward: also run ``model`` on up to about a thousand inputs
            (``check_same_function``) and require its logits to match the float64 forward pass
            of the extracted weights up to float32 round-off.

    Returns:
        The float32 weights, copied to the CPU (the model is not modified).

    Raises:
        UnsupportedModelError: an architecture outside ``SUPPORTED`` (the message names it).
        ModelFormatError: tensors that disagree with the config, NaN/Inf, wrong dtypes.
        UserError: ``model`` is not a model this function knows.
    """
    from compact_proofs import model as model_mod

    kind = _kind(model)
    if kind == "ours":
        return model_mod.to_weights(model)
    where = f"{type(model).__name__}.cfg"
    sizes = validate_tl_config(config_dict(model.cfg), where=where, check_dtype=False)
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    if kind == "bridge":
        sd = bridge_to_tl_state_dict(sd)
    weights = Weights.from_state_dict(sd)
    check_sizes(weights, sizes, where=where)
    if check_forward:
        check_same_function(model, weights)
    return weights


def check_same_function(model: Any, weights: Weights, n_inputs: int = 1024) -> None:
    """Refuse ``model`` unless it computes the supported architecture's logits for ``weights``.

    Compares ``model(tokens)`` at every position with the float64 forward pass of ``weights``
    on every input when there are at most ``n_inputs``, else on ``n_inputs`` random sequences
    (a fixed ``torch.Generator``; global RNG untouched) and the d_vocab constant sequences. The
    tolerance is float32 round-off: ``1e-4 * (1 + max |logit|)`` plus 32 times the error of our
    own float32 forward pass on the same inputs. A sanity check, not a proof: a feature that
    changes only inputs it does not try goes unseen (``validate_tl_config`` refuses the known
    ones by their config fields).
    """
    from compact_proofs import model as model_mod
    from compact_proofs.task import index_to_tokens

    cfg = weights.config
    if cfg.n_inputs <= n_inputs:
        tokens = index_to_tokens(torch.arange(cfg.n_inputs), cfg.d_vocab, cfg.n_ctx)
    else:
        gen = torch.Generator().manual_seed(0)
        sampled = torch.randint(0, cfg.d_vocab, (n_inputs, cfg.n_ctx), generator=gen)
        constant = torch.arange(cfg.d_vocab)[:, None].expand(-1, cfg.n_ctx)
        tokens = torch.cat([sampled, constant])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        got = model(tokens.to(device))
        if isinstance(got, tuple | list):
            got = got[0]
        got = getattr(got, "logits", got).detach().to("cpu", torch.float64)
        ref = model_mod.from_weights(weights).double()(tokens)
        ours = model_mod.from_weights(weights)(tokens).double()
    if tuple(got.shape) != tuple(ref.shape):
        raise UnsupportedModelError(
            f"the model returns logits of shape {tuple(got.shape)} for {tuple(tokens.shape)} "
            f"tokens, expected {tuple(ref.shape)}; supported: {SUPPORTED}"
        )
    tol = 1e-4 * (1.0 + ref.abs().max().item()) + 32.0 * (ours - ref).abs().max().item()
    err = (got - ref).abs().max().item()
    if not err <= tol:
        raise UnsupportedModelError(
            f"the model's logits differ from those of its extracted weights by {err:.3g} "
            f"(float32 round-off allows {tol:.3g}): a forward hook, a patched module or a "
            f"feature the proofs do not model changes its output; supported: {SUPPORTED}"
        )


# ------------------------------------------------------------------------------- to TransformerLens
def _import_tl() -> Any:
    try:
        import transformer_lens
    except ImportError:
        raise UserError(f"TransformerLens is not installed; {INSTALL_HINT}") from None
    return transformer_lens


def _freeze_biases(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("b_") or leaf == "bias":
            p.requires_grad_(False)


def to_hooked_transformer(weights: Weights) -> Any:
    """A TransformerLens model computing exactly ``weights``: a ``HookedTransformer`` on TL
    2.x/3.x, a ``TransformerBridge`` on TL 4.x (which removed ``HookedTransformer``).

    The model is on the CPU in float32 with zero biases that are frozen
    (``requires_grad=False``), so further training keeps it inside the supported class. The
    global RNG is not used (no weight initialisation runs).
    """
    _import_tl()
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:  # TransformerLens 4.x
        return to_transformer_bridge(weights)
    cfg = weights.config
    tl_cfg = HookedTransformerConfig(**_tl_config_kwargs(cfg), device="cpu", dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        model = HookedTransformer(tl_cfg)
    missing, unexpected = model.load_state_dict(weights.to_state_dict(), strict=False)
    if unexpected or any(not k.endswith(("attn.mask", "attn.IGNORE")) for k in missing):
        raise RuntimeError(f"TransformerLens layout changed: missing {missing}, extra {unexpected}")
    _freeze_biases(model)
    return model.eval()


def to_transformer_bridge(weights: Weights) -> Any:
    """A native ``TransformerBridge`` (TransformerLens 3.x/4.x) computing exactly ``weights``."""
    _import_tl()
    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise UserError(
            "this TransformerLens has no TransformerBridge (it arrived in 3.0); use "
            "to_hooked_transformer, or upgrade TransformerLens"
        ) from None
    tl_cfg = TransformerBridgeConfig(
        **_tl_config_kwargs(weights.config), architecture="TransformerLensNative"
    )
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from it
        bridge = TransformerBridge.boot_native(tl_cfg, device="cpu", dtype=torch.float32)
    bridge.load_state_dict(tl_to_bridge_state_dict(weights), strict=True)
    _freeze_biases(bridge)
    return bridge.eval()


def _tl_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "n_layers": 1,
        "n_heads": 1,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
        "attn_only": True,
        "normalization_type": None,
        "positional_embedding_type": "standard",
        "init_weights": False,
    }
