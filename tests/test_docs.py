"""docs/new-strategy.md runs as written: its example strategy is defined, found sound against the
exact truth, proved beside the built-in strategies, and its sweep call is a valid one."""

import dataclasses
import inspect
import re
from pathlib import Path

import models
import pytest
import torch

from compact_proofs import exact
from compact_proofs.errors import UserError
from compact_proofs.proofs.protocol import Verdict
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.report import make_report
from compact_proofs.soundness import SoundnessReport, check_soundness
from compact_proofs.sweep import run_sweep

DOC = Path(__file__).resolve().parents[1] / "docs" / "new-strategy.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_new_strategy_page_runs_as_written(capsys):
    blocks = python_blocks(DOC)
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks[:3]:  # define, check soundness, prove beside the built-ins
        exec(compile(block, str(DOC), "exec"), namespace)
    report = namespace["report"]
    assert isinstance(report, SoundnessReport) and report.sound
    assert report.mask_count == report.correct_count > 0
    printed = capsys.readouterr().out
    assert printed.startswith(str(report))
    assert re.search(r"equal-tokens +bound 0\.0\d+", printed)
    assert re.search(r"brute-force +bound 0\.9\d+", printed)
    # The sweep block: the calls are made with arguments the real functions accept.
    calls = []

    def recorder(real):
        def record(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)
            calls.append((real.__name__, args, kwargs))

        return record

    code = blocks[3].replace("from compact_proofs.report import make_report\n", "")
    code = code.replace("from compact_proofs.sweep import run_sweep\n", "")
    sweep_ns = namespace | {"run_sweep": recorder(run_sweep), "make_report": recorder(make_report)}
    exec(compile(code, str(DOC), "exec"), sweep_ns)
    assert [c[0] for c in calls] == ["run_sweep", "make_report"]
    assert calls[0][2]["strategies"][0] is namespace["EQUAL_TOKENS"]


def test_the_example_strategy_is_sound_on_adversarial_models():
    """The page's example against the exact truth on the test catalogue's hardest models."""
    namespace: dict = {}
    exec(compile(python_blocks(DOC)[0], str(DOC), "exec"), namespace)

    for name in ("neartie-c0-V6-K4", "ties-duplicate-token", "random-V5-K3-scale1e3"):
        report = check_soundness(models.CATALOGUE[name](), namespace["EQUAL_TOKENS"])
        assert report.sound, str(report)


def test_an_unsound_strategy_is_reported_with_examples():
    w = models.trained_weights(6, 3, seed=4, steps=40)

    def everything(weights, certificate, ops):
        n = weights.config.n_inputs
        ops.ledger.add(1, label="liar")
        return Verdict(n, expand=lambda: torch.ones(n, dtype=torch.bool))

    liar = dataclasses.replace(STRATEGIES["cubic"], name="liar", check=everything)
    report = check_soundness(w, liar)
    assert not report.sound
    assert report.wrongly_proven == report.total - report.true_correct > 0
    assert len(report.examples) == 5 and "UNSOUND" in str(report)
    truth = exact.correct_mask(w)
    for tokens in report.examples:  # each example is an incorrect input
        assert not truth[sum(t * 6**j for j, t in enumerate(tokens))]
    with pytest.raises(UserError, match="one strategy at a time"):
        check_soundness(w, "cubic,brute-force")
