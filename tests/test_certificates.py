"""Certificates on disk: every registered strategy round-trips and is confirmed; each tampered
field (bound, strategy, model sha256, tensors, version) and a tampered model are refused with
a clear reason; the re-check runs only the trusted checker."""

import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from compact_proofs import api, certificates
from compact_proofs.certificates import CertificateError
from compact_proofs.errors import UserError
from compact_proofs.proofs import adaptive
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.weights import Weights

MODEL = "planted-V8-K4-noisy"  # the adaptive proof refines here (boxes proven and refuted)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, soundness_model):
    """An adaptive certificate of the planted model, saved once (tests copy it)."""
    w, truth = soundness_model(MODEL)
    path = tmp_path_factory.mktemp("cert") / "adaptive.json"
    result = certificates.certify(w, "adaptive", path)
    assert result.correct_count == int(truth.sum())  # the adaptive proof is exact here
    return w, path


def _copy(saved, tmp_path):
    w, src = saved
    dst = tmp_path / "c.json"
    meta = json.loads(src.read_text())
    meta["tensor_file"] = "c.safetensors"
    dst.write_text(json.dumps(meta))
    (tmp_path / "c.safetensors").write_bytes(certificates.tensor_path(src).read_bytes())
    return w, dst


def _edit(path, **fields):
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


def _edit_tensors(path, change):
    """Rewrite the tensor file with ``change(tensors)`` and (like a careful forger) the digest."""
    tpath = certificates.tensor_path(path)
    tensors = load_file(str(tpath))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tpath))
    _edit(path, tensors_sha256=hashlib.sha256(tpath.read_bytes()).hexdigest())


def _registry_params():
    """Every registered strategy; beyond the first and last of each family, marked slow."""
    by_family: dict[str, list[str]] = {}
    for name, s in STRATEGIES.items():
        by_family.setdefault(s.family, []).append(name)
    fast = {n for names in by_family.values() for n in (names[0], names[-1])}
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in STRATEGIES]


@pytest.mark.parametrize("name", _registry_params())
def test_every_registered_strategy_round_trips(name, tmp_path, soundness_model):
    w, truth = soundness_model("trained-V10-K4-partial")
    path = tmp_path / f"{name}.json"
    result = certificates.certify(w, name, path)
    ok = certificates.check_certificate(w, path)
    assert ok.correct_count == ok.proven_count == result.correct_count <= int(truth.sum())
    assert ok.strategy == name and ok.model_sha256 == w.sha256() and ok.flops > 0
    meta = json.loads(path.read_text())
    assert meta["correct_count"] == result.correct_count and meta["strategy"] == name
    assert certificates.tensor_path(path).is_file()


def test_round_trip_is_exact(tmp_path, soundness_model):
    """Every kind of certificate value comes back with its type and value (bitwise tensors)."""
    w, _ = soundness_model(MODEL)
    cert = {
        "a": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "b": torch.rand(5, dtype=torch.float64),
        "m": torch.zeros(0, 7, dtype=torch.bool),
        "k": torch.tensor([-3, 4], dtype=torch.int8),
        "i": 2**62 + 1,
        "f": 0.1,
        "inf": -math.inf,
        "s": "mean_query+diff",
        "flag": True,
        "none": None,
        "lst": [1, 2.5, "x", [torch.ones(2)]],
        "tup": (3, "y"),
        "sub": {"t": torch.eye(3), "n": 4},
    }
    result = api.prove_one(w, STRATEGIES["cubic"])
    path = tmp_path / "x.json"
    certificates.save_certificate(path, "cubic", cert, result, w)
    _, back = certificates.read_certificate(path)
    assert back.keys() == cert.keys()
    for key in ("i", "f", "inf", "s", "flag", "none", "tup"):
        assert back[key] == cert[key] and type(back[key]) is type(cert[key])
    for key in ("a", "b", "m", "k"):
        assert back[key].dtype == cert[key].dtype and torch.equal(back[key], cert[key])
    assert back["lst"][:3] == [1, 2.5, "x"] and torch.equal(back["lst"][3][0], torch.ones(2))
    assert torch.equal(back["sub"]["t"], torch.eye(3)) and back["sub"]["n"] == 4


def test_confirmed_from_a_model_directory(tmp_path, saved):
    """The model may be given as a saved model directory."""
    from compact_proofs import storage

    w, path = saved
    storage.save_model(w, tmp_path / "m", metadata={"task": "max_of_k"})
    ok = certificates.check_certificate(tmp_path / "m", path)
    assert ok.correct_count == ok.proven_count


# ------------------------------------------------------------------------------ tampering
def test_tampered_bound_is_refused(tmp_path, saved):
    w, path = _copy(saved, tmp_path)
    stated = json.loads(path.read_text())["correct_count"]
    _edit(path, correct_count=stated + 1)
    with pytest.raises(CertificateError, match=f"proves only {stated:,} correct inputs"):
        certificates.check_certificate(w, path)
    _edit(path, correct_count=stated - 1)  # a weaker statement is still a theorem
    assert certificates.check_certificate(w, path).correct_count == stated - 1


def test_a_refusal_names_an_older_checker_revision(tmp_path, saved):
    """A certificate records its checker's revision; when the check refuses a certificate of
    another revision (here: one without the field, i.e. revision 1), the reason says so. The
    revision is not trusted: a certificate that still checks is confirmed whatever it says."""
    w, path = _copy(saved, tmp_path)
    meta = json.loads(path.read_text())
    assert meta["checker_revision"] == adaptive.STRATEGY.revision == adaptive.REVISION > 1
    stated = meta["correct_count"]
    _edit(path, correct_count=stated + 1)
    with pytest.raises(CertificateError) as same:
        certificates.check_certificate(w, path)
    assert "revision" not in str(same.value)
    del meta["checker_revision"]
    path.write_text(json.dumps(meta | {"correct_count": stated + 1}))
    hint = (
        "records checker revision 1; the installed 'adaptive' checker is revision "
        f"{adaptive.REVISION}"
    )
    with pytest.raises(CertificateError, match=f"proves only {stated:,} .*{hint}"):
        certificates.check_certificate(w, path)
    _edit(path, correct_count=stated)
    assert certificates.check_certificate(w, path).proven_count == stated
    _edit_tensors(path, lambda t: t.update(roots=t["roots"][:, :2]))  # malformed for the checker
    with pytest.raises(CertificateError, match=f"rejects the certificate.*{hint}"):
        certificates.check_certificate(w, path)


def test_tampered_strategy_is_refused(tmp_path, saved):
    w, path = _copy(saved, tmp_path)
    _edit(path, strategy="adaptive-deluxe")
    with pytest.raises(CertificateError, match="unknown strategy 'adaptive-deluxe'"):
        certificates.check_certificate(w, path)
    _edit(path, strategy="cubic")  # another real strategy: its checker refuses this certificate
    with pytest.raises(CertificateError, match="'cubic' checker rejects the certificate"):
        certificates.check_certificate(w, path)


def test_tampered_sha256_is_refused(tmp_path, saved):
    w, path = _copy(saved, tmp_path)
    _edit(path, model_sha256="0" * 64)
    with pytest.raises(CertificateError, match="sha256 0000000000000000"):
        certificates.check_certificate(w, path)


def test_tampered_model_is_refused(saved):
    w, path = saved
    W_U = w.W_U.clone()
    W_U[0, 0] = torch.nextafter(W_U[0, 0], torch.tensor(math.inf))  # one ulp
    bad = Weights(W_E=w.W_E, W_pos=w.W_pos, W_Q=w.W_Q, W_K=w.W_K, W_V=w.W_V, W_O=w.W_O, W_U=W_U)
    with pytest.raises(CertificateError, match="different or modified model"):
        certificates.check_certificate(bad, path)


def test_tampered_version_is_refused(tmp_path, saved):
    w, path = _copy(saved, tmp_path)
    _edit(path, format_version=2)
    with pytest.raises(CertificateError, match="unsupported certificate format version 2"):
        certificates.check_certificate(w, path)


def test_tampered_tensor_file_is_refused(tmp_path, saved):
    """Bytes changed without updating the digest: refused as modified."""
    w, path = _copy(saved, tmp_path)
    tpath = certificates.tensor_path(path)
    data = bytearray(tpath.read_bytes())
    data[-1] ^= 1
    tpath.write_bytes(bytes(data))
    with pytest.raises(CertificateError, match="does not match the certificate"):
        certificates.check_certificate(w, path)


def test_forged_tensors_are_refused_by_the_check(tmp_path, saved):
    """Tensors changed and the digest recomputed: only the trusted check stands between the
    forgery and the bound, and it refuses (less proven, or a malformed certificate)."""
    w, path = _copy(saved, tmp_path)
    _edit_tensors(path, lambda t: t["claim"].zero_())  # drop every leaf's claim
    with pytest.raises(CertificateError, match="proves only"):
        certificates.check_certificate(w, path)
    w, path = _copy(saved, tmp_path)

    def duplicate_root(t):
        t["roots"][-1] = t["roots"][0]

    _edit_tensors(path, duplicate_root)
    with pytest.raises(CertificateError, match="rejects the certificate.*duplicate roots"):
        certificates.check_certificate(w, path)
    w, path = _copy(saved, tmp_path)

    def refute_as_prove(t):
        t["claim"][t["claim"] == 2] = 1  # claim the refuted (incorrect) boxes are correct

    _edit_tensors(path, refute_as_prove)
    ok = certificates.check_certificate(w, path)  # the false claims are simply not counted
    assert ok.proven_count == ok.correct_count


def test_missing_or_foreign_files_are_refused(tmp_path, saved):
    w, path = _copy(saved, tmp_path)
    with pytest.raises(CertificateError, match="not found"):
        certificates.check_certificate(w, tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(CertificateError, match="not a compact-proofs certificate"):
        certificates.check_certificate(w, tmp_path / "x.json")
    certificates.tensor_path(path).unlink()
    with pytest.raises(CertificateError, match="tensor file .* is missing"):
        certificates.check_certificate(w, path)
    assert issubclass(CertificateError, UserError)


def test_result_of_another_model_cannot_be_saved(tmp_path, saved, soundness_model):
    w, _ = saved
    other, _ = soundness_model("trained-V8-K3")
    result = api.prove_one(other, STRATEGIES["cubic"])
    with pytest.raises(UserError, match="another model"):
        certificates.save_certificate(tmp_path / "c.json", "cubic", {}, result, w)


def test_budget_names_outside_the_registry(tmp_path, soundness_model):
    w, _ = soundness_model(MODEL)
    path = tmp_path / "b.json"
    certificates.certify(w, "adaptive-budget-60000", path)
    assert adaptive.strategy_for_name("adaptive-budget-60000") is not None
    assert certificates.check_certificate(w, path).strategy == "adaptive-budget-60000"


def test_malformed_headers_are_refused_in_one_line(tmp_path, saved):
    """Entries a forger could write that used to escape as tracebacks."""
    w, path = _copy(saved, tmp_path)
    meta = json.loads(path.read_text())
    for bad, message in [
        ({"tensor_file": ""}, "must be a plain file name"),
        ({"tensor_file": ".."}, "must be a plain file name"),
        ({"entries": meta["entries"] | {"budget": {"$tuple": 5}}}, "bad tuple entry 5"),
        ({"entries": meta["entries"] | {"budget": {"$tensor": [1]}}}, "has no tensor"),
    ]:
        path.write_text(json.dumps(meta | bad))
        with pytest.raises(CertificateError, match=message):
            certificates.check_certificate(w, path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CertificateError):
        certificates.check_certificate(w, path)
    path.write_text(json.dumps(meta))
    (tmp_path / "d.safetensors").mkdir()
    path.write_text(json.dumps(meta | {"tensor_file": "d.safetensors"}))
    with pytest.raises(CertificateError, match="is a directory"):
        certificates.check_certificate(w, path)
    with pytest.raises(CertificateError, match=r"c not found \(did you mean .*c\.json\?\)"):
        certificates.check_certificate(w, tmp_path / "c")
    with pytest.raises(CertificateError, match="is a directory, not a certificate"):
        certificates.check_certificate(w, tmp_path)


def test_a_missing_entry_is_named(tmp_path, soundness_model):
    """A certificate of one subcubic variant, checked as another that needs other entries."""
    w, _ = soundness_model(MODEL)
    names = [n for n, s in STRATEGIES.items() if s.family.startswith("subcubic")]
    path = tmp_path / "s.json"
    certificates.certify(w, names[0], path)
    have = set(certificates.read_certificate(path)[1])
    other = next(n for n in names if set(STRATEGIES[n].search(w)) - have)
    _edit(path, strategy=other)
    with pytest.raises(CertificateError, match="rejects the certificate: it has no entry '"):
        certificates.check_certificate(w, path)


def test_certify_refuses_bad_targets_before_any_work(tmp_path, saved, monkeypatch):
    from compact_proofs import storage

    w, _ = saved
    model = tmp_path / "m"
    storage.save_model(w, model, metadata={"task": "max_of_k"})
    before = {f.name: f.read_bytes() for f in model.iterdir()}

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the target was checked")

    monkeypatch.setattr(api, "prove_one", no_work)
    (tmp_path / "data.json").write_text("[1, 2]")
    (tmp_path / "sub").mkdir()
    for target, message in [
        (model / "model.json", "the model's own file"),
        (model / "model", "the model's own file"),
        (tmp_path / "data.json", "exists and is not a certificate file"),
        (tmp_path / "sub", "is a directory"),
        (tmp_path / "sub" / "..", "names no file"),
        (tmp_path / "nodir" / "x.json", "does not exist"),
    ]:
        with pytest.raises(UserError, match=message):
            certificates.certify(model, "cubic", target)
    with pytest.raises(UserError, match="one proof; 'all' names"):
        certificates.certify(model, "all", tmp_path / "x.json")
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before
    assert not (tmp_path / "nodir").exists() and (tmp_path / "data.json").read_text() == "[1, 2]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "m", "sub"]  # no strays


def test_an_existing_certificate_is_replaced(tmp_path, saved):
    w, path = _copy(saved, tmp_path)
    certificates.certify(w, "cubic", path)  # a certificate may be overwritten by another
    assert certificates.check_certificate(w, path).strategy == "cubic"
