"""Safe loading of foreign checkpoints (``compact_proofs.checkpoints``), and the one-line errors
the CLI gives for malformed or unsupported model files.

Every malformed case is a file built here; each must be refused with its own message, by
``load_checkpoint`` directly and by ``compact-proofs accuracy/prove`` (exit status 2, nothing
written).
"""

import json
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import models
import pytest
import torch
from safetensors.torch import save_file

from compact_proofs import api, checkpoints, cli, storage
from compact_proofs.errors import ModelFormatError, UnsupportedModelError, UserError
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.weights import Weights

V, N, D, DH = 5, 3, 8, 4


def weights(seed: int = 0) -> Weights:
    return models.random_weights(V, N, D, DH, seed=seed)


def tl_config(w: Weights, **overrides) -> dict:
    """The HookedTransformerConfig fields of ``w`` as JSON, with ``overrides``."""
    cfg = w.config
    out = {
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
        "attention_dir": "causal",
        "dtype": "float32",
    }
    out.update(overrides)
    return out


def write(path: Path, sd: dict, cfg: dict | None, *, cfg_name: str = "config.json") -> Path:
    """Write ``sd`` as .safetensors or .pt (by suffix) and ``cfg`` as JSON beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    if cfg is not None:
        (path.parent / cfg_name).write_text(json.dumps(cfg))
    return path


def test_safetensors_roundtrip_is_exact(tmp_path):
    w = weights()
    p = write(tmp_path / "m.safetensors", w.to_state_dict(), tl_config(w))
    assert checkpoints.load_checkpoint(p).sha256() == w.sha256()
    assert checkpoints.is_foreign(p)


def test_pt_roundtrip_with_config_dict_and_mask_buffers(tmp_path):
    w = weights(1)
    sd = w.to_state_dict()
    # What HookedTransformer.state_dict() also holds: the causal mask and IGNORE buffers.
    sd["blocks.0.attn.mask"] = torch.tril(torch.ones(N, N, dtype=torch.bool))
    sd["blocks.0.attn.IGNORE"] = torch.tensor(-1e5)
    p = write(tmp_path / "m.pt", sd, None)
    assert checkpoints.load_checkpoint(p, config=tl_config(w)).sha256() == w.sha256()
    cfg_file = tmp_path / "elsewhere.json"
    cfg_file.write_text(json.dumps(tl_config(w)))
    assert checkpoints.load_checkpoint(p, config=cfg_file).sha256() == w.sha256()


@pytest.mark.parametrize("entry", [(2, 2), (0, 2)])
def test_a_non_causal_mask_buffer_is_refused(tmp_path, entry):
    """TransformerLens 2.x attends through the saved mask buffer. Only its last row changes
    what is proved (entry (2, 2)); any other change (entry (0, 2)) is refused too, on purpose:
    the file is then not the model its config describes."""
    w = weights(1)
    sd = w.to_state_dict()
    mask = torch.tril(torch.ones(N, N, dtype=torch.bool))
    mask[entry] = not mask[entry]
    sd["blocks.0.attn.mask"] = mask
    p = write(tmp_path / "m.pt", sd, tl_config(w))
    with pytest.raises(UnsupportedModelError, match="attn.mask is not the causal mask"):
        checkpoints.load_checkpoint(p)
    sd["blocks.0.attn.mask"] = torch.zeros(0, 0, dtype=torch.bool)  # TransformerLens 3.x
    p = write(tmp_path / "ok.pt", sd, tl_config(w))
    assert checkpoints.load_checkpoint(p).sha256() == w.sha256()


def test_pt_wrapped_state_dict_with_embedded_config(tmp_path):
    w = weights(2)
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": w.to_state_dict(), "config": tl_config(w), "step": 300}, p)
    assert checkpoints.load_checkpoint(p).sha256() == w.sha256()


def test_compact_proofs_model_json_is_read_through_its_config_entry(tmp_path):
    w = weights(3)
    out = storage.save_model(w, tmp_path / "run", metadata={"seed": 0})
    p = write(out / "copy.pt", w.to_state_dict(), None)  # model.json sits beside it
    assert checkpoints.load_checkpoint(p).sha256() == w.sha256()
    assert not checkpoints.is_foreign(out / "model.safetensors")  # ours: storage reads it
    assert checkpoints.is_foreign(p)


def test_a_hugging_face_style_config_is_named(tmp_path):
    w = weights()
    cfg = {"num_layers": 1, "hidden_size": w.config.d_model, "n_ctx": N}
    p = write(tmp_path / "m.pt", w.to_state_dict(), cfg)
    with pytest.raises(
        ModelFormatError,
        match=r"not TransformerLens config fields: num_layers \(TransformerLens: n_layers\), "
        r"hidden_size \(TransformerLens: d_model\); write",
    ):
        checkpoints.load_checkpoint(p)
    # beside the TransformerLens field it stands for, an extra name is harmless
    p = write(tmp_path / "ok" / "m.pt", w.to_state_dict(), tl_config(w, hidden_size=8))
    assert checkpoints.load_checkpoint(p).sha256() == w.sha256()


def test_missing_config_is_refused(tmp_path):
    w = weights()
    p = write(tmp_path / "m.safetensors", w.to_state_dict(), None)
    with pytest.raises(ModelFormatError, match="no config found"):
        checkpoints.load_checkpoint(p)


class Evil:
    """Unpickling this runs ``touch <sentinel>``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("style", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, style):
    sentinel = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    p = tmp_path / "evil.pt"
    payload = {"embed.W_E": Evil(sentinel)}
    if style == "torch.save":
        torch.save(payload, p)
    else:
        with open(p, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    # The payload really would run if unpickled unsafely (checked without loading it here).
    assert b"system" in p.read_bytes()
    with pytest.raises(ModelFormatError, match="refusing to unpickle arbitrary objects") as err:
        checkpoints.load_checkpoint(p, config=tl_config(weights()))
    assert not sentinel.exists()
    assert "system" in str(err.value)  # names what it refused, not torch's general advice


def test_a_pickled_module_is_refused_by_name(tmp_path):
    """torch.save(model) instead of its state dict: the message names the class it refused."""
    p = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    with pytest.raises(ModelFormatError, match="refusing to unpickle") as err:
        checkpoints.load_checkpoint(p, config=tl_config(weights()))
    assert "torch.nn.modules.linear.Linear" in str(err.value)
    assert "In PyTorch 2.6" not in str(err.value)
    assert "by default); save a plain state dict" in str(err.value)  # its first sentence, whole


# ------------------------------------------------------------------------------------ cases
def _sd(w: Weights | None = None) -> dict:
    return (w or weights()).to_state_dict()


def _with(**changes) -> Callable[[Path], Path]:
    """A case: the default model's state dict with ``changes`` (None deletes a key)."""

    def build(d: Path) -> Path:
        sd = _sd()
        for k, v in changes.items():
            k = k.replace("__", ".")
            if v is None:
                sd.pop(k)
            else:
                sd[k] = v
        return write(d / "m.safetensors", sd, tl_config(weights()))

    return build


def _cfg(**overrides) -> Callable[[Path], Path]:
    return lambda d: write(d / "m.safetensors", _sd(), tl_config(weights(), **overrides))


def _two_layers(d: Path) -> Path:
    sd = _sd()
    sd.update({k.replace("blocks.0.", "blocks.1."): v for k, v in sd.items() if "blocks.0." in k})
    return write(d / "m.safetensors", sd, tl_config(weights(), n_layers=2))


def _two_heads(d: Path) -> Path:
    sd = _sd()
    for k in ("W_Q", "W_K", "W_V", "W_O"):
        sd[f"blocks.0.attn.{k}"] = sd[f"blocks.0.attn.{k}"].repeat(2, 1, 1)
    return write(d / "m.safetensors", sd, tl_config(weights(), n_heads=2))


def _bad(arr: torch.Tensor, idx: tuple, value: float) -> torch.Tensor:
    arr = arr.clone()
    arr[idx] = value
    return arr


def _file(data: bytes, name: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (d / name).write_bytes(data)
        (d / "config.json").write_text(json.dumps(tl_config(weights())))
        return d / name

    return build


def _truncated(d: Path) -> Path:
    p = write(d / "m.safetensors", _sd(), tl_config(weights()))
    p.write_bytes(p.read_bytes()[:-40])
    return p


def _malicious(d: Path) -> Path:
    torch.save({"embed.W_E": Evil(d / "pwned")}, d / "m.pt")
    (d / "config.json").write_text(json.dumps(tl_config(weights())))
    return d / "m.pt"


def _float16(d: Path) -> Path:
    sd = {k: v.half() for k, v in _sd().items()}
    return write(d / "m.safetensors", sd, tl_config(weights()))


def _wide_unembed(d: Path) -> Path:
    sd = _sd()
    sd["unembed.W_U"] = torch.randn(D, V + 1)
    sd["unembed.b_U"] = torch.zeros(V + 1)
    return write(d / "m.safetensors", sd, tl_config(weights(), d_vocab_out=V + 1))


def _list_pt(d: Path) -> Path:
    torch.save([torch.zeros(3)], d / "m.pt")
    (d / "config.json").write_text(json.dumps(tl_config(weights())))
    return d / "m.pt"


def _no_attn_only(d: Path) -> Path:
    cfg = tl_config(weights())
    del cfg["attn_only"]
    return write(d / "m.pt", _sd(), cfg)


def _bad_json(d: Path) -> Path:
    p = write(d / "m.safetensors", _sd(), None)
    (d / "config.json").write_text("{n_layers: 1")
    return p


W = weights()
MF, UM = ModelFormatError, UnsupportedModelError
# (id, builder, expected error class, message fragment)
CASES = [
    ("missing-path", lambda d: d / "nope.safetensors", MF, "does not exist"),
    ("empty-file", _file(b"", "m.pt"), MF, "is empty"),
    ("garbage-bytes", _file(bytes(range(7, 200)), "m.pt"), MF, "not a torch checkpoint"),
    ("garbage-safetensors", _file(b"\x10" * 64, "m.safetensors"), MF, "not a readable safetensors"),
    ("truncated-safetensors", _truncated, MF, "not a readable safetensors"),
    ("malicious-pickle", _malicious, MF, "refusing to unpickle arbitrary objects"),
    ("not-a-state-dict", _list_pt, MF, "not a state dict"),
    ("two-layers", _two_layers, UM, "n_layers=2; only one-layer models"),
    ("two-heads", _two_heads, UM, "n_heads=2; only one-head models"),
    ("mlp-keys", _with(blocks__0__mlp__W_in=torch.zeros(D, 16)), UM, "has MLP layers"),
    ("layernorm-keys", _with(ln_final__w=torch.ones(D)), UM, "has LayerNorm"),
    ("nonzero-b_Q", _with(blocks__0__attn__b_Q=torch.full((1, DH), 0.5)), UM, "b_Q is nonzero"),
    ("nonzero-b_U", _with(unembed__b_U=_bad(torch.zeros(V), (2,), 1e-3)), UM, "b_U is nonzero"),
    ("nan-weight", _with(embed__W_E=_bad(W.W_E, (1, 1), float("nan"))), MF, "NaN or Inf"),
    (
        "inf-weight",
        _with(blocks__0__attn__W_V=_bad(W.W_V[None], (0, 0, 0), float("inf"))),
        MF,
        "NaN or Inf",
    ),
    ("float16-weights", _float16, MF, "convert the model with model.to(torch.float32)"),
    ("d_vocab_out-differs", _wide_unembed, UM, "d_vocab_out must equal d_vocab"),
    ("shapes-vs-config", _cfg(n_ctx=N + 1), MF, "says n_ctx=4 but the weights have n_ctx=3"),
    ("d_vocab-vs-config", _cfg(d_vocab=V + 2, d_vocab_out=V + 2), MF, "says d_vocab=7"),
    ("unknown-key", _with(blocks__0__attn__W_X=torch.zeros(3)), MF, "unknown keys"),
    ("missing-W_pos", _with(pos_embed__W_pos=None), MF, "missing pos_embed.W_pos"),
    ("bad-bias-shape", _with(unembed__b_U=torch.zeros(V + 3)), MF, "unembed.b_U has shape (8,)"),
    (
        "rotary-config",
        _cfg(positional_embedding_type="rotary"),
        UM,
        "positional_embedding_type='rotary'",
    ),
    ("bidirectional", _cfg(attention_dir="bidirectional"), UM, "only causal attention"),
    ("parameter-free-LN", _cfg(normalization_type="LNPre"), UM, "normalization_type='LNPre'"),
    ("attn_only-missing", _no_attn_only, UM, "attn_only=False"),
    ("unscaled-attention", _cfg(use_attn_scale=False), UM, "divided by 1.0"),
    ("soft-capped-logits", _cfg(output_logits_soft_cap=30.0), UM, "soft-capped output logits"),
    ("no-config", lambda d: write(d / "m.pt", _sd(), None), MF, "no config found"),
    ("bad-config-json", _bad_json, MF, "not a readable JSON config"),
]
IDS = [c[0] for c in CASES]


def test_cases_are_distinct_and_many():
    assert len(CASES) >= 20 and len(set(IDS)) == len(IDS)


@pytest.mark.parametrize(("name", "build", "error", "fragment"), CASES, ids=IDS)
def test_load_checkpoint_refuses(tmp_path, name, build, error, fragment):
    p = build(tmp_path)
    with pytest.raises(error) as info:
        checkpoints.load_checkpoint(p)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg, "errors are one line"
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------ the CLI
def _routed() -> bool:
    """Whether ``api.load`` sends foreign checkpoints to ``checkpoints.load_checkpoint``."""
    import tempfile

    w = weights()
    with tempfile.TemporaryDirectory() as d:
        p = write(Path(d) / "probe.pt", w.to_state_dict(), tl_config(w))
        try:
            return api.load(p).sha256() == w.sha256()
        except UserError:
            return False


ROUTED = _routed()
NEEDS_ROUTING = "api.load does not route .pt/.pth and foreign .safetensors to checkpoints yet"


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, " ".join(err.split())  # rich wraps long lines


def _commands() -> list[str]:
    return ["accuracy", "prove"] if "cubic" in STRATEGIES else ["accuracy"]


@pytest.mark.parametrize("command", _commands())
@pytest.mark.parametrize(("name", "build", "error", "fragment"), CASES, ids=IDS)
def test_cli_refuses_with_exit_2_and_writes_nothing(
    tmp_path, capsys, command, name, build, error, fragment
):
    if not ROUTED and name not in ("missing-path",):
        pytest.skip(NEEDS_ROUTING)
    work = tmp_path / "in"
    work.mkdir()
    p = build(work)
    before = sorted(os.listdir(work))
    out = tmp_path / "result.json"
    argv = [command, str(p), "--json", str(out)]
    if command == "prove":
        argv += ["--strategy", "cubic"]
    code, err = _run_cli(argv, capsys)
    assert code == 2, err
    assert fragment in err
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    assert sorted(os.listdir(work)) == before, "the CLI wrote next to the input"
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_cli_unknown_strategy(tmp_path, capsys):
    w = weights()
    storage.save_model(w, tmp_path / "run", metadata={"seed": 0})
    out = tmp_path / "r.json"
    argv = ["prove", str(tmp_path / "run"), "--strategy", "no-such", "--json", str(out)]
    code, err = _run_cli(argv, capsys)
    assert code == 2 and "unknown strategy 'no-such'" in err
    assert not out.exists()


def test_cli_subprocess_refuses_malicious_pickle(tmp_path):
    """End to end in a fresh interpreter: exit status 2, the message, no code executed."""
    if not ROUTED:
        pytest.skip(NEEDS_ROUTING)
    sentinel = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    torch.save({"embed.W_E": Evil(sentinel)}, tmp_path / "m.pt")
    (tmp_path / "config.json").write_text(json.dumps(tl_config(weights())))
    proc = subprocess.run(
        [sys.executable, "-m", "compact_proofs.cli", "accuracy", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to unpickle arbitrary objects" in proc.stderr
    assert not sentinel.exists()


def test_outputs_never_overwrite_a_checkpoints_config(tmp_path, capsys):
    """--json naming the config beside a foreign checkpoint, or the one given with --config, is
    refused; the files stay as they were."""
    w = weights()
    ckpt = write(tmp_path / "ckpt" / "m.pt", w.to_state_dict(), tl_config(w))
    bare = write(tmp_path / "bare.pt", w.to_state_dict(), None)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tl_config(w)))
    before = {p: p.read_bytes() for p in (ckpt.with_name("config.json"), cfg)}
    for argv in (
        ["prove", str(ckpt), "--json", str(ckpt.with_name("config.json"))],
        ["accuracy", str(ckpt), "--json", str(ckpt.with_name("config.json"))],
        ["prove", str(bare), "--config", str(cfg), "--json", str(cfg)],
    ):
        assert cli.main(argv) == 2
        assert "one of the model's own files" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
