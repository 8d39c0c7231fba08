"""Safe loading of foreign checkpoints: a TransformerLens state dict in a ``.safetensors`` file or
a ``.pt``/``.pth`` file, plus the model's config.

Nothing is ever executed: ``.safetensors`` holds only tensors, and ``.pt``/``.pth`` files are read
only with ``torch.load(..., weights_only=True)`` (torch >= 2.6), whose unpickler builds tensors
and plain containers and refuses every other object. A file that needs anything else is refused
with ``ModelFormatError``, never unpickled.

A state dict alone does not say how the model computes: a parameter-free normalization
(``normalization_type="LNPre"``), bidirectional attention or an unscaled attention score leave no
trace in the tensors. So a config is required: a dict (``config=``), a JSON file (``config=path``),
a ``"config"`` dict stored next to ``"state_dict"`` in the checkpoint, or ``config.json`` /
``model.json`` beside the file. It holds ``HookedTransformerConfig`` fields; a missing field
takes TransformerLens's default (see ``interop.validate_tl_config``).
"""

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from compact_proofs import interop
from compact_proofs.errors import ModelFormatError, UnsupportedModelError
from compact_proofs.storage import FORMAT as OWN_FORMAT
from compact_proofs.weights import Weights

SUFFIXES = (".safetensors", ".pt", ".pth")
CONFIG_NAMES = ("config.json", "model.json")
_SAVE_HINT = "save a plain state dict (torch.save(model.state_dict(), path)) or safetensors"


def is_foreign(path: str | os.PathLike) -> bool:
    """True for files ``load_checkpoint`` should read rather than ``storage.load_model``:
    ``.pt``/``.pth`` files, and ``.safetensors`` files whose header lacks compact-proofs's own
    format marker (``storage.FORMAT``, which ``storage.save_model`` writes into the header;
    unreadable files count as foreign, so that ``load_checkpoint`` reports them)."""
    p = Path(path)
    if p.suffix in (".pt", ".pth"):
        return True
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        with safe_open(str(p), framework="pt") as f:
            return (f.metadata() or {}).get("format") != OWN_FORMAT
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return True


def load_checkpoint(
    path: str | os.PathLike, config: Mapping[str, Any] | str | os.PathLike | Any = None
) -> Weights:
    """Read, validate and squeeze a foreign checkpoint.

    Args:
        path: a ``.safetensors``, ``.pt`` or ``.pth`` file holding a TransformerLens 2.x state
            dict (``embed.W_E``, ``pos_embed.W_pos``, ``blocks.0.attn.W_Q`` ...) or a
            ``TransformerBridge`` one (``embed.weight``, ``blocks.0.attn.q.weight`` ...), or, in a
            ``.pt``/``.pth`` file, a dict with that state dict under ``"state_dict"`` (and
            optionally its config under ``"config"``).
        config: the model's ``HookedTransformerConfig`` fields: a dict, a config object with
            ``to_dict()``, or a JSON file path. ``None`` looks for a config inside the checkpoint,
            then for ``config.json`` / ``model.json`` beside it (a compact-proofs ``model.json``
            is read through its ``"config"`` entry).

    Returns:
        The weights; they satisfy every check of ``Weights`` and agree with the config.

    Raises:
        ModelFormatError: missing, empty, unreadable or unsafe files (a pickle that needs
            anything but tensors and plain containers), malformed state dicts, a missing or
            invalid config, or a config that disagrees with the tensors.
        UnsupportedModelError: a well-formed model outside ``interop.SUPPORTED``.
    """
    p = Path(path)
    _check_file(p)
    if p.suffix == ".safetensors":
        sd, embedded = _read_safetensors(p), None
    else:
        sd, embedded = _unwrap(_read_torch(p), p)
    cfg, where = _resolve_config(config, embedded, p)
    sizes = interop.validate_tl_config(cfg, where=where)
    try:
        if "embed.weight" in sd and "embed.W_E" not in sd:  # saved from a TransformerBridge
            sd = interop.bridge_to_tl_state_dict(sd)
        weights = Weights.from_state_dict(sd)
        _check_bias_shapes(sd, weights)
    except (ModelFormatError, UnsupportedModelError) as err:
        raise type(err)(f"{p}: {err}") from None
    interop.check_sizes(weights, sizes, where=where)
    return weights


# ------------------------------------------------------------------------------- reading
def _check_file(p: Path) -> None:
    if not p.exists():
        raise ModelFormatError(f"{p} does not exist; pass a .safetensors, .pt or .pth file")
    if p.is_dir():
        raise ModelFormatError(
            f"{p} is a directory; pass the checkpoint file itself (--config applies only to "
            "checkpoint files, not to model directories written by compact-proofs)"
        )
    if p.suffix not in SUFFIXES:
        raise ModelFormatError(
            f"{p} has an unsupported file type {p.suffix or '(none)'!r}; save the state dict as "
            ".safetensors (or .pt/.pth)"
        )
    if p.stat().st_size == 0:
        raise ModelFormatError(f"{p} is empty; save the model's state dict again")


def _read_safetensors(p: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        msg = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelFormatError(
            f"{p} is not a readable safetensors file ({msg}); re-save the state dict with "
            "safetensors.torch.save_file"
        ) from None


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def _read_torch(p: Path) -> Any:
    if not _torch_at_least(2, 6):  # weights_only loading had code-execution holes before 2.6
        raise ModelFormatError(
            f"{p}: reading .pt/.pth files safely needs torch >= 2.6 (found {torch.__version__}); "
            "convert the checkpoint to safetensors"
        )
    with open(p, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise ModelFormatError(
            f"{p} is not a torch checkpoint (neither a zip archive nor a pickle); {_SAVE_HINT}"
        )
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we refuse anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(str(err))
        raise ModelFormatError(
            f"{p}: refusing to unpickle arbitrary objects ({detail or 'not plain tensors'}); "
            f"{_SAVE_HINT}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        msg = (str(err).splitlines() or [type(err).__name__])[0][:120] or type(err).__name__
        raise ModelFormatError(
            f"{p} is not a readable torch checkpoint ({msg}); {_SAVE_HINT}"
        ) from None


def _unpickler_detail(message: str) -> str:
    """The line of torch's weights-only error that names the refused object or opcode: the one
    marked "WeightsUnpickler error:" if any (torch 2.6+ puts other advice first), else the first
    informative line after the first."""
    lines = message.splitlines()
    marked = [line for line in lines if "WeightsUnpickler error:" in line]
    for line in marked or lines[1:]:
        line = line.split("WeightsUnpickler error:")[-1].strip()
        if line and not line.startswith(("Check the documentation", "Please file an issue")):
            return line.split(". ")[0][:200]  # its first sentence
    return ""


def _unwrap(obj: Any, p: Path) -> tuple[dict[str, Tensor], Any]:
    embedded = None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        embedded = obj.get("config", obj.get("cfg"))
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelFormatError(f"{p} holds a {type(obj).__name__}, not a state dict; {_SAVE_HINT}")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ModelFormatError(f"{p}: state-dict key {k!r} is not a string; {_SAVE_HINT}")
        if not isinstance(v, Tensor):
            raise ModelFormatError(f"{p}: {k} is a {type(v).__name__}, not a tensor; {_SAVE_HINT}")
        if v.layout != torch.strided:
            raise ModelFormatError(f"{p}: {k} is a {v.layout} tensor; save dense tensors")
    return {k: v.detach() for k, v in obj.items()}, embedded


def _check_bias_shapes(sd: Mapping[str, Tensor], w: Weights) -> None:
    cfg = w.config
    want = {
        "blocks.0.attn.b_Q": (1, cfg.d_head),
        "blocks.0.attn.b_K": (1, cfg.d_head),
        "blocks.0.attn.b_V": (1, cfg.d_head),
        "blocks.0.attn.b_O": (cfg.d_model,),
        "unembed.b_U": (cfg.d_vocab,),
    }
    for k, shape in want.items():
        if k in sd and tuple(sd[k].shape) != shape:
            raise ModelFormatError(
                f"{k} has shape {tuple(sd[k].shape)}, expected {shape} from the weight shapes; "
                "the state dict is malformed"
            )


# ------------------------------------------------------------------------------- config
def _resolve_config(config: Any, embedded: Any, p: Path) -> tuple[dict[str, Any], str]:
    if config is None and embedded is not None:
        if not isinstance(embedded, Mapping):
            raise ModelFormatError(
                f"{p}: its 'config' entry is a {type(embedded).__name__}, not a dict"
            )
        return dict(embedded), f"{p} (its 'config' entry)"
    if config is None:
        found = [p.with_name(n) for n in CONFIG_NAMES if p.with_name(n).is_file()]
        if not found:
            raise ModelFormatError(
                f"{p}: no config found; write the model's HookedTransformerConfig fields to "
                f"{p.with_name('config.json')} (see interop.jsonable_config), or pass it with "
                "--config (config= in the API)"
            )
        config = found[0]
    if isinstance(config, str | os.PathLike):
        return _read_config_json(Path(config)), str(config)
    return interop.config_dict(config), "config"


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(
            f"{path} is not a readable JSON config ({err}); fix or rewrite it"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a compact-proofs model.json
    if not isinstance(data, dict):
        raise ModelFormatError(
            f"{path} holds a JSON {type(data).__name__}, not an object of config fields"
        )
    return data
