"""Model directories: ``model.safetensors`` (TransformerLens 2.x state dict) + ``model.json``
(design.md "Artefacts and formats").

Saving is atomic: both files are written into a temporary sibling directory that is renamed into
place, so a failure never leaves a half-written model. Loading validates everything and raises
``ModelFormatError`` / ``UnsupportedModelError`` with one-line messages naming the problem and the
fix. Nothing is ever unpickled.
"""

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from compact_proofs.config import TrainConfig, reseed
from compact_proofs.errors import ModelFormatError, UnsupportedModelError, UserError
from compact_proofs.weights import BIAS_KEYS, WEIGHT_KEYS, Weights

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT = "compact-proofs-model"
FORMAT_VERSION = 1
# model.json keys computed by save_model; ``metadata`` may not set them.
RESERVED_KEYS = frozenset(
    {
        "format",
        "format_version",
        "config",
        "weights_sha256",
        "safetensors_sha256",
        "package_version",
        "torch_version",
    }
)
_SAFETENSORS_DTYPE = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16"}


def package_version() -> str:
    try:
        return importlib_metadata.version("compact-proofs")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` by ``write(tmp)`` on a hidden temporary sibling ``.NAME.*.tmp``, fsync
    and ``os.replace``: readers see the old file or the complete new one, never a partial one.
    A failed write removes its temporary; a killed one leaves it (sweeps remove those)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hooked_transformer_config(weights: Weights, model_seed: int | None) -> dict[str, Any]:
    """The model's shape in ``HookedTransformerConfig`` field names."""
    cfg = weights.config
    return {
        "n_layers": 1,
        "n_heads": 1,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab_out,
        "n_ctx": cfg.n_ctx,
        "attn_only": True,
        "d_mlp": None,
        "act_fn": None,
        "normalization_type": None,
        "positional_embedding_type": "standard",
        "attention_dir": "causal",
        "use_attn_scale": True,
        "init_mode": "gpt2",
        "dtype": "float32",
        "seed": model_seed,
    }


def training_recipe(train_cfg: TrainConfig) -> dict[str, Any]:
    """The training recipe as stored in model.json."""
    from compact_proofs.train import EPS  # local import: storage does not need torch.optim

    return {
        **asdict(train_cfg),
        "betas": list(train_cfg.betas),
        "optimizer": "AdamW",
        "eps": EPS,
        "loss": "mean cross-entropy at the last position, log1p log-softmax",
        "init": "TransformerLens 2.x gpt2: N(0, (0.8/sqrt(d_model))^2) for W_* in parameter order",
        "data": "one pass over uniform random sequences from torch.Generator(train_seed)",
        "frozen_zero_biases": True,
    }


def _build_meta(
    weights: Weights, sha_file: str, metadata: dict, train_cfg: TrainConfig | None
) -> dict:
    clash = sorted(RESERVED_KEYS & set(metadata))
    if clash:
        raise ValueError(f"metadata may not set {clash}: save_model computes them")
    k = metadata.get("k", weights.config.n_ctx)
    if k != weights.config.n_ctx:
        raise ValueError(f"metadata k={k} does not match the weights' n_ctx={weights.config.n_ctx}")
    seed = train_cfg.seed if train_cfg is not None else metadata.get("seed")
    seeds = None
    if train_cfg is not None:
        seeds = {
            "model": train_cfg.model_seed,
            "dataset": train_cfg.dataset_seed,
            "train": train_cfg.train_seed,
            "test": train_cfg.test_seed,
        }
    elif isinstance(seed, int):
        ds = reseed(seed, "dataset_seed")
        seeds = {
            "model": reseed(seed, "model"),
            "dataset": ds,
            "train": reseed(ds, "train"),
            "test": reseed(ds, "test"),
        }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": hooked_transformer_config(weights, None if seeds is None else seeds["model"]),
        "task": "max_of_k",
        "k": weights.config.n_ctx,
        "seed": seed,
        "seeds": seeds,
    }
    if train_cfg is not None:
        meta["training"] = training_recipe(train_cfg)
    meta.update(metadata)
    meta.update(
        package_version=package_version(),
        torch_version=torch.__version__,
        weights_sha256=weights.sha256(),
        safetensors_sha256=sha_file,
    )
    return meta


def save_model(
    weights: Weights,
    out_dir: str | os.PathLike,
    *,
    metadata: dict[str, Any],
    train_cfg: TrainConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically.

    Args:
        weights: the weights to store (saved as the TransformerLens 2.x state dict, zero biases
            included, no mask buffers).
        out_dir: the directory to create.
        metadata: extra JSON-serialisable entries for model.json (e.g. ``task``, ``k``, ``seed``,
            training statistics); they may not set the computed keys in ``RESERVED_KEYS``.
        train_cfg: the training recipe and seeds, recorded when given.
        overwrite: replace an existing model directory (one holding only model files).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        UserError: ``out_dir`` exists and ``overwrite`` is false, or it is not a model directory.
        ValueError: bad ``metadata``.
    """
    out = Path(out_dir)
    if out.exists():
        _check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        sd = {k: v.contiguous() for k, v in weights.to_state_dict().items()}
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        meta = _build_meta(weights, file_sha256(tmp / WEIGHTS_FILE), metadata, train_cfg)
        text = json.dumps(_jsonable(meta), indent=2, allow_nan=False) + "\n"
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if not overwrite:
        raise UserError(
            f"{out} already exists; choose another output path or pass overwrite=True (--overwrite)"
        )
    if not out.is_dir():
        raise UserError(
            f"{out} exists and is not a directory; remove it or choose another output path"
        )
    extra = sorted(p.name for p in out.iterdir() if p.name not in (WEIGHTS_FILE, META_FILE))
    if extra:
        raise UserError(
            f"{out} holds files other than a model ({', '.join(extra[:3])}); "
            "refusing to replace it: "
            "choose another output path"
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    # mkdtemp creates 0700 directories and safetensors 0600 files; publish with ordinary modes.
    os.chmod(tmp, 0o755)
    for name in (WEIGHTS_FILE, META_FILE):
        os.chmod(tmp / name, 0o644)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "model")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "model", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def load_model(path: str | os.PathLike) -> tuple[Weights, dict[str, Any]]:
    """Read and validate a model directory or a ``.safetensors`` file.

    Args:
        path: a model directory (holding ``model.safetensors`` and usually ``model.json``) or a
            ``.safetensors`` file (its sibling ``model.json`` is used when the file is
            ``model.safetensors``).

    Returns:
        ``(weights, meta)``; ``meta`` is model.json's content, or ``{}`` without one.

    Raises:
        ModelFormatError: missing or malformed files, wrong keys, shapes or dtypes, NaN/Inf values,
            or a sha256 that does not match model.json.
        UnsupportedModelError: a well-formed model of an architecture the proofs do not cover
            (several layers or heads, MLP, LayerNorm, nonzero biases), or a task other than
            Max-of-K in model.json.
    """
    weights_path, meta_path = _resolve(Path(path))
    meta = _read_meta(meta_path) if meta_path is not None else {}
    if meta:
        _check_meta_config(meta, meta_path)
        _check_file_digest(meta, weights_path, meta_path)  # first: corruption is named as such
    sd = _read_safetensors(weights_path)
    _check_shapes(sd, weights_path)
    try:
        weights = Weights.from_state_dict(sd)
    except (ModelFormatError, UnsupportedModelError) as err:
        raise type(err)(f"{weights_path}: {err}") from None
    if meta:
        _check_against_meta(weights, meta, weights_path, meta_path)
    return weights, meta


def _resolve(p: Path) -> tuple[Path, Path | None]:
    if not p.exists():
        raise ModelFormatError(
            f"{p} does not exist; pass a model directory (with {WEIGHTS_FILE}), "
            "a .safetensors file, or a TransformerLens .pt/.pth state dict"
        )
    if p.is_dir():
        w = p / WEIGHTS_FILE
        if not w.is_file():
            found = sorted(
                f.name
                for f in p.iterdir()
                if f.suffix in (".safetensors", ".pt", ".pth") and not _is_certificate_file(f)
            )
            hint = f" (it holds {', '.join(found[:3])}: pass that file instead)" if found else ""
            raise ModelFormatError(
                f"{p} has no {WEIGHTS_FILE}{hint}; pass a directory written by "
                "`compact-proofs train`, a .safetensors file, or a .pt/.pth state dict"
            )
        m = p / META_FILE
        return w, (m if m.exists() else None)
    if p.suffix != ".safetensors":
        raise ModelFormatError(
            f"{p} is not a model directory, .safetensors, .pt or .pth file; "
            "save the model as a TransformerLens state dict in one of those formats"
        )
    m = p.with_name(META_FILE)
    return p, (m if p.name == WEIGHTS_FILE and m.exists() else None)


def refuse_file_on_path(directory: Path, what: str) -> None:
    """UserError (before anything is written) when ``directory`` or one of its parents is an
    existing file: it could not be created."""
    for path in (directory, *directory.parents):
        if path.exists() and not path.is_dir():
            raise UserError(f"{what} {path} exists and is not a directory; choose another --out")


def safetensors_format(path: Path) -> str | None:
    """The ``format`` entry of a safetensors file's metadata; None if it has none or the file
    is not readable safetensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        return None


def _is_certificate_file(path: Path) -> bool:
    """A proof certificate's tensor file (not a model)."""
    from compact_proofs.certificates import FORMAT  # certificates imports this module

    return path.suffix == ".safetensors" and safetensors_format(path) == FORMAT


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(
            f"{path} is not valid JSON ({err}); restore it or delete it to load the weights alone"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ModelFormatError(
            f"{path} has no 'config' object; restore it or delete it to load the weights alone"
        )
    return meta


def _check_meta_config(meta: dict, path: Path) -> None:
    task = meta.get("task", "max_of_k")
    if task != "max_of_k":
        raise UnsupportedModelError(
            f"{path}: the model's task is {task!r}; the proofs cover Max-of-K ('max_of_k') only"
        )
    cfg = meta["config"]
    if cfg.get("n_layers", 1) != 1:
        raise UnsupportedModelError(
            f"{path}: the model has n_layers={cfg['n_layers']}; only one-layer models are supported"
        )
    if cfg.get("n_heads", 1) != 1:
        raise UnsupportedModelError(
            f"{path}: the model has n_heads={cfg['n_heads']}; only one-head models are supported"
        )
    if cfg.get("attn_only", True) is not True or cfg.get("d_mlp") is not None:
        raise UnsupportedModelError(
            f"{path}: the model has MLP layers; only attention-only models are supported"
        )
    if cfg.get("normalization_type") is not None:
        raise UnsupportedModelError(
            f"{path}: the model has normalization_type={cfg['normalization_type']!r}; "
            "only models without "
            "LayerNorm are supported"
        )
    for key, want in (("positional_embedding_type", "standard"), ("attention_dir", "causal")):
        if cfg.get(key, want) != want:
            raise UnsupportedModelError(
                f"{path}: {key}={cfg[key]!r} is not supported (need {want!r})"
            )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            for k in keys:
                if k in WEIGHT_KEYS or k in BIAS_KEYS:
                    dt = f.get_slice(k).get_dtype()
                    if dt != "F32":
                        name = _SAFETENSORS_DTYPE.get(dt, dt)
                        raise ModelFormatError(
                            f"{path}: {k} has dtype {name}; the proofs read float32 weights "
                            "exactly: "
                            "convert the model with .float() and save it again"
                        )
            return {k: f.get_tensor(k) for k in keys}
    except ModelFormatError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelFormatError(
            f"{path} is not a readable safetensors file ({msg}); re-save the model with safetensors"
        ) from None


def _check_shapes(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Every present weight and bias has the shape W_E, W_pos and W_Q imply; one head.

    Extra layers, MLPs and LayerNorm are left to ``Weights.from_state_dict``."""
    E, P, Q = (sd.get(k) for k in ("embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q"))
    if not all(isinstance(t, torch.Tensor) for t in (E, P, Q)):
        return  # a missing key: from_state_dict names it
    for key, t, ndim in (
        ("embed.W_E", E, 2),
        ("pos_embed.W_pos", P, 2),
        ("blocks.0.attn.W_Q", Q, 3),
    ):
        if t.ndim != ndim:
            raise ModelFormatError(
                f"{path}: {key} has shape {tuple(t.shape)}, expected {ndim} dimensions; "
                "the file is malformed"
            )
    (V, d), n, (h, dh) = E.shape, P.shape[0], (Q.shape[0], Q.shape[2])
    if h != 1:
        raise UnsupportedModelError(
            f"{path}: blocks.0.attn.W_Q has {h} heads; only one-head models are supported"
        )
    want = {
        "pos_embed.W_pos": (n, d),
        "blocks.0.attn.W_Q": (h, d, dh),
        "blocks.0.attn.W_K": (h, d, dh),
        "blocks.0.attn.W_V": (h, d, dh),
        "blocks.0.attn.W_O": (h, dh, d),
        "unembed.W_U": (d, V),
        "blocks.0.attn.b_Q": (h, dh),
        "blocks.0.attn.b_K": (h, dh),
        "blocks.0.attn.b_V": (h, dh),
        "blocks.0.attn.b_O": (d,),
        "unembed.b_U": (V,),
    }
    for k, shape in want.items():
        t = sd.get(k)
        if isinstance(t, torch.Tensor) and tuple(t.shape) != shape:
            raise ModelFormatError(
                f"{path}: {k} has shape {tuple(t.shape)}, expected {shape} (from embed.W_E "
                f"{tuple(E.shape)}, pos_embed.W_pos and W_Q); the file is malformed"
            )


def _check_file_digest(meta: dict, weights_path: Path, meta_path: Path) -> None:
    sha = meta.get("safetensors_sha256")
    if sha is None:
        return
    try:
        digest = file_sha256(weights_path)
    except OSError as err:
        raise ModelFormatError(f"{weights_path} cannot be read ({err.strerror})") from None
    if sha != digest:
        raise ModelFormatError(
            f"{weights_path} does not match the sha256 recorded in {meta_path}; "
            "the file was modified or corrupted: restore it or re-train the model"
        )


def _check_against_meta(
    weights: Weights, meta: dict, weights_path: Path, meta_path: Path | None
) -> None:
    cfg, want = weights.config, meta["config"]
    got = {
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab_out,
        "n_ctx": cfg.n_ctx,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
    }
    for key, value in got.items():
        if key in want and want[key] != value:
            raise ModelFormatError(
                f"{weights_path}: weights imply {key}={value} but {meta_path} says {want[key]}; "
                "the files do not belong together: re-save the model"
            )
    wsha = meta.get("weights_sha256")
    if wsha is not None and wsha != weights.sha256():
        raise ModelFormatError(
            f"{weights_path}: weight values do not match weights_sha256 in {meta_path}; "
            "restore the file or re-train"
        )


def _jsonable(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, tuples become lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
