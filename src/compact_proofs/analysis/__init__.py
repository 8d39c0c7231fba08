"""Per-model interpretability data for the report (plain float64 torch: analysis, not proof).

    from compact_proofs import analysis
    info, tensors = analysis.analyze_model(weights)              # ablations + noise analysis
    analysis.save_analysis(sweep_dir / "analysis", analysis.analysis_key(k, d_vocab, seed),
                           info, tensors)

Files: ``{key}.json`` (``info``: JSON scalars, plus the ablation table as a list of rows) and
``{key}.safetensors`` (float64 tensors), with ``key = "k{K}-v{d_vocab}-s{seed}"``.

``info`` keys: model shape and ``model_sha256``; ``eqke_sigma1/2/3`` and ``eqke_sigma_ratio``
(sigma1 / sigma2 of ``E_q W_Q W_K^T Ē^T``); with ``ablations=True``: ``ablation_method``
("exact" over all inputs, or "sampled"), ``ablation_n_inputs``, ``ablations`` (32 rows, see
``ablation.ablation_table``); with ``noise=True``: the ``noise_*`` scalars of
``noise.noise_analysis``; ``seconds_*`` timings and ``version``.
Tensors: ``EQKE``, ``EQKP``, ``EVOU``, ``PVOU``, ``EUPU`` (see ``paths``), ``EQKE_singular_values``,
and with ``noise=True`` the ``noise.*`` tensors (residual, its four factors, the resamples).
"""

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from compact_proofs.analysis import ablation as ablation_mod
from compact_proofs.analysis import noise as noise_mod
from compact_proofs.analysis import paths as paths_mod
from compact_proofs.errors import UserError
from compact_proofs.storage import atomic_write
from compact_proofs.weights import Weights

__all__ = ["analysis_key", "analyze_model", "load_analysis", "save_analysis"]

KEY_PATTERN = re.compile(r"^k(\d+)-v(\d+)-s(\d+)$")


def analysis_key(k: int, d_vocab: int, seed: int) -> str:
    """File stem of a model's analysis: ``k{K}-v{d_vocab}-s{seed}``."""
    return f"k{int(k)}-v{int(d_vocab)}-s{int(seed)}"


def analyze_model(
    weights: Weights,
    *,
    ablations: bool = True,
    noise: bool = True,
    ablation_max_exhaustive: int = ablation_mod.DEFAULT_MAX_EXHAUSTIVE,
    ablation_samples: int | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Path matrices, EQKE singular values, path ablations and the EQKE-residual noise analysis.

    Args:
        weights: the model.
        ablations: evaluate the 32 path-ablation combinations (exhaustive up to
            ``ablation_max_exhaustive`` inputs, else on ``ablation_samples`` fixed random inputs,
            by default ``2**28 / d_vocab``).
            All 2**24 inputs of K=4, d_vocab=64 take ~40-160 s (1.5-5 s per combination),
            depending on CPU load; see ``ablation.ablation_table``.
        noise: run the structureless-noise analysis (100 shuffles + 100 Gaussian resamples).

    Returns:
        ``(info, tensors)``: a JSON-serialisable dict and a dict of float64 tensors (module doc).
    """
    from compact_proofs.api import package_version

    cfg = weights.config
    t0 = time.perf_counter()
    pm = paths_mod.path_matrices(weights)
    S = torch.linalg.svdvals(pm["EQKE"])
    info: dict[str, Any] = {
        "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "attn_scale": cfg.attn_scale,
        "model_sha256": weights.sha256(),
        "version": package_version(),
    }
    info |= paths_mod.singular_value_summary(S)
    tensors: dict[str, Tensor] = dict(pm) | {"EQKE_singular_values": S}
    info["seconds_paths"] = time.perf_counter() - t0
    if ablations:
        t1 = time.perf_counter()
        table = ablation_mod.ablation_table(
            weights, max_exhaustive=ablation_max_exhaustive, n_samples=ablation_samples
        )
        info["ablation_method"] = table["method"]
        info["ablation_n_inputs"] = table["n_inputs"]
        info["ablations"] = table["rows"]
        info["seconds_ablations"] = time.perf_counter() - t1
    if noise:
        t2 = time.perf_counter()
        scalars, noise_tensors = noise_mod.noise_analysis(weights)
        info |= scalars
        tensors |= noise_tensors
        info["seconds_noise"] = time.perf_counter() - t2
    return info, tensors


def save_analysis(
    out_dir: str | os.PathLike, key: str, info: dict[str, Any], tensors: dict[str, Tensor]
) -> Path:
    """Write ``{key}.json`` and ``{key}.safetensors`` into ``out_dir`` atomically; return the JSON
    path. The safetensors file is written first, so a JSON file implies complete tensors."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu", torch.float64).contiguous() for k, v in tensors.items()}
    atomic_write(out / f"{key}.safetensors", lambda p: save_file(flat, str(p)))
    text = json.dumps(info, indent=1, allow_nan=True) + "\n"
    atomic_write(out / f"{key}.json", lambda p: p.write_text(text))
    return out / f"{key}.json"


def load_analysis(
    out_dir: str | os.PathLike, key: str, *, tensors: bool = True
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read what ``save_analysis`` wrote (``tensors=False`` skips the safetensors file)."""
    base = Path(out_dir)
    js = base / f"{key}.json"
    if not js.is_file():
        raise UserError(f"no analysis file {js}; run the sweep with analysis enabled")
    try:
        info = json.loads(js.read_text())
    except json.JSONDecodeError as err:
        raise UserError(
            f"{js} is not valid JSON ({err}); delete it and rerun the analysis"
        ) from err
    st = base / f"{key}.safetensors"
    return info, (load_file(str(st)) if tensors and st.is_file() else {})
