"""Proof certificates on disk: everything a check needs beyond the model's weights.

A certificate is two files written together:

* ``cert.json`` (the path you name): format marker and version, strategy name and its checker's
  revision (``Strategy.revision``, named in a refusal when it differs), the stated bound
  (``correct_count`` of ``total`` inputs), the model's ``Weights.sha256()``, its shape, the
  certificate's non-tensor entries, the name and sha256 of the tensor file, and informative
  fields (FLOPs, package version, when it was written);
* ``cert.safetensors`` (beside it; for a path not ending in ``.json``, ``<name>.safetensors``):
  the certificate's tensors.

``check_certificate`` re-runs only the strategy's trusted ``check`` (never its search) on the
stored certificate and confirms the stated bound, or refuses it with a ``CertificateError``
naming the reason. The trusted base is documented in docs/certificates.md.

Claim: if ``check_certificate(model, path)`` returns, at least ``stated correct_count`` inputs
of ``model`` are classified correctly (exact real forward pass, ties wrong).
Proof: it returns only if (1) the model's sha256 equals the certificate's, (2) the strategy
named is registered (or is an ``adaptive-budget-<N>`` name), and (3) that strategy's trusted
``check`` on (weights, certificate) proves ``correct_count >= stated``; the checkers'
soundness contract (every registered checker is sound for *any* certificate: a bad certificate
only loosens the bound or is rejected) gives the claim. Nothing else in the files is trusted:
the digests and the version only turn corrupted or foreign files into clear refusals.      QED
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from compact_proofs.core.ledger import FlopLedger
from compact_proofs.core.result import ProofResult
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import ProofPreconditionError, UserError
from compact_proofs.proofs.protocol import Certificate, Strategy
from compact_proofs.storage import atomic_write, file_sha256, safetensors_format
from compact_proofs.threads import resolve, torch_threads
from compact_proofs.weights import Weights

FORMAT = "compact-proofs-certificate"
FORMAT_VERSION = 1
_TENSOR = "$tensor"  # JSON placeholder of a tensor stored in the safetensors file
_TUPLE = "$tuple"
_FLOAT = "$float"  # non-finite floats (JSON has none)


class CertificateError(UserError):
    """A certificate that cannot be read, or whose stated bound the check does not confirm."""


@dataclass(frozen=True)
class Confirmation:
    """A confirmed certificate: the stated bound holds for the model with ``model_sha256``.

    ``proven_count`` is what the re-run check proved (>= ``correct_count``, the stated bound);
    ``flops`` and ``check_seconds`` are the cost of that check.
    """

    strategy: str
    model_sha256: str
    correct_count: int
    proven_count: int
    total: int
    flops: int
    check_seconds: float

    @property
    def accuracy_bound(self) -> float:
        return self.correct_count / self.total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"accuracy_bound": self.accuracy_bound}


def tensor_path(path: str | os.PathLike) -> Path:
    """The safetensors file that goes with the JSON file ``path``."""
    p = Path(path)
    return (
        p.with_suffix(".safetensors")
        if p.suffix == ".json"
        else p.with_name(p.name + ".safetensors")
    )


# ------------------------------------------------------------------------------------ writing
def certificate_targets(
    path: str | os.PathLike, protect: tuple[Path, ...] = ()
) -> tuple[Path, Path]:
    """The JSON and tensor files a certificate at ``path`` writes, after refusing (UserError,
    before any work) a path that names no file or a directory, lies in a directory that does
    not exist, is one of the files ``protect`` (a model's own files), or would overwrite an
    existing file that is not a certificate."""
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise UserError(f"certificate path {str(path)!r} names no file")
    if not p.resolve().parent.is_dir():
        raise UserError(f"certificate {path}: directory {p.resolve().parent} does not exist")
    tp = tensor_path(p)
    guarded = {q.resolve() for q in protect}
    for target, is_ours in ((p, _is_certificate_json), (tp, _is_certificate_tensors)):
        if target.is_dir():
            raise UserError(f"certificate file {target} is a directory; name a file")
        if target.resolve() in guarded:
            raise UserError(f"certificate file {target} is the model's own file; name another")
        if target.exists() and not is_ours(target):
            raise UserError(
                f"{target} exists and is not a certificate file: refusing to overwrite it "
                "(name another path, or remove it first)"
            )
    return p, tp


def _is_certificate_json(path: Path) -> bool:
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _is_certificate_tensors(path: Path) -> bool:
    return safetensors_format(path) == FORMAT


def save_certificate(
    path: str | os.PathLike,
    strategy_name: str,
    certificate: Certificate,
    result: ProofResult,
    weights: Weights,
) -> Path:
    """Write ``certificate`` (from ``strategy_name``'s search) with the bound ``result`` states.

    Args:
        path: the JSON file to write (``.json`` recommended); the tensors go to
            ``tensor_path(path)``. Both are written atomically (temp file + rename).
        strategy_name: the strategy whose checker the certificate is for.
        certificate: the search's output: tensors, ints, floats, strings, bools, None, and
            lists / tuples / dicts (string keys) of these.
        result: the checked ``ProofResult`` of this strategy on ``weights``; its
            ``correct_count`` becomes the stated bound.
        weights: the model proved about.

    Returns:
        ``Path(path)``.

    Raises:
        UserError: ``result`` is for another model or strategy, or an entry cannot be stored.
    """
    sha = weights.sha256()
    if result.model_sha256 != sha:
        raise UserError("the proof result is for another model (sha256 differs from the weights)")
    if result.strategy != strategy_name:
        raise UserError(f"the proof result is for {result.strategy!r}, not {strategy_name!r}")
    p, tpath = certificate_targets(path)
    tensors: dict[str, Tensor] = {}
    entries = _encode(dict(certificate), tensors, "")
    # Tensors first: a JSON file names the digest of the tensor file beside it.
    atomic_write(tpath, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "strategy": strategy_name,
        "checker_revision": _strategy(strategy_name, UserError).revision,
        "model_sha256": sha,
        "d_vocab": weights.config.d_vocab,
        "n_ctx": weights.config.n_ctx,
        "correct_count": int(result.correct_count),
        "total": int(result.total),
        "accuracy_bound": result.correct_count / result.total,
        "entries": entries,
        "tensor_file": tpath.name,
        "tensors_sha256": file_sha256(tpath),
        "informative": {
            "flops": int(result.flops),
            "version": result.version,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    atomic_write(p, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return p


def certify(
    model: Any,
    strategy_name: str,
    path: str | os.PathLike,
    *,
    config: Any = None,
    **prove_kwargs: Any,
) -> ProofResult:
    """Prove with one strategy (``api.prove_one``: search, then the counted check) and save its
    certificate to ``path``. ``model`` and ``config`` as in ``api.load``; ``prove_kwargs`` go to
    ``prove_one`` (``true_correct``, ``true_accuracy``, ``threads``). Returns the proof result.

    Raises:
        UserError: before any work, for a strategy name that is not exactly one strategy, or a
            path ``certificate_targets`` refuses (a directory, a missing directory, the
            model's own files, an existing file that is not a certificate).
    """
    from compact_proofs import api

    strategies = api.resolve_strategies([strategy_name])
    if len(strategies) != 1:
        n = len(strategies)
        raise UserError(f"a certificate stores one proof; {strategy_name!r} names {n} strategies")
    [strategy] = strategies
    certificate_targets(path, api.model_files(model, config))
    w = api.load(model, config)
    captured: list[Certificate] = []

    def search(weights: Weights) -> Certificate:
        cert = strategy.search(weights)
        captured.append(cert)
        return cert

    result = api.prove_one(w, replace(strategy, search=search), **prove_kwargs)
    api.refuse_wrong_truth([result], prove_kwargs.get("true_correct"))
    save_certificate(path, strategy_name, captured[0], result, w)
    return result


def _encode(value: Any, tensors: dict[str, Tensor], where: str) -> Any:
    """JSON form of a certificate value; tensors move to ``tensors`` under their entry path."""
    if isinstance(value, Tensor):
        name = where or "value"
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, list | tuple):
        items = [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else {_TUPLE: items}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise UserError(f"certificate entry {where or 'root'!r} has a non-string key")
        if any(k.startswith("$") for k in value):
            raise UserError(f"certificate entry {where or 'root'!r} has a key starting with '$'")
        return {k: _encode(v, tensors, f"{where}.{k}" if where else k) for k, v in value.items()}
    raise UserError(
        f"certificate entry {where!r} has type {type(value).__name__}; certificates hold "
        "tensors, numbers, strings, lists and dicts"
    )


def _decode(value: Any, tensors: dict[str, Tensor], used: set[str]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            name = value[_TENSOR]
            if not isinstance(name, str) or name not in tensors:
                raise CertificateError(f"the tensor file has no tensor {name!r}")
            used.add(name)
            return tensors[name]
        if set(value) == {_TUPLE}:
            if not isinstance(value[_TUPLE], list):
                raise CertificateError(f"bad tuple entry {value[_TUPLE]!r} (not a list)")
            return tuple(_decode(v, tensors, used) for v in value[_TUPLE])
        if set(value) == {_FLOAT}:
            if value[_FLOAT] not in ("inf", "-inf", "nan"):
                raise CertificateError(f"bad float entry {value[_FLOAT]!r}")
            return float(value[_FLOAT])
        return {k: _decode(v, tensors, used) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ checking
def read_certificate(path: str | os.PathLike) -> tuple[dict[str, Any], Certificate]:
    """The JSON header and the decoded certificate, after format, version and digest checks.

    Raises ``CertificateError`` (with the reason) on a missing, unreadable, foreign or
    corrupted certificate, or an unsupported format version."""
    p = Path(path)
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        with_json = p.with_name(p.name + ".json")
        hint = f" (did you mean {with_json}?)" if with_json.is_file() else ""
        raise CertificateError(f"certificate file {p} not found{hint}") from None
    except IsADirectoryError:
        raise CertificateError(f"{p} is a directory, not a certificate file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CertificateError(f"{p} is not a readable certificate JSON file ({e})") from None
    except RecursionError:
        raise CertificateError(f"{p} is nested too deeply to be a certificate") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CertificateError(f"{p} is not a compact-proofs certificate (no format marker)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CertificateError(
            f"unsupported certificate format version {version!r}: this compact-proofs reads "
            f"version {FORMAT_VERSION}; re-create the certificate with `prove --certificate`"
        )
    _require(meta, "strategy", str)
    _require(meta, "model_sha256", str)
    for key in ("correct_count", "total", "d_vocab", "n_ctx"):
        _require(meta, key, int)
    _require(meta, "tensor_file", str)
    _require(meta, "tensors_sha256", str)
    if not isinstance(meta.get("entries"), dict):
        raise CertificateError("certificate field 'entries' is missing or not an object")
    tname = meta["tensor_file"]
    if Path(tname).name != tname or tname in ("", ".", ".."):
        raise CertificateError(f"tensor file {tname!r} must be a plain file name beside the JSON")
    tpath = p.with_name(tname)
    if tpath.is_dir():
        raise CertificateError(f"the certificate's tensor file {tpath} is a directory")
    if not tpath.is_file():
        raise CertificateError(f"the certificate's tensor file {tpath} is missing")
    digest = file_sha256(tpath)
    if digest != meta["tensors_sha256"]:
        raise CertificateError(
            f"the tensor file {tpath.name} does not match the certificate (sha256 {digest[:12]}... "
            f"!= stated {meta['tensors_sha256'][:12]}...): it was modified or belongs to another "
            "certificate"
        )
    try:
        tensors = load_file(str(tpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise CertificateError(f"cannot read the tensor file {tpath.name}: {e}") from None
    used: set[str] = set()
    cert = _decode(meta["entries"], tensors, used)
    extra = set(tensors) - used
    if extra:
        raise CertificateError(f"the tensor file holds unreferenced tensor {sorted(extra)[0]!r}")
    return meta, cert


def _require(meta: dict, key: str, kind: type) -> None:
    v = meta.get(key)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise CertificateError(
            f"certificate field {key!r} is missing or not {article} {kind.__name__}"
        )


def _strategy(name: str, error: type[UserError] = CertificateError) -> Strategy:
    from compact_proofs.proofs import adaptive
    from compact_proofs.proofs.registry import STRATEGIES

    s = STRATEGIES.get(name)
    if s is None:
        try:
            s = adaptive.strategy_for_name(name)
        except UserError as e:  # an adaptive-budget-<N> name with an invalid budget
            raise error(f"the certificate names strategy {name!r}: {e}") from None
    if s is None:
        raise error(f"the certificate names an unknown strategy {name!r}")
    return s


def _revision_hint(meta: dict[str, Any], strategy: Strategy) -> str:
    """Why a refusal may come from the certificate's age: its checker revision (1 when the
    certificate predates the field) differs from the installed one. Empty otherwise."""
    written = meta.get("checker_revision", 1)
    if written == strategy.revision:
        return ""
    return (
        f" (the certificate records checker revision {written!r}; the installed "
        f"{strategy.name!r} checker is revision {strategy.revision}: it was written by another "
        "version of compact-proofs or for another strategy; re-create it with "
        "`prove --certificate`)"
    )


def check_certificate(
    model_or_weights: Any,
    path: str | os.PathLike,
    *,
    config: Any = None,
    threads: int | None = None,
) -> Confirmation:
    """Re-run only the trusted check of the certificate at ``path`` on the model, and confirm
    its stated bound.

    Args:
        model_or_weights: ``Weights``, a model directory / weights file, or a TransformerLens
            model (anything ``api.load`` accepts, with its ``config``).
        path: the certificate's JSON file (its tensor file beside it).
        threads: torch threads for the check (``compact_proofs.threads``; None: the
            strategy's own default; 0: torch's setting).

    Returns:
        A ``Confirmation``: the stated ``correct_count`` holds.

    Raises:
        CertificateError: with the reason: unreadable or foreign file, unsupported version,
            tensor file modified, model sha256 or shape differs, unknown strategy, the checker
            rejects the certificate, or the check proves fewer inputs than stated.
    """
    from compact_proofs import api

    meta, cert = read_certificate(path)
    w = api.load(model_or_weights, config)
    sha = w.sha256()
    if sha != meta["model_sha256"]:
        raise CertificateError(
            f"the certificate is for the model with sha256 {meta['model_sha256'][:16]}..., but "
            f"this model's weights have sha256 {sha[:16]}... (a different or modified model)"
        )
    cfg = w.config
    if (meta["d_vocab"], meta["n_ctx"], meta["total"]) != (cfg.d_vocab, cfg.n_ctx, cfg.n_inputs):
        raise CertificateError(
            f"the certificate states d_vocab {meta['d_vocab']}, n_ctx {meta['n_ctx']}, "
            f"{meta['total']} inputs; the model has {cfg.d_vocab}, {cfg.n_ctx}, {cfg.n_inputs}"
        )
    stated = meta["correct_count"]
    if not 0 <= stated <= cfg.n_inputs:
        raise CertificateError(f"stated correct_count {stated} is outside [0, {cfg.n_inputs}]")
    strategy = _strategy(meta["strategy"])
    ledger = FlopLedger()
    t0 = time.perf_counter()
    try:
        with torch_threads(resolve(threads, strategy.threads)):
            verdict = strategy.check(w, cert, Ops(ledger))
    except (
        ProofPreconditionError,
        ArithmeticError,
        IndexError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
    ) as e:
        reason = (
            f"it has no entry {e.args[0]!r}"
            if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str)
            else f"{type(e).__name__}: {e}"
        )
        raise CertificateError(
            f"the {strategy.name!r} checker rejects the certificate: {reason}"
            + _revision_hint(meta, strategy)
        ) from None
    seconds = time.perf_counter() - t0
    proven = int(verdict.correct_count)
    if proven < stated:
        raise CertificateError(
            f"the {strategy.name!r} check proves only {proven:,} correct inputs, fewer than the "
            f"stated {stated:,}: the stated bound is refused" + _revision_hint(meta, strategy)
        )
    return Confirmation(
        strategy=strategy.name,
        model_sha256=sha,
        correct_count=stated,
        proven_count=proven,
        total=cfg.n_inputs,
        flops=ledger.flop,
        check_seconds=seconds,
    )


__all__ = [
    "FORMAT_VERSION",
    "CertificateError",
    "Confirmation",
    "certificate_targets",
    "certify",
    "check_certificate",
    "read_certificate",
    "save_certificate",
    "tensor_path",
]
