"""Sweeps (compact_proofs.sweep): the directory format, resume after SIGKILL, skips and
failures, aggregation, the Dask backend and ``reproduce``.

Models are real (tiny: Max-of-3 over 6 tokens, d_model 8, a few training steps); strategies are
fakes registered through ``api.STRATEGIES`` whose counts come from an independent float64 forward
pass, so resumed / parallel / Dask runs can be compared number for number.
"""

import csv
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compact_proofs import api, task
from compact_proofs import model as model_mod
from compact_proofs.errors import UserError
from compact_proofs.proofs import registry
from compact_proofs.proofs.protocol import Strategy, Verdict
from compact_proofs.sweep import (
    MODEL_COLUMNS,
    RESULT_COLUMNS,
    aggregate,
    describe,
    layout,
    reproduce,
    resolve_seeds,
    run_sweep,
)
from compact_proofs.sweep.layout import ModelSpec
from compact_proofs.sweep.run import SweepSummary

K, V, D_MODEL, STEPS = 3, 6, 8, 40
SEEDS = (50, 104)
TINY = {"ks": (K,), "d_vocab": V, "d_model": D_MODEL, "train_steps": STEPS, "analysis": "none"}
DELAY_ENV = "COMPACT_PROOFS_TEST_SWEEP_DELAY"


# ---------------------------------------------------------------------------------------------
# Fake strategies (module level, so loky and Dask workers can unpickle them by reference).


def margins(w) -> torch.Tensor:
    """logit[max] - max other logit at the last position, every input, float64 forward pass."""
    net = model_mod.from_weights(w).double()
    tokens = task.all_inputs(w.config.d_vocab, w.config.n_ctx)
    with torch.no_grad():
        logits = net(tokens)[:, -1]
    y = task.max_labels(tokens)[:, None]
    right = logits.gather(1, y)[:, 0]
    return right - logits.scatter(1, y, float("-inf")).max(dim=1).values


def _search(w) -> dict:
    return {}


def _worker() -> str:
    """The Dask worker running this (empty outside Dask)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


def _check_margin(w, certificate, ops, *, margin: float) -> Verdict:
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    details = {"margin": margin, "pid": os.getpid(), "dask_worker": _worker()}
    return Verdict(int((margins(w) > margin).sum()), details=details)


def _check_crash(w, certificate, ops) -> Verdict:
    raise RuntimeError("boom in the checker")


def _check_liar(w, certificate, ops) -> Verdict:
    return Verdict(w.config.n_inputs)


def _dim(cfg, *, factor: int) -> int:
    return factor * cfg.d_vocab


def _fake(name, check, max_inputs=None) -> Strategy:
    return Strategy(
        name=name,
        family="cubic" if name == "fake-exact" else "fake",
        complexity="O(1)",
        search=_search,
        check=check,
        unexplained_dim=functools.partial(_dim, factor=len(name)),
        max_inputs=max_inputs,
    )


GOOD = {
    "fake-exact": _fake("fake-exact", functools.partial(_check_margin, margin=0.0)),
    "fake-loose": _fake("fake-loose", functools.partial(_check_margin, margin=0.5)),
}
FAKES = {
    **GOOD,
    "fake-enum": _fake("fake-enum", functools.partial(_check_margin, margin=0.0), max_inputs=100),
    "fake-crash": _fake("fake-crash", _check_crash),
}


def _naive_accuracy(model, **kwargs) -> dict:
    """Stand-in for api.accuracy while compact_proofs.exact is not installed."""
    w = api.load(model)
    correct = int((margins(w) > 0).sum())
    total = w.config.n_inputs
    return {
        "method": "exact",
        "correct": correct,
        "incorrect": total - correct,
        "undecided": 0,
        "total": total,
        "accuracy": correct / total,
        "model_sha256": w.sha256(),
        "d_vocab": w.config.d_vocab,
        "n_ctx": w.config.n_ctx,
        "seconds": 0.0,
        "version": api.package_version(),
    }


@functools.cache
def have_exact() -> bool:
    """Whether api.accuracy works yet (compact_proofs.exact is written concurrently)."""
    from compact_proofs.weights import Weights

    g = torch.Generator().manual_seed(0)
    shapes = {"W_E": (3, 4), "W_pos": (2, 4), "W_Q": (4, 4), "W_K": (4, 4), "W_V": (4, 4)}
    shapes |= {"W_O": (4, 4), "W_U": (4, 3)}
    w = Weights(**{k: torch.randn(*v, generator=g) for k, v in shapes.items()})
    try:
        api.accuracy(w)
    except (ImportError, AttributeError):
        return False
    return True


def install(strategies: dict, set_attr=setattr) -> None:
    """Register ``strategies`` (and the stand-in accuracy if needed) in this process."""
    set_attr(api, "STRATEGIES", strategies)
    set_attr(registry, "STRATEGIES", strategies)
    if not have_exact():
        set_attr(api, "accuracy", _naive_accuracy)


@pytest.fixture
def fakes(monkeypatch):
    install(FAKES, monkeypatch.setattr)
    return FAKES


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def counts(out: Path) -> dict[tuple[int, str], int]:
    return {
        (int(r["seed"]), r["strategy"]): int(r["correct_count"])
        for r in read_csv(out / "results.csv")
    }


# ---------------------------------------------------------------------------------------------


def test_resolve_seeds():
    assert resolve_seeds(3) == [50, 104, 123]
    assert resolve_seeds("2") == [50, 104]
    assert len(resolve_seeds("all")) == 151
    assert resolve_seeds("123,") == [123]
    assert resolve_seeds("7, 5,7") == [7, 5]
    assert resolve_seeds([9, 9, 1]) == [9, 1]
    for bad in (0, 152, "x", "1,a", [-1], []):
        with pytest.raises(UserError):
            resolve_seeds(bad)


def test_sweep_files_rows_skips_failures(tmp_path, fakes):
    out = tmp_path / "sweep"
    seen = []
    summary = run_sweep(out, seeds=SEEDS, progress=lambda d, t: seen.append((d, t)), **TINY)
    # progress: from 0 to the total, one call per unit
    total = len(SEEDS) * len(FAKES)
    assert {t for _, t in seen} == {total} and seen[0][0] == 0
    done = [d for d, _ in seen]
    assert done == sorted(done) and sorted(set(done)) == list(range(total + 1))
    assert describe(summary).startswith(f"2 models x {len(FAKES)} strategies: ")
    assert summary.total == total and summary.already_done == 0
    assert (summary.ok, summary.skipped, summary.failed) == (4, 2, 2)
    assert sorted(f[:2] for f in summary.failures) == [
        ("k3-v6-s104", "fake-crash"),
        ("k3-v6-s50", "fake-crash"),
    ]
    assert summary.unsound == []

    rows = read_csv(out / "results.csv")
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert sorted((int(r["seed"]), r["strategy"]) for r in rows) == sorted(
        (s, n) for s in SEEDS for n in GOOD
    )
    models = {int(r["seed"]): r for r in read_csv(out / "models.csv")}
    assert list(models) == [50, 104]  # numeric order
    assert tuple(next(iter(models.values()))) == MODEL_COLUMNS and sorted(models) == list(SEEDS)
    for seed in SEEDS:
        spec = ModelSpec(K, V, seed)
        w, meta = (
            api.load(spec.model_dir(out)),
            json.loads((spec.model_dir(out) / "model.json").read_text()),
        )
        m = margins(w)
        acc = json.loads(spec.accuracy_path(out).read_text())
        assert acc["method"] == "exact" and acc["model_sha256"] == w.sha256()
        # the exact accuracy (compact_proofs.exact) agrees with an independent float64 count
        assert acc["correct"] == int((m > 0).sum())
        assert meta["training"]["steps"] == STEPS
        mrow = models[seed]
        assert int(mrow["correct"]) == acc["correct"] and mrow["model_sha256"] == w.sha256()
        assert float(mrow["train_loss"]) == pytest.approx(meta["train"]["loss"])
        by_name = {r["strategy"]: r for r in rows if int(r["seed"]) == seed}
        for name, margin in (("fake-exact", 0.0), ("fake-loose", 0.5)):
            r = by_name[name]
            want = int((m > margin).sum())
            assert int(r["correct_count"]) == want and int(r["total"]) == V**K
            assert int(r["true_correct"]) == acc["correct"]
            assert float(r["normalized_bound"]) == pytest.approx(want / acc["correct"])
            assert float(r["accuracy_bound"]) == pytest.approx(want / V**K)
            assert int(r["unexplained_dim"]) == len(name) * V
            data = json.loads(spec.result_path(out, name).read_text())
            assert data["status"] == "ok" and (data["k"], data["seed"], data["d_vocab"]) == (
                K,
                seed,
                V,
            )
            assert data["details"]["margin"] == margin and data["details"]["dask_worker"] == ""
        skip = json.loads(spec.result_path(out, "fake-enum", layout.SKIPPED_SUFFIX).read_text())
        assert skip["status"] == "skipped" and "refuses" in skip["reason"]
        fail = json.loads(spec.result_path(out, "fake-crash", layout.FAILED_SUFFIX).read_text())
        assert fail["status"] == "failed" and "boom in the checker" in fail["traceback"]
    status = read_csv(out / "status.csv")
    assert sorted((r["strategy"], r["status"]) for r in status) == [
        ("fake-crash", "failed"),
        ("fake-crash", "failed"),
        ("fake-enum", "skipped"),
        ("fake-enum", "skipped"),
    ]
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pq = pd.read_parquet(out / "results.parquet")
    assert list(pq.columns) == list(RESULT_COLUMNS)
    assert sorted(zip(pq["seed"], pq["strategy"], pq["correct_count"], strict=True)) == sorted(
        (int(r["seed"]), r["strategy"], int(r["correct_count"])) for r in rows
    )


def test_rerun_is_idempotent_and_repairs(tmp_path, fakes):
    out = tmp_path / "sweep"
    run_sweep(out, seeds=SEEDS, **TINY)
    before = counts(out)
    spec = ModelSpec(K, V, SEEDS[0])
    ok_files = sorted(out.glob("results/*/*/fake-*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in ok_files}
    # damage: a truncated result, a result for another model, a stale temporary file
    broken = spec.result_path(out, "fake-exact")
    broken.write_text(broken.read_text()[:40])
    other = spec.result_path(out, "fake-loose")
    other.write_text(
        other.read_text().replace(json.loads(other.read_text())["model_sha256"], "0" * 64)
    )
    stale = broken.with_name(".fake-exact.json.abc.tmp")
    stale.write_text("{partial")
    assert len(aggregate(out).ignored) == 2  # corrupt files are never counted
    summary = run_sweep(out, seeds=SEEDS, **TINY)
    assert summary.removed_temporaries == 1 and not stale.exists()
    # only the two damaged units and the two failures are run again
    assert summary.total - summary.already_done == 4
    assert counts(out) == before
    for p, t in mtimes.items():
        if p not in (broken, other) and p.name.endswith(("exact.json", "loose.json")):
            assert p.stat().st_mtime_ns == t, p
    assert summary.aggregate.ignored == []


def test_stored_model_must_match_recipe(tmp_path, fakes):
    out = tmp_path / "sweep"
    run_sweep(out, seeds=SEEDS[:1], strategies="fake-exact", **TINY)
    with pytest.raises(UserError, match="training steps"):
        run_sweep(out, seeds=SEEDS[:1], strategies="fake-exact", **(TINY | {"train_steps": 5}))
    with pytest.raises(UserError, match="unknown strategy"):
        run_sweep(out, seeds=SEEDS[:1], strategies="nope", **TINY)


def test_one_sweep_per_directory(tmp_path, fakes):
    out = tmp_path / "sweep"
    with layout.sweep_lock(out):
        with pytest.raises(UserError, match="another sweep is running"):
            run_sweep(out, seeds=SEEDS[:1], **TINY)
    assert not (out / "models").exists()


def test_analysis_is_upgraded_only_when_asked(tmp_path, fakes):
    out = tmp_path / "sweep"
    kw = TINY | {"seeds": SEEDS[:1], "strategies": "fake-exact"}
    run_sweep(out, **(kw | {"analysis": "basic"}))
    path = ModelSpec(K, V, SEEDS[0]).analysis_path(out)
    assert "ablations" not in json.loads(path.read_text())
    again = run_sweep(out, **(kw | {"analysis": "basic"}))
    assert again.total - again.already_done == 0
    upgraded = run_sweep(out, **(kw | {"analysis": "sampled"}))
    assert upgraded.total - upgraded.already_done == 1
    info = json.loads(path.read_text())
    assert info["ablation_method"] == "exact" and len(info["ablations"]) == 32  # 216 inputs
    full = run_sweep(out, **(kw | {"analysis": "full"}))  # already exhaustive: nothing to do
    assert full.total - full.already_done == 0


def test_unsound_bound_is_flagged(tmp_path, monkeypatch):
    liar = _fake("fake-liar", _check_liar)
    install({"fake-liar": liar}, monkeypatch.setattr)
    summary = run_sweep(tmp_path / "s", seeds=SEEDS[:1], **TINY)
    assert len(summary.unsound) == 1 and "fake-liar" in summary.unsound[0]
    assert not summary.complete
    assert ", 1 UNSOUND, " in describe(summary) and "UNSOUND k" in describe(summary)
    assert describe(summary).startswith("1 model x 1 strategy: ")
    # the row stays in results.csv for inspection; status.csv flags it
    [row] = [r for r in read_csv(tmp_path / "s" / "results.csv") if r["strategy"] == "fake-liar"]
    [flag] = read_csv(tmp_path / "s" / "status.csv")
    assert flag["strategy"] == "fake-liar" and flag["status"] == "unsound"
    assert (
        f"claims {row['correct_count']} correct inputs but only {row['true_correct']}"
        in (flag["reason"])
    )


@pytest.mark.parametrize("jobs", [1, 2])
def test_strategy_objects_outside_the_registry_are_swept(tmp_path, jobs):
    """Your own Strategy, passed as an object (docs/new-strategy.md), also to worker processes."""
    mine = GOOD["fake-loose"]
    mine = Strategy(**{**mine.__dict__, "name": "mine-loose", "family": "mine"})
    assert "mine-loose" not in registry.STRATEGIES
    summary = run_sweep(
        tmp_path / "s", seeds=SEEDS[:1], **(TINY | {"strategies": [mine, "cubic"]}), jobs=jobs
    )
    assert summary.complete and summary.ok == 2
    rows = {r["strategy"]: r for r in read_csv(tmp_path / "s" / "results.csv")}
    assert set(rows) == {"mine-loose", "cubic"} and rows["mine-loose"]["family"] == "mine"


def test_big_integers_are_exact(tmp_path):
    """K=20 over 64 tokens: counts beyond 64 bits survive CSV exactly (and Parquet as text)."""
    spec = ModelSpec(20, 64, 1)
    total = 64**20
    row = {c: None for c in RESULT_COLUMNS} | {
        "k": 20, "d_vocab": 64, "seed": 1, "strategy": "cubic", "family": "cubic",
        "complexity": "c", "correct_count": total - 3, "total": total, "flops": 10,
        "accuracy_bound": (total - 3) / total, "model_sha256": "a" * 64, "status": "ok",
    }  # fmt: skip
    layout.atomic_write_json(spec.result_path(tmp_path, "cubic"), row)
    summary = aggregate(tmp_path)
    assert summary.results_rows == 1
    [r] = read_csv(tmp_path / "results.csv")
    assert int(r["correct_count"]) == total - 3 and r["true_correct"] == ""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    import decimal

    import pyarrow.parquet as pq

    assert pd.read_parquet(tmp_path / "results.parquet")["total"][0] == decimal.Decimal(total)
    # the schema does not depend on the data: K=20 and K=4 files concatenate
    small = tmp_path / "small"
    layout.atomic_write_json(
        ModelSpec(4, 64, 1).result_path(small, "cubic"),
        row | {"k": 4, "correct_count": 5, "total": 64**4, "accuracy_bound": 5 / 64**4},
    )
    aggregate(small)
    big_schema = pq.read_schema(tmp_path / "results.parquet")
    assert pq.read_schema(small / "results.parquet").equals(big_schema)
    assert str(big_schema.field("true_correct").type) == "decimal256(76, 0)"
    assert str(big_schema.field("flops").type) == "double"
    assert str(big_schema.field("seed").type) == "int64"


# ---------------------------------------------------------------------------------------------
# Resume after SIGKILL, against an uninterrupted run.

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_sweep
test_sweep.install(test_sweep.GOOD)
from compact_proofs import sweep
sweep.run_sweep({out!r}, seeds={seeds!r}, jobs={jobs}, **test_sweep.TINY)
"""


def test_resume_after_sigkill(tmp_path, monkeypatch):
    install(GOOD, monkeypatch.setattr)
    seeds = (50, 104, 123)
    reference = tmp_path / "reference"
    run_sweep(reference, seeds=seeds, **TINY)
    out = tmp_path / "killed"
    jobs = 2 if have_exact() else 1  # loky workers use the real api.accuracy
    script = SCRIPT.format(tests=str(Path(__file__).parent), out=str(out), seeds=seeds, jobs=jobs)
    env = dict(os.environ, **{DELAY_ENV: "0.4"})
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    n_units = len(seeds) * len(GOOD)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("results/*/*/fake-*.json"))) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done_at_kill = len(list(out.glob("results/*/*/fake-*.json")))
    assert 2 <= done_at_kill < n_units
    assert not (out / "results.csv").exists()
    summary = run_sweep(out, seeds=seeds, **TINY)
    assert summary.already_done >= 2 and summary.total == n_units
    assert summary.complete and summary.ok == n_units
    rows = read_csv(out / "results.csv")
    keys = [(r["seed"], r["strategy"]) for r in rows]
    assert len(keys) == len(set(keys)) == n_units
    assert counts(out) == counts(reference)
    shas = {r["seed"]: r["model_sha256"] for r in read_csv(reference / "models.csv")}
    assert {r["seed"]: r["model_sha256"] for r in read_csv(out / "models.csv")} == shas
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def test_parallel_processes_match_serial(tmp_path, monkeypatch):
    """jobs=2: training, accuracy and proofs run in loky worker processes and give the serial
    run's models and numbers. (Without the real api.accuracy the models are prepared here.)"""
    install(GOOD, monkeypatch.setattr)
    run_sweep(tmp_path / "serial", seeds=SEEDS, **TINY)
    if not have_exact():
        run_sweep(tmp_path / "loky", seeds=SEEDS, strategies=[], **TINY)
    summary = run_sweep(tmp_path / "loky", seeds=SEEDS, jobs=2, **TINY)
    assert summary.already_done == 0 and summary.complete
    assert counts(tmp_path / "loky") == counts(tmp_path / "serial")
    assert read_csv(tmp_path / "loky" / "models.csv") != []
    for name in ("models.csv", "results.csv"):
        a, b = (read_csv(tmp_path / d / name) for d in ("serial", "loky"))
        assert [r["model_sha256"] for r in a] == [r["model_sha256"] for r in b]
    pids = {
        json.loads(p.read_text())["details"]["pid"]
        for p in (tmp_path / "loky").glob("results/*/*/fake-*.json")
    }
    assert os.getpid() not in pids


# ---------------------------------------------------------------------------------------------
# Dask.


def test_dask_cluster_matches_local(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    install(FAKES, monkeypatch.setattr)
    run_sweep(tmp_path / "local", seeds=SEEDS, **TINY)
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        summary = run_sweep(
            tmp_path / "dask", seeds=SEEDS, dask_address=cluster.scheduler_address, **TINY
        )
    assert (summary.ok, summary.skipped, summary.failed) == (4, 2, 2)
    assert counts(tmp_path / "dask") == counts(tmp_path / "local")
    for path in (tmp_path / "dask").glob("results/*/*/fake-exact.json"):  # ran on the cluster
        assert json.loads(path.read_text())["details"]["dask_worker"].startswith("tcp://")
    assert read_csv(tmp_path / "dask" / "status.csv") == read_csv(tmp_path / "local" / "status.csv")


@pytest.mark.slow
def test_dask_process_workers_match_local(tmp_path, monkeypatch):
    """Two worker processes (a cluster in miniature): strategy units run there."""
    distributed = pytest.importorskip("distributed")
    install(GOOD, monkeypatch.setattr)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    run_sweep(tmp_path / "local", seeds=SEEDS, **TINY)
    run_sweep(tmp_path / "dask", seeds=SEEDS, strategies=[], **TINY)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        summary = run_sweep(
            tmp_path / "dask", seeds=SEEDS, dask_address=cluster.scheduler_address, **TINY
        )
    assert summary.complete and summary.total - summary.already_done == len(SEEDS) * len(GOOD)
    assert counts(tmp_path / "dask") == counts(tmp_path / "local")
    workers = {
        json.loads(p.read_text())["details"]["dask_worker"]
        for p in (tmp_path / "dask").glob("results/*/*/fake-*.json")
    }
    assert all(w.startswith("tcp://127.0.0.1") for w in workers)


def test_dask_bad_address_is_a_user_error(tmp_path, fakes, monkeypatch):
    pytest.importorskip("distributed")
    from compact_proofs.sweep import pool

    monkeypatch.setattr(pool, "DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(UserError, match="Dask scheduler"):
        run_sweep(tmp_path / "s", seeds=SEEDS[:1], dask_address="tcp://127.0.0.1:1", **TINY)
    with pytest.raises(UserError, match="expected a scheduler address like tcp://host:8786"):
        run_sweep(tmp_path / "s", seeds=SEEDS[:1], dask_address="foo", **TINY)
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_dask_address_of_a_server_that_is_not_dask_is_refused_in_time(monkeypatch):
    """A port that answers in another protocol (a dashboard's HTTP) or accepts and stays
    silent: dask's Client would wait forever; the check gives up within its timeout."""
    pytest.importorskip("distributed")
    import http.server
    import socket
    import threading

    from compact_proofs.sweep import pool

    monkeypatch.setattr(pool, "DASK_CONNECT_TIMEOUT", "2s")
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        for port in (httpd.server_port, silent.getsockname()[1]):
            t0 = time.perf_counter()
            with pytest.raises(UserError, match="Dask scheduler"):
                pool.check_dask_scheduler(f"tcp://127.0.0.1:{port}")
            assert time.perf_counter() - t0 < 30
    finally:
        httpd.shutdown()
        silent.close()


def test_bad_recipe_and_an_output_under_a_file_are_refused_before_writing(tmp_path, fakes):
    for bad in ({"train_steps": 0}, {"train_steps": -5}, {"d_model": 0}):
        with pytest.raises(UserError, match="give a positive whole number"):
            run_sweep(tmp_path / "s", seeds=SEEDS[:1], **{**TINY, **bad})
    assert not (tmp_path / "s").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        run_sweep(tmp_path / "file" / "sub", seeds=SEEDS[:1], **TINY)


# ---------------------------------------------------------------------------------------------
# reproduce


def test_reproduce_runs_the_report(tmp_path, monkeypatch):
    install(GOOD, monkeypatch.setattr)
    from compact_proofs import report

    calls = []

    def fake_report(out_dir):
        calls.append(Path(out_dir))
        assert (Path(out_dir) / "results.csv").is_file()
        return Path(out_dir) / "report"

    monkeypatch.setattr(report, "make_report", fake_report)
    messages = []
    path = reproduce(
        tmp_path / "r", k=K, d_vocab=V, seeds=1, jobs=1, train_steps=STEPS, analysis="basic",
        log=messages.append,
    )  # fmt: skip
    assert path == tmp_path / "r" / "report" and calls == [tmp_path / "r"]
    assert any("2 proved" in m for m in messages)
    assert (tmp_path / "r" / "analysis" / "k3-v6-s50.json").is_file()
    assert counts(tmp_path / "r").keys() == {(50, "fake-exact"), (50, "fake-loose")}


@pytest.mark.slow
def test_reproduce_with_the_real_report(tmp_path, monkeypatch):
    install(GOOD, monkeypatch.setattr)
    path = reproduce(tmp_path / "r", k=K, d_vocab=V, seeds=2, jobs=1, train_steps=STEPS)
    assert path == tmp_path / "r" / "report" and (path / "index.md").is_file()


def test_progress_eta():
    from io import StringIO

    from rich.console import Console

    from compact_proofs.sweep import progress

    assert progress.eta_seconds(10, 10, 20, 5.0) is None  # nothing run yet in this run
    assert progress.eta_seconds(10, 15, 20, 5.0) == pytest.approx(5.0)  # 5 units in 5 s, 5 left
    with progress.rich_progress(Console(file=StringIO(), force_terminal=True)) as update:
        for done in (10, 12, 20):
            update(done, 20)
    log = StringIO()  # not a terminal: plain lines, at most once a minute, and at the end
    with progress.rich_progress(Console(file=log, width=200), "sweep") as update:
        for done in (10, 12, 19, 20):
            update(done, 20)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: 20/20 units, 0:00:0")


def test_progress_eta_starts_at_the_first_unit_of_the_run(monkeypatch):
    """Time before the first unit finishes (training the models) does not count against the
    units: 100 s of training, then 2 units 1 s apart leave 8 units, about 8 s."""
    from io import StringIO

    from rich.console import Console

    from compact_proofs.sweep import progress

    times = [0.0, 100.0, 101.0, 102.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: times.pop(0) if times else 102.0)
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)  # a line per update
    log = StringIO()
    with progress.rich_progress(Console(file=log, width=200), "sweep") as update:
        for done in (0, 1, 2, 3):
            update(done, 10)
    etas = [line.rsplit("ETA ", 1)[1] for line in log.getvalue().splitlines()]
    assert etas == ["-:--:--", "-:--:--", "0:00:08", "0:00:07"]
    # Units finishing together (a grouped job, parallel workers) give no rate until 1 s passed.
    times[:] = [0.0, 60.0, 60.00002, 60.00003, 62.0, 62.0]
    log = StringIO()
    with progress.rich_progress(Console(file=log, width=200), "sweep") as update:
        for done in (0, 1, 2, 3, 5):
            update(done, 40)
    etas = [line.rsplit("ETA ", 1)[1] for line in log.getvalue().splitlines()]
    assert etas == ["-:--:--", "-:--:--", "-:--:--", "-:--:--", "0:00:18"]  # 4 units in 2 s


def test_an_interrupted_sweep_tabulates_what_finished_and_a_report_flags_newer_results(
    tmp_path, monkeypatch
):
    install(GOOD, monkeypatch.setattr)
    from compact_proofs.report.data import load_sweep
    from compact_proofs.sweep import run as run_mod

    finish = run_mod._Driver.run

    def run_then_interrupt(self, *args):
        finish(self, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod._Driver, "run", run_then_interrupt)
    root = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(root, seeds=SEEDS, **TINY)
    rows = read_csv(root / "results.csv")
    assert len(rows) == len(SEEDS) * len(GOOD)  # tabulated although interrupted
    assert not any("newer than results.csv" in n for n in load_sweep(root).notes)
    later = (root / "results.csv").stat().st_mtime + 10
    one = next(root.glob("results/*/*/*.json"))
    os.utime(one, (later, later))  # as if written after the table (a killed sweep)
    [note] = [n for n in load_sweep(root).notes if "newer than results.csv" in n]
    assert note.startswith("1 result file is newer")


def test_sigterm_stops_a_sweep_as_ctrl_c_does(tmp_path, monkeypatch):
    """``kill`` (SIGTERM, as a batch scheduler sends at its time limit) cancels the sweep's
    remaining work and tabulates what finished, as Ctrl-C does; exit status 128 + 15."""
    from compact_proofs import cli
    from compact_proofs.sweep import run as run_mod

    install(GOOD, monkeypatch.setattr)
    finish = run_mod._Driver.run

    def run_then_terminate(self, *args):
        finish(self, *args)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
        raise AssertionError("SIGTERM did not stop the sweep")

    monkeypatch.setattr(run_mod._Driver, "run", run_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    root = tmp_path / "s"
    argv = [
        "sweep",
        "--out",
        str(root),
        "--k",
        str(K),
        "--d-vocab",
        str(V),
        "--d-model",
        str(D_MODEL),
        "--steps",
        str(STEPS),
        "--seeds",
        ",".join(map(str, SEEDS)),
        "--strategy",
        ",".join(GOOD),
        "--analysis",
        "none",
    ]
    assert cli.main(argv) == 128 + signal.SIGTERM
    assert len(read_csv(root / "results.csv")) == len(SEEDS) * len(GOOD)
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the command


def test_a_models_adaptive_variants_run_as_one_job_exploring_once(tmp_path, monkeypatch):
    """The unbudgeted adaptive proof and its budgets share one exploration per model (one job
    for all of them); each still gets its own result file, as in a separate search, and
    progress counts each."""
    from compact_proofs.proofs.adaptive import searcher

    names = ["adaptive", "adaptive-budget-1e9", "cubic"]
    calls = []
    explore = searcher.explore
    monkeypatch.setattr(searcher, "explore", lambda *a: calls.append(1) or explore(*a))
    seen = []
    summary = run_sweep(
        tmp_path / "s", seeds=SEEDS, strategies=names, progress=lambda d, t: seen.append(d), **TINY
    )
    assert len(calls) == len(SEEDS)
    assert summary.ok == len(SEEDS) * len(names) and seen[-1] == len(SEEDS) * len(names)
    rows = {(r["seed"], r["strategy"]): r for r in read_csv(tmp_path / "s" / "results.csv")}
    for seed in SEEDS:
        w = api.load(ModelSpec(K, V, seed).model_dir(tmp_path / "s"))
        [alone] = api.prove(w, "adaptive-budget-1e9")
        row = rows[(str(seed), "adaptive-budget-1e9")]
        assert (int(row["correct_count"]), int(row["flops"])) == (alone.correct_count, alone.flops)
    # Resumed with one more budget: only the missing unit runs (one exploration per model).
    calls.clear()
    more = [*names, "adaptive-budget-2e9"]
    summary = run_sweep(tmp_path / "s", seeds=SEEDS, strategies=more, **TINY)
    assert len(calls) == len(SEEDS) and summary.ok == len(SEEDS) * len(more)
    rows = {(r["seed"], r["strategy"]): r for r in read_csv(tmp_path / "s" / "results.csv")}
    for seed in SEEDS:
        a, b = rows[(str(seed), "adaptive-budget-1e9")], rows[(str(seed), "adaptive-budget-2e9")]
        assert (a["correct_count"], a["flops"]) == (b["correct_count"], b["flops"])


def test_describe_says_what_its_units_are(tmp_path):
    """The units counted are proofs, plus one analysis per model when analyses are on."""
    proofs = SweepSummary(tmp_path, models=["a", "b"], strategies=["cubic"], total=2, ok=2)
    both = SweepSummary(
        tmp_path, models=["a", "b"], strategies=["cubic"], total=4, already_done=2, ok=2
    )
    assert "; 2 of 2 units (proofs) run now in " in describe(proofs)
    assert "; 2 of 4 units (proofs and analyses) run now in " in describe(both)
