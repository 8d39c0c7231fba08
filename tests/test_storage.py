"""Model directories: exact round trip, atomic writes, one distinct refusal per kind of bad file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from compact_proofs import model as M
from compact_proofs import storage
from compact_proofs.config import ModelConfig, TrainConfig
from compact_proofs.errors import ModelFormatError, UnsupportedModelError, UserError


@pytest.fixture
def weights():
    return M.to_weights(M.build(ModelConfig(d_vocab=7, n_ctx=3, d_model=8, d_head=4), 21))


def saved(tmp_path, weights, name="m"):
    return storage.save_model(
        weights, tmp_path / name, metadata={"note": "test"}, train_cfg=TrainConfig(seed=50)
    )


def test_round_trip_is_exact_and_sha_stable(tmp_path, weights):
    out = saved(tmp_path, weights)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    for source in (out, out / "model.safetensors"):
        w2, meta = storage.load_model(source)
        for k, t in weights.tensors().items():
            assert torch.equal(t, w2.tensors()[k])
            assert t.view(torch.int32).equal(w2.tensors()[k].view(torch.int32))  # bit-identical
        assert meta["weights_sha256"] == weights.sha256() == w2.sha256()
    again = saved(tmp_path, weights, "m2")
    sha = storage.file_sha256(out / "model.safetensors")
    assert sha == storage.file_sha256(again / "model.safetensors") == meta["safetensors_sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_model_json_contents(tmp_path, weights):
    meta = json.loads((saved(tmp_path, weights) / "model.json").read_text())
    cfg = meta["config"]
    assert cfg == {
        "n_layers": 1, "n_heads": 1, "d_model": 8, "d_head": 4, "d_vocab": 7, "d_vocab_out": 7,
        "n_ctx": 3, "attn_only": True, "d_mlp": None, "act_fn": None, "normalization_type": None,
        "positional_embedding_type": "standard", "attention_dir": "causal", "use_attn_scale": True,
        "init_mode": "gpt2", "dtype": "float32", "seed": 736526336,
    }  # fmt: skip
    assert (meta["task"], meta["k"], meta["seed"], meta["note"]) == ("max_of_k", 3, 50, "test")
    assert meta["seeds"]["model"] == 736526336 and meta["seeds"]["dataset"] == 1372813824
    assert meta["training"]["optimizer"] == "AdamW" and meta["training"]["weight_decay"] == 0.01
    assert meta["torch_version"] == torch.__version__ and meta["package_version"]
    with pytest.raises(ValueError, match="may not set"):
        storage.save_model(weights, tmp_path / "x", metadata={"config": {}})


def test_overwrite_rules(tmp_path, weights):
    out = saved(tmp_path, weights)
    with pytest.raises(UserError, match="already exists"):
        saved(tmp_path, weights)
    other = M.to_weights(M.build(weights.config, 22))
    storage.save_model(other, out, metadata={}, overwrite=True)
    assert storage.load_model(out)[0].sha256() == other.sha256()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files other than a model"):
        storage.save_model(weights, out, metadata={}, overwrite=True)
    assert (out / "notes.txt").exists()


def test_failed_save_leaves_nothing(tmp_path, weights, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.save_model(weights, tmp_path / "m", metadata={})
    assert list(tmp_path.iterdir()) == []


def write(tmp_path, sd, name="bad.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def mutate(weights, **changes):
    sd = weights.to_state_dict()
    for k, v in changes.items():
        key = k.replace("__", ".")
        if v is None:
            del sd[key]
        else:
            sd[key] = v
    return sd


def bad_cases(w):
    cfg = w.config
    d, dh, V = cfg.d_model, cfg.d_head, cfg.d_vocab
    nan_E = w.W_E.clone()
    nan_E[0, 0] = float("nan")
    inf_U = w.W_U.clone()
    inf_U[1, 1] = float("inf")
    return {
        "missing key": (mutate(w, unembed__W_U=None), ModelFormatError, "missing unembed.W_U"),
        "unknown key": (mutate(w, extra__W=torch.zeros(2)), ModelFormatError, "unknown keys"),
        "wrong shape": (
            mutate(w, embed__W_E=torch.zeros(V, d + 1)),
            ModelFormatError,
            "W_pos has shape",
        ),
        "wrong rank": (mutate(w, unembed__W_U=w.W_U[None]), ModelFormatError, "W_U has shape"),
        "bias shape": (
            mutate(w, unembed__b_U=torch.zeros(V + 1)),
            ModelFormatError,
            "b_U has shape",
        ),
        "nan": (mutate(w, embed__W_E=nan_E), ModelFormatError, "NaN or Inf"),
        "inf": (mutate(w, unembed__W_U=inf_U), ModelFormatError, "NaN or Inf"),
        "nonzero bias": (
            mutate(w, blocks__0__attn__b_Q=torch.full((1, dh), 0.5)),
            UnsupportedModelError,
            "nonzero",
        ),
        "layernorm": (mutate(w, ln_final__w=torch.ones(d)), UnsupportedModelError, "LayerNorm"),
        "mlp": (mutate(w, blocks__0__mlp__W_in=torch.zeros(d, 4)), UnsupportedModelError, "MLP"),
        "two heads": (
            mutate(
                w,
                blocks__0__attn__W_Q=torch.zeros(2, d, dh),
                blocks__0__attn__W_K=torch.zeros(2, d, dh),
                blocks__0__attn__W_V=torch.zeros(2, d, dh),
                blocks__0__attn__W_O=torch.zeros(2, dh, d),
                blocks__0__attn__b_Q=torch.zeros(2, dh),
                blocks__0__attn__b_K=torch.zeros(2, dh),
                blocks__0__attn__b_V=torch.zeros(2, dh),
            ),
            UnsupportedModelError,
            "2 heads",
        ),
        "two layers": (
            mutate(w, blocks__1__attn__W_Q=torch.zeros(1, d, dh)),
            UnsupportedModelError,
            "more than one layer",
        ),
        "float64": (mutate(w, embed__W_E=w.W_E.double()), ModelFormatError, "dtype float64"),
        "float16": (mutate(w, unembed__W_U=w.W_U.half()), ModelFormatError, "dtype float16"),
    }


def test_each_bad_file_is_refused_with_its_own_message(tmp_path, weights):
    messages = {}
    for name, (sd, exc, pattern) in bad_cases(weights).items():
        path = write(tmp_path, sd, name.replace(" ", "_") + ".safetensors")
        with pytest.raises(exc, match=pattern) as info:
            storage.load_model(path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, name
        messages[name] = msg
    assert len(set(messages.values())) == len(messages)


def test_missing_garbage_and_wrong_kind_of_file(tmp_path, weights):
    cases = []
    with pytest.raises(ModelFormatError, match="does not exist") as e:
        storage.load_model(tmp_path / "nope")
    cases.append(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="has no model.safetensors;") as e:
        storage.load_model(tmp_path / "empty")
    cases.append(e)
    (tmp_path / "tl").mkdir()
    (tmp_path / "tl" / "m.pt").write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"has no model.safetensors \(it holds m.pt: pass"):
        storage.load_model(tmp_path / "tl")
    # a certificate's tensor file is not offered as a model
    save_file({"x": torch.zeros(1)}, tmp_path / "tl" / "proof.safetensors",
              metadata={"format": "compact-proofs-certificate"})  # fmt: skip
    with pytest.raises(ModelFormatError, match=r"\(it holds m.pt: pass"):
        storage.load_model(tmp_path / "tl")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x93NUMPY not a safetensors file at all" * 10)
    with pytest.raises(ModelFormatError, match="not a readable safetensors file") as e:
        storage.load_model(garbage)
    cases.append(e)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"PK\x03\x04")
    with pytest.raises(ModelFormatError, match="not a model directory, .safetensors, .pt or") as e:
        storage.load_model(pt)
    cases.append(e)
    assert all("\n" not in str(c.value) for c in cases)


def test_sha_mismatch_and_inconsistent_json(tmp_path, weights):
    out = saved(tmp_path, weights)
    other = M.to_weights(M.build(weights.config, 99))
    save_file(
        {k: v.contiguous() for k, v in other.to_state_dict().items()},
        str(out / "model.safetensors"),
    )
    with pytest.raises(ModelFormatError, match="does not match the sha256"):
        storage.load_model(out)
    out2 = saved(tmp_path, weights, "m2")
    meta = json.loads((out2 / "model.json").read_text())
    meta["config"]["n_ctx"] = 5
    (out2 / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="n_ctx=3 but"):
        storage.load_model(out2)
    meta["config"].update(n_ctx=3, n_heads=2)
    (out2 / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UnsupportedModelError, match="n_heads=2"):
        storage.load_model(out2)
    meta["config"].update(n_heads=1)
    (out2 / "model.json").write_text(json.dumps(meta | {"task": "sorting"}))
    with pytest.raises(UnsupportedModelError, match="task is 'sorting'; the proofs cover Max-of-K"):
        storage.load_model(out2)
    (out2 / "model.json").write_text(json.dumps(meta | {"task": "max_of_k"}))
    assert storage.load_model(out2)[0].sha256() == weights.sha256()
    (out2 / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        storage.load_model(out2)


def test_a_corrupted_file_is_named_corrupted_before_its_contents_are_judged(tmp_path, weights):
    """A flipped bit that makes a bias nonzero is a corrupted file, not a training problem."""
    from safetensors.torch import load_file

    out = saved(tmp_path, weights)
    sd = load_file(str(out / "model.safetensors"))
    bias = next(k for k in sd if k.endswith("b_U"))
    sd[bias][0] = 2.5e-29
    save_file(sd, str(out / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="modified or corrupted"):
        storage.load_model(out)
    (out / "model.json").unlink()  # no recorded digest: the contents are judged
    with pytest.raises(UnsupportedModelError, match="nonzero"):
        storage.load_model(out)


def test_an_unreadable_weights_file_is_a_one_line_error(tmp_path, weights, monkeypatch):
    out = saved(tmp_path, weights)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(storage, "file_sha256", denied)
    with pytest.raises(ModelFormatError, match=r"cannot be read \(Permission denied\)"):
        storage.load_model(out)


def test_transformer_lens_buffers_are_accepted(tmp_path, weights):
    sd = weights.to_state_dict()
    n = weights.config.n_ctx
    sd["blocks.0.attn.mask"] = torch.ones(n, n).tril().bool()
    sd["blocks.0.attn.IGNORE"] = torch.tensor(-torch.inf)
    w2, meta = storage.load_model(write(tmp_path, sd))
    assert w2.sha256() == weights.sha256() and meta == {}
