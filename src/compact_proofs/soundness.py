"""Check a proof strategy's soundness input by input on a small model: yours, before you trust
its bounds (docs/new-strategy.md), or a built-in one on your model.

The truth is ``exact.correct_mask``: every input's exact verdict (float64 with a rigorous error
bound, python-flint for near-ties; ties count as wrong). A sound strategy claims at most the true
correct count, and if its ``Verdict`` has ``expand``, that mask holds exactly ``correct_count``
inputs, every one of them truly correct.
"""

import time
from dataclasses import dataclass
from typing import Any

import torch

from compact_proofs import api, exact, task
from compact_proofs.core.ledger import FlopLedger
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import UserError
from compact_proofs.proofs.protocol import Strategy
from compact_proofs.threads import resolve, torch_threads

N_EXAMPLES = 5


@dataclass(frozen=True)
class SoundnessReport:
    """What ``check_soundness`` found.

    Attributes:
        strategy: its name.
        correct_count: the inputs it proves correct.
        true_correct: the inputs that are correct (exact).
        total: d_vocab ** n_ctx.
        mask_count: inputs in its ``Verdict.expand()`` mask (None: the verdict has no mask, so
            only the count could be compared).
        wrongly_proven: inputs in the mask that are not correct.
        examples: the tokens of up to 5 of them (position 0 first; the last is the query).
        flops: FLOPs its check counted.
        seconds: search + check time.
    """

    strategy: str
    correct_count: int
    true_correct: int
    total: int
    mask_count: int | None
    wrongly_proven: int
    examples: list[list[int]]
    flops: int
    seconds: float

    @property
    def sound(self) -> bool:
        return (
            0 <= self.correct_count <= self.true_correct
            and self.wrongly_proven == 0
            and self.mask_count in (None, self.correct_count)
        )

    def __str__(self) -> str:
        head = (
            f"{self.strategy}: proves {self.correct_count:,} of {self.total:,} inputs correct "
            f"({self.true_correct:,} are; {self.flops:.3g} FLOPs)"
        )
        if self.sound:
            checked = "input by input" if self.mask_count is not None else "by count only"
            return f"{head}: sound on this model ({checked})"
        problems = []
        if self.correct_count < 0:
            problems.append("its count is negative")
        if self.correct_count > self.true_correct:
            problems.append("it claims more than are correct")
        if self.mask_count is not None and self.mask_count != self.correct_count:
            problems.append(
                f"its mask holds {self.mask_count:,} inputs, not {self.correct_count:,}"
            )
        if self.wrongly_proven:
            problems.append(
                f"its mask holds {self.wrongly_proven:,} incorrect inputs, e.g. {self.examples}"
            )
        return f"{head}: UNSOUND: {'; '.join(problems)}"


def check_soundness(
    model: Any,
    strategy: str | Strategy,
    *,
    config: Any = None,
    threads: int | None = None,
) -> SoundnessReport:
    """Run ``strategy`` (a name or your ``Strategy``) on ``model`` (anything ``api.load`` takes,
    at most 2**24 inputs) and compare it with the exact truth, input by input where the verdict
    can ``expand`` (module docstring). Returns the report; ``report.sound`` is the verdict."""
    w = api.load(model, config)
    chosen = api.resolve_strategies(strategy)
    if len(chosen) != 1:
        raise UserError(f"check_soundness checks one strategy at a time, got {len(chosen)}")
    s = chosen[0]
    cfg = w.config
    truth = exact.correct_mask(w)  # [n_inputs]; refuses more than 2**24 inputs
    ledger = FlopLedger()
    t0 = time.perf_counter()
    with torch_threads(resolve(threads, s.threads)):
        verdict = s.check(w, s.search(w), Ops(ledger))
    seconds = time.perf_counter() - t0
    if not isinstance(verdict.correct_count, int) or isinstance(verdict.correct_count, bool):
        raise UserError(
            f"{s.name}: Verdict.correct_count must be a Python int, got a "
            f"{type(verdict.correct_count).__name__}"
        )
    mask_count, wrong, examples = None, 0, []
    if verdict.expand is not None:
        mask = verdict.expand()
        if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool):
            raise UserError(f"{s.name}: Verdict.expand() must return a bool tensor")
        if tuple(mask.shape) != (cfg.n_inputs,):
            raise UserError(
                f"{s.name}: Verdict.expand() must return shape ({cfg.n_inputs},), got "
                f"{tuple(mask.shape)}"
            )
        bad = torch.nonzero(mask & ~truth, as_tuple=True)[0]
        mask_count, wrong = int(mask.sum()), bad.numel()
        examples = task.index_to_tokens(bad[:N_EXAMPLES], cfg.d_vocab, cfg.n_ctx).tolist()
    return SoundnessReport(
        strategy=s.name,
        correct_count=verdict.correct_count,
        true_correct=int(truth.sum()),
        total=cfg.n_inputs,
        mask_count=mask_count,
        wrongly_proven=wrong,
        examples=examples,
        flops=ledger.flop,
        seconds=seconds,
    )
