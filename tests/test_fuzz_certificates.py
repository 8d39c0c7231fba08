"""benchmarks/fuzz_certificates.py: it runs clean on the real checkers, and it does catch an
over-claiming, crashing or hanging checker (so a clean run means something)."""

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fuzz_certificates  # noqa: E402

from compact_proofs.proofs.adaptive import boxes  # noqa: E402

ARGS = ["--models", "3", "--forgeries", "2", "--subcubic", "1", "--seconds", "300"]


def _table(text: str) -> dict[str, list[int]]:
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in fuzz_certificates.KINDS:
            rows[parts[0]] = [int(v) for v in parts[1:]]
    return rows


def test_real_checkers_pass(capsys):
    assert fuzz_certificates.main(ARGS) == 0
    rows = _table(capsys.readouterr().out)
    assert set(rows) == set(fuzz_certificates.KINDS)
    for kind, (n_models, checked, _refused, problems) in rows.items():
        assert n_models >= 1 and checked >= 1, kind  # every kind forged and checked something
        assert problems == 0


def test_an_overclaiming_checker_is_caught(capsys, monkeypatch):
    """A box check that accepts every prove claim counts incorrect inputs as correct."""

    def accept_all(t, rows, masks, ops, groups=None):
        return torch.ones(rows.numel(), dtype=torch.bool)

    monkeypatch.setattr(boxes, "prove", accept_all)
    assert fuzz_certificates.main(ARGS) == 1
    out = capsys.readouterr().out
    assert "VIOLATION" in out and "incorrect inputs counted correct" in out
    assert _table(out)["adaptive-random"][3] > 0


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_crashing_or_hanging_checker_is_caught(fault, capsys, monkeypatch):
    def broken(w, cert, truth):
        if fault == "hang":
            time.sleep(30)
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(fuzz_certificates, "check_adaptive", broken)
    args = ["--models", "1", "--forgeries", "1", "--subcubic", "1", "--timeout", "1"]
    assert fuzz_certificates.main(args) == 1
    out = capsys.readouterr().out
    assert ("HANG" if fault == "hang" else "ERROR") in out
    rows = _table(out)
    assert rows["adaptive-mutate"][3] == 1
    assert rows["subcubic-extreme"][3] == 0  # the subcubic checks are unaffected


def test_a_run_that_checks_nothing_fails(capsys):
    assert fuzz_certificates.main(["--seconds", "0"]) == 1
    assert "no certificate was checked" in capsys.readouterr().out
