"""The command line end to end on a tiny trained model: every subcommand's happy path and its
one-line refusals (exit status 2, nothing written)."""

import json

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


def test_accuracy_json_equals_the_library(model_dir, tmp_path):
    target = tmp_path / "acc.json"
    assert cli.main(["accuracy", str(model_dir), "--json", str(target)]) == 0
    written = json.loads(target.read_text())
    assert written["correct"] == exact.exact_accuracy(api.load(model_dir)).correct


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


def test_certificate_needs_exactly_one_strategy(model_dir, tmp_path):
    cert = tmp_path / "two.json"
    code = cli.main(["prove", str(model_dir), "--strategy", "cubic,brute-force",
                     "--certificate", str(cert)])  # fmt: skip
    assert code == 2 and not cert.exists()


def test_report_refuses_a_directory_without_results(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no results.csv" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


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
