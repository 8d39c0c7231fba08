"""The command line end to end on a tiny trained model: every subcommand's happy path and its
one-line refusals (exit status 2, nothing written)."""

import json
import re
import shutil

import pytest

from compact_proofs import api, cli, exact
from compact_proofs.proofs.registry import STRATEGIES


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "m"
    assert cli.main(["train", "--k", "3", "--seed", "7", "--d-vocab", "8", "--steps", "150",
                     "--out", str(out)]) == 0  # fmt: skip
    return out


def test_strategies_names_list_the_registry(capsys):
    assert cli.main(["strategies", "--names"]) == 0
    assert capsys.readouterr().out.split() == list(STRATEGIES)


def test_strategies_lists_every_name_under_its_family(capsys):
    """The default listing: one heading per family (its count and cost), then its names."""
    assert cli.main(["strategies"]) == 0
    heading = re.compile(r"^(.+), (\d+) strateg(?:y|ies): (.+)$")
    seen: dict[str, tuple[str, str]] = {}
    counts = {}
    group = None
    for line in capsys.readouterr().out.splitlines()[1:]:
        if line.startswith("  "):
            assert line.strip() not in seen
            seen[line.strip()] = group
        elif line:
            family, count, complexity = heading.match(line).groups()
            group = (family, complexity)
            counts[group] = int(count)
    assert sorted(seen) == sorted(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert seen[name] == (strategy.family, strategy.complexity)
    assert sum(counts.values()) == len(STRATEGIES)
    assert all(list(seen.values()).count(g) == c for g, c in counts.items())


def test_accuracy_json_equals_the_library(model_dir, tmp_path, capsys):
    """`accuracy` writes --json, and keeps an exact count beside a model directory, which
    `prove` then normalises by."""
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    target = tmp_path / "acc.json"
    assert cli.main(["accuracy", str(model), "--json", str(target)]) == 0
    written = json.loads(target.read_text())
    truth = exact.exact_accuracy(api.load(model_dir)).correct
    assert written["correct"] == truth
    assert json.loads((model / "accuracy.json").read_text())["correct"] == truth
    assert "stored in" in capsys.readouterr().out
    assert cli.main(["prove", str(model), "--strategy", "brute-force", "--json", str(target)]) == 0
    assert json.loads(target.read_text())["normalized_bound"] == 1.0


def test_prove_all_is_sound_and_brute_force_is_exact(model_dir, tmp_path):
    target = tmp_path / "proofs.json"
    assert cli.main(["prove", str(model_dir), "--strategy", "all", "--json", str(target)]) == 0
    rows = json.loads(target.read_text())
    truth = exact.exact_accuracy(api.load(model_dir)).correct
    assert {r["strategy"] for r in rows} == set(STRATEGIES)
    assert all(r["correct_count"] <= truth for r in rows)
    assert next(r for r in rows if r["strategy"] == "brute-force")["correct_count"] == truth


def test_prove_repeated_strategy_and_stored_exact_count(model_dir, tmp_path, capsys):
    """--strategy accumulates; a sweep's accuracy.json beside the model normalises the bounds
    only when it was computed for these weights."""
    w = api.load(model_dir)
    truth = exact.exact_accuracy(w).correct
    acc = model_dir / "accuracy.json"
    acc.write_text(json.dumps({"method": "exact", "correct": truth, "model_sha256": w.sha256()}))
    target = tmp_path / "two.json"
    try:
        assert cli.main(["prove", str(model_dir), "--strategy", "cubic",
                         "--strategy", "brute-force", "--json", str(target)]) == 0  # fmt: skip
        rows = {r["strategy"]: r for r in json.loads(target.read_text())}
        assert set(rows) == {"cubic", "brute-force"}
        assert rows["brute-force"]["normalized_bound"] == 1.0
        assert rows["cubic"]["normalized_bound"] == rows["cubic"]["correct_count"] / truth
        assert "normalising by the exact count" in capsys.readouterr().out
        acc.write_text(json.dumps({"method": "exact", "correct": 1, "model_sha256": "other"}))
        assert cli.main(["prove", str(model_dir), "--json", str(target)]) == 0
        row = json.loads(target.read_text())  # one proof: one object
        assert row["strategy"] == "cubic" and row["normalized_bound"] is None
    finally:
        acc.unlink()


def test_certificate_round_trip_and_refusals(model_dir, tmp_path, capsys):
    cert = tmp_path / "proof.json"
    assert cli.main(["prove", str(model_dir), "--strategy", "adaptive",
                     "--certificate", str(cert)]) == 0  # fmt: skip
    assert cert.is_file()
    capsys.readouterr()
    assert cli.main(["check", str(model_dir), str(cert)]) == 0
    truth = exact.exact_accuracy(api.load(model_dir)).correct
    assert f"at least {truth:,} of" in capsys.readouterr().out  # adaptive reaches the exact count

    header = json.loads(cert.read_text())
    header["correct_count"] += 1  # claim one input more than was proven
    cert.write_text(json.dumps(header))
    assert cli.main(["check", str(model_dir), str(cert)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "1", "--seed", "3"], r"n_ctx \(K\) must be at least 2, got 1"),
        (["--k", "3", "--seed", "-1"], "seed must be a non-negative integer, got -1"),
        (["--k", "3", "--seed", "3", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["--k", "3", "--seed", "3", "--d-vocab", "1"], "d_vocab must be at least 2, got 1"),
    ],
)
def test_train_refuses_bad_settings(argv, message, tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["train", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err  # one line, nothing else
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategy", "adaptive-budget-1e400"], "whole number from 1 to 1e18, got 1e400"),
        (["--strategy", "adaptive-budget--5"], "whole number from 1 to 1e18, got -5"),
        (["--strategy", "adaptive-budget-2.5"], "whole number from 1 to 1e18, got 2.5"),
        (["--true-correct", "-3"], r"true correct count -3 is outside \[0, 512\]"),
        (["--true-correct", "513"], r"true correct count 513 is outside \[0, 512\]"),
        (
            ["--true-correct", "1"],
            r"more than the count given by --true-correct \(1\): either that count is wrong or",
        ),
        (
            ["--true-correct", "1", "--certificate", "TMP/c.json"],
            r"more than the count given by --true-correct \(1\)",
        ),
        (["--json", "MISSING/x.json"], "MISSING does not exist"),
        (["--certificate", "MISSING/c.json"], "MISSING does not exist"),
        (["--json", "."], "is a directory; name a file"),
        (["--threads", "-1"], "--threads must be 0"),
    ],
)
def test_prove_refuses_bad_options(argv, message, model_dir, tmp_path, capsys):
    argv = [
        a.replace("MISSING", str(tmp_path / "missing")).replace("TMP", str(tmp_path)) for a in argv
    ]
    assert cli.main(["prove", str(model_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message.replace("MISSING", re.escape(str(tmp_path / "missing"))), err), err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_prove_skips_a_strategy_that_refuses_the_model_with_a_note(tmp_path, capsys):
    """Brute force among others on a model whose scores exceed its error analysis: the others'
    table, a note naming the skip, and only their results in --json; alone it is refused."""
    import models

    from compact_proofs import storage

    huge = tmp_path / "huge"
    storage.save_model(models.random_weights(5, 3, seed=1, qk_scale=2.0**55), huge, metadata={})
    out = tmp_path / "r.json"
    argv = ["prove", str(huge), "--strategy", "brute-force,cubic", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"note: brute-force skipped: .*exceed 2\^100", printed), printed
    [cubic] = json.loads(out.read_text())  # a list, as for any request of several strategies
    assert cubic["strategy"] == "cubic"
    assert cli.main(["prove", str(huge), "--strategy", "brute-force"]) == 2
    assert "exceed 2^100" in capsys.readouterr().err


def test_a_proof_above_the_stored_exact_count_shows_every_result(
    model_dir, tmp_path, capsys, monkeypatch
):
    """An unsound strategy against accuracy.json: the table of every result, then one line
    naming the strategy and where the count came from."""
    import dataclasses

    from compact_proofs.proofs.protocol import Verdict

    def claims_everything(w, certificate, ops):
        ops.ledger.add(1, label="liar")
        return Verdict(w.config.n_inputs)

    liar = dataclasses.replace(STRATEGIES["cubic"], name="liar", check=claims_everything)
    monkeypatch.setitem(STRATEGIES, "liar", liar)
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    assert cli.main(["accuracy", str(model)]) == 0
    capsys.readouterr()
    target = tmp_path / "r.json"
    argv = ["prove", str(model), "--strategy", "cubic", "--strategy", "liar", "--json", str(target)]
    assert cli.main(argv) == 2
    assert [r["strategy"] for r in json.loads(target.read_text())] == ["cubic", "liar"]
    captured = capsys.readouterr()
    assert "cubic" in captured.out and "liar" in captured.out and "1.0000" in captured.out
    assert captured.err.count("\n") == 1
    assert f"more than the exact count in {model / 'accuracy.json'}" in captured.err
    assert "either that count is wrong or liar is unsound" in captured.err


def test_output_paths_are_checked_before_any_work(model_dir, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(api, "prove", no_work)
    monkeypatch.setattr(api, "accuracy", no_work)
    bad = str(tmp_path / "missing" / "x.json")
    assert cli.main(["prove", str(model_dir), "--json", bad]) == 2
    assert cli.main(["accuracy", str(model_dir), "--json", bad]) == 2
    assert cli.main(["check", str(model_dir), str(tmp_path / "c.json"), "--json", bad]) == 2


def test_prove_runs_each_strategy_once_and_flags_a_budget_below_the_cubic(
    model_dir, tmp_path, capsys
):
    target = tmp_path / "one.json"
    argv = ["prove", str(model_dir), "--strategy", "cubic", "--strategy", "cubic,cubic"]
    assert cli.main([*argv, "--json", str(target)]) == 0
    assert json.loads(target.read_text())["strategy"] == "cubic"  # one proof: one object
    capsys.readouterr()
    assert cli.main(["prove", str(model_dir), "--strategy", "adaptive-budget-100"]) == 0
    assert "adaptive-budget-100 is over its budget" in capsys.readouterr().out
    assert cli.main(["prove", str(model_dir), "--strategy", "adaptive-budget-1e12"]) == 0
    assert "over its budget" not in capsys.readouterr().out


def test_certificate_needs_exactly_one_strategy(model_dir, tmp_path):
    cert = tmp_path / "two.json"
    code = cli.main(["prove", str(model_dir), "--strategy", "cubic,brute-force",
                     "--certificate", str(cert)])  # fmt: skip
    assert code == 2 and not cert.exists()


def test_report_refuses_a_directory_without_results(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "results.csv not found; run `compact-proofs sweep" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "nope does not exist; pass the --out of" in capsys.readouterr().err


def test_sweep_then_report(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--k", "3", "--d-vocab", "6", "--seeds", "50,104", "--strategy",
            "brute-force,cubic", "--steps", "100", "--d-model", "8", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    assert "4 proved" in capsys.readouterr().out
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header + 2 seeds x 2 strategies, each exactly once
    assert cli.main(args) == 0  # resuming a finished sweep redoes nothing and adds no rows
    assert (out / "results.csv").read_text().splitlines() == rows
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report" / "table1.md").is_file()


def test_outputs_never_overwrite_the_model(model_dir, tmp_path, capsys, monkeypatch):
    """--certificate and --json naming the model's own files (or, for a certificate, any file
    that is not a certificate) are refused before any work, and the model stays intact."""

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    before = {f.name: f.read_bytes() for f in model.iterdir()}
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    monkeypatch.setattr(api, "prove", no_work)
    monkeypatch.setattr(api, "prove_one", no_work)
    monkeypatch.setattr(api, "accuracy", no_work)
    cases = [
        (["prove", str(model), "--certificate", str(model / "model.json")], "model's own file"),
        (["prove", str(model), "--certificate", str(model / "model")], "model's own file"),
        (["prove", str(model), "--certificate", str(tmp_path / "notes.json")], "not a cert"),
        (["prove", str(model), "--json", str(model / "model.json")], "model's own files"),
        (["accuracy", str(model), "--json", str(model / "accuracy.json")], "model's own files"),
        (
            ["check", str(model), str(tmp_path / "c.json"), "--json", str(model / "model.json")],
            "model's own files",
        ),
        (
            [
                "prove",
                str(model),
                "--certificate",
                str(tmp_path / "c.json"),
                "--json",
                str(tmp_path / "c.json"),
            ],  # fmt: skip
            "would overwrite the certificate",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before
    assert json.loads((tmp_path / "notes.json").read_text()) == {"mine": 1}


def test_check_notes_a_budget_name_the_certificate_does_not_fit(model_dir, tmp_path, capsys):
    cert = tmp_path / "a.json"
    assert (
        cli.main(["prove", str(model_dir), "--strategy", "adaptive", "--certificate", str(cert)])
        == 0
    )
    header = json.loads(cert.read_text())
    cert.write_text(json.dumps(header | {"strategy": "adaptive-budget-1"}))
    capsys.readouterr()
    assert cli.main(["check", str(model_dir), str(cert)]) == 0
    assert "more than the budget 1 in the strategy's name" in capsys.readouterr().out
    cert.write_text(json.dumps(header | {"strategy": "adaptive-budget-0"}))
    assert cli.main(["check", str(model_dir), str(cert)]) == 2
    assert "FLOP budget must be a whole number from 1 to 1e18, got 0" in capsys.readouterr().err
    cert.write_text(json.dumps(header))
    for target in (cert, cert.with_suffix(".safetensors")):  # the certificate being checked
        assert cli.main(["check", str(model_dir), str(cert), "--json", str(target)]) == 2
        assert "would overwrite the certificate" in capsys.readouterr().err
    assert json.loads(cert.read_text()) == header
    assert cli.main(["check", str(model_dir), str(cert)]) == 0


def test_a_sampled_accuracy_normalises_until_an_exact_count_replaces_it(
    model_dir, tmp_path, capsys
):
    """K >= 10 has no exact count: `accuracy` stores its sampled estimate and `prove`
    normalises by it (or by --true-accuracy); an exact count replaces it, never the reverse."""
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    target = tmp_path / "r.json"
    newest = tmp_path / "newest.json"
    assert cli.main(["accuracy", str(model), "--method", "sampled", "--samples", "50"]) == 0
    argv = ["accuracy", str(model), "--method", "sampled", "--samples", "60", "--seed", "1"]
    assert cli.main([*argv, "--json", str(newest)]) == 0
    sampled = json.loads((model / "accuracy.json").read_text())  # the newest estimate
    assert sampled == json.loads(newest.read_text()) and sampled["method"] == "sampled"
    assert "enumerated of 512 inputs" in capsys.readouterr().out  # small strata: enumerated
    capsys.readouterr()
    assert cli.main(["prove", str(model), "--json", str(target)]) == 0
    assert "normalising by the sampled accuracy" in capsys.readouterr().out
    row = json.loads(target.read_text())
    assert row["normalized_bound"] == row["correct_count"] / row["total"] / sampled["accuracy"]
    capsys.readouterr()
    assert cli.main(["prove", str(model), "--true-accuracy", "0.5", "--json", str(target)]) == 0
    row = json.loads(target.read_text())
    assert row["normalized_bound"] == row["correct_count"] / row["total"] / 0.5
    assert ("above the estimate 0.500000" in capsys.readouterr().out) == (
        row["normalized_bound"] > 1
    )
    assert cli.main(["prove", str(model), "--true-accuracy", "0.01"]) == 0
    assert "above the estimate 0.010000 it is normalised by: the estimate is too low" in (
        capsys.readouterr().out
    )
    assert cli.main(["prove", str(model), "--true-accuracy", "1.5"]) == 2
    assert "--true-accuracy must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert cli.main(["accuracy", str(model)]) == 0  # exact: replaces the estimate
    exact_count = json.loads((model / "accuracy.json").read_text())["correct"]
    assert cli.main(["accuracy", str(model), "--method", "sampled", "--samples", "2000"]) == 0
    assert json.loads((model / "accuracy.json").read_text())["correct"] == exact_count
    capsys.readouterr()
    assert cli.main(["prove", str(model)]) == 0
    assert f"normalising by the exact count in {model / 'accuracy.json'}" in capsys.readouterr().out
