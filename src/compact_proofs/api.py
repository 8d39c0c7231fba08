"""The library API: what the CLI and notebooks call.

import compact_proofs as cp
weights, meta = cp.train_model(k=4, seed=123)
acc = cp.accuracy(weights)                       # exact for small d_vocab**K, else sampled
[result] = cp.prove(weights, strategies="cubic")
print(result.correct_count, result.normalized_bound, result.flops)
"""

import os
import time
import warnings
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from compact_proofs import config as config_mod
from compact_proofs.core.ledger import FlopLedger
from compact_proofs.core.result import ProofResult
from compact_proofs.core.rigorous import Ops
from compact_proofs.errors import UnsupportedModelError, UserError
from compact_proofs.proofs.adaptive import searcher as adaptive_search
from compact_proofs.proofs.protocol import Strategy
from compact_proofs.proofs.registry import STRATEGIES
from compact_proofs.threads import resolve, torch_threads
from compact_proofs.weights import Weights

# Above this many inputs, `accuracy` samples instead of enumerating
# (Max-of-5 at d_vocab 64 is 2^30).
EXACT_LIMIT = 2**30

Progress = Callable[[int, int], None] | None


def package_version() -> str:
    try:
        return metadata.version("compact-proofs")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def load(model: Any, config: Any = None) -> Weights:
    """Weights from a ``Weights``, a path, or a TransformerLens model.

    Paths: a compact-proofs model directory or its ``model.safetensors``; or a foreign
    TransformerLens checkpoint (``.safetensors`` without our format marker, ``.pt``/``.pth`` read
    with ``weights_only=True``), whose config comes from ``config`` (dict, config object or JSON
    path) or from beside the file. Live models: ``HookedTransformer`` (TL 2.x/3.x) or a TL 4
    ``TransformerBridge``. Every route validates the architecture (see ``interop.SUPPORTED``).
    A ``config`` beside a ``Weights`` or a live model is refused (UserError): it would be
    ignored.
    """
    if isinstance(model, Weights) and config is None:
        return model
    if isinstance(model, str | os.PathLike):
        from compact_proofs import checkpoints, storage

        if config is not None or checkpoints.is_foreign(model):
            return checkpoints.load_checkpoint(model, config)
        return storage.load_model(Path(model))[0]
    if config is not None:
        raise UserError(
            "config= is for checkpoint files only; a model object carries its own config"
        )
    from compact_proofs import interop

    return interop.from_transformer_lens(model)


def model_files(model: Any, config: Any = None) -> tuple[Path, ...]:
    """The files ``load(model, config)`` reads or that belong to the model (its directory's
    ``model.safetensors``, ``model.json`` and ``accuracy.json``; or the weights file and the
    config files beside it), and a ``config`` given as a path; empty for a model in memory.
    Outputs must not overwrite them."""
    from compact_proofs import checkpoints, storage

    files: list[Path] = []
    if isinstance(config, str | os.PathLike):
        files.append(Path(config))
    if isinstance(model, str | os.PathLike):
        p = Path(model)
        if p.is_dir():
            files += [p / f for f in (storage.WEIGHTS_FILE, storage.META_FILE, "accuracy.json")]
        else:
            files += [p] + [p.with_name(n) for n in checkpoints.CONFIG_NAMES]
    return tuple(files)


def train_model(
    *,
    k: int,
    seed: int,
    d_vocab: int = 64,
    d_model: int = 32,
    steps: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Weights, dict[str, Any]]:
    """Train a Max-of-``k`` model with the paper's recipe; optionally save it to ``out``."""
    from compact_proofs import storage, train

    model_cfg = config_mod.ModelConfig(d_vocab=d_vocab, n_ctx=k, d_model=d_model, d_head=d_model)
    train_kwargs = {} if steps is None else {"steps": steps}
    train_cfg = config_mod.TrainConfig(seed=seed, **train_kwargs)
    weights, stats = train.train(model_cfg, train_cfg, progress=progress)
    meta = {"task": "max_of_k", "k": k, "seed": seed, "train": stats.to_dict()}
    if out is not None:
        storage.save_model(
            weights, Path(out), metadata=meta, train_cfg=train_cfg, overwrite=overwrite
        )
    return weights, meta


def accuracy(
    model: Any,
    *,
    config: Any = None,
    exact: bool | None = None,
    n_samples: int = 1_000_000,
    seed: int = 0,
    progress: Progress = None,
) -> dict[str, Any]:
    """Exact accuracy over all d_vocab**n_ctx inputs (default when feasible), else a stratified
    sampled estimate with a 95% confidence interval. ``model`` and ``config``: as ``load``."""
    from compact_proofs import exact as exact_mod

    w = load(model, config)
    if exact is None:
        exact = w.config.n_inputs <= EXACT_LIMIT
    start = time.perf_counter()
    if exact:
        res = exact_mod.exact_accuracy(w, progress=progress)
        out = {
            "method": "exact",
            "correct": res.correct,
            "incorrect": res.incorrect,
            "undecided": res.undecided,
            "total": res.total,
            "accuracy": res.correct / res.total,
        }
    else:
        res = exact_mod.sampled_accuracy(w, n_samples=n_samples, seed=seed, progress=progress)
        out = {
            "method": "sampled",
            "accuracy": res.estimate,
            "ci95_low": res.ci_low,
            "ci95_high": res.ci_high,
            "n_samples": res.n_samples,
            "n_enumerated": res.n_enumerated,
            "total": w.config.n_inputs,
        }
    out.update(
        model_sha256=w.sha256(),
        d_vocab=w.config.d_vocab,
        n_ctx=w.config.n_ctx,
        seconds=time.perf_counter() - start,
        version=package_version(),
    )
    return out


def resolve_strategies(strategies: str | Strategy | Iterable[str | Strategy]) -> list[Strategy]:
    """'all', one name, a comma-separated list, a ``Strategy``, or an iterable of names ('all'
    among them) and ``Strategy`` objects (your own, see docs/new-strategy.md) -> strategies,
    each once, in order.

    Besides the registry names, ``adaptive-budget-<N>`` (N FLOPs: an integer, or like 3e7)
    names the anytime adaptive proof with any budget. Results and sweep files are keyed by
    name, so a ``Strategy`` of your own may not take a registry name, nor two strategies one
    name."""
    from compact_proofs.proofs import adaptive

    if isinstance(strategies, Strategy):
        items: list = [strategies]
    elif isinstance(strategies, str):
        items = [s.strip() for s in strategies.split(",")]
    else:
        items = list(strategies)
    chosen: dict[str, Strategy] = {}
    for item in items:
        if isinstance(item, str) and item == "all":
            found_all = list(STRATEGIES.values())
        elif isinstance(item, Strategy):
            registered = STRATEGIES.get(item.name) or adaptive.strategy_for_name(item.name)
            if registered is not None and registered != item:
                raise UserError(
                    f"your strategy is named {item.name!r}, a built-in strategy's name; "
                    "rename it (results are stored by name)"
                )
            found_all = [item]
        elif isinstance(item, str):
            found = STRATEGIES.get(item) or adaptive.strategy_for_name(item)
            if found is None:
                raise UserError(
                    f"unknown strategy {item!r}; run `compact-proofs strategies` for the "
                    f"{len(STRATEGIES)} available names (or use 'all'; any FLOP budget works as "
                    "'adaptive-budget-<N>', e.g. adaptive-budget-3e7)"
                )
            found_all = [found]
        else:
            raise UserError(f"a strategy must be a name or a Strategy, got a {type(item).__name__}")
        for found in found_all:
            if chosen.get(found.name, found) != found:
                raise UserError(f"two different strategies are named {found.name!r}")
            chosen.setdefault(found.name, found)
    return list(chosen.values())


def prove_one(
    w: Weights,
    strategy: Strategy,
    *,
    true_correct: int | None = None,
    true_accuracy: float | None = None,
    threads: int | None = None,
) -> ProofResult:
    """Run one strategy's untrusted search, then its trusted, counted check, with ``threads``
    torch threads (``compact_proofs.threads``: None is the strategy's own default, which is 1,
    or torch's setting for brute force; 0 is torch's setting). A ``true_correct`` outside
    [0, d_vocab**n_ctx] is refused; one below the proven count is kept (a sweep flags that as
    unsound)."""
    cfg = w.config
    if true_correct is not None and not 0 <= true_correct <= cfg.n_inputs:
        raise UserError(f"true correct count {true_correct} is outside [0, {cfg.n_inputs:,}]")
    if true_accuracy is not None and not 0 < true_accuracy <= 1:
        raise UserError(f"true accuracy must be in (0, 1], got {true_accuracy}")
    if strategy.max_inputs is not None and cfg.n_inputs > strategy.max_inputs:
        raise UnsupportedModelError(
            f"strategy {strategy.name!r} enumerates inputs and refuses d_vocab**n_ctx = "
            f"{cfg.n_inputs:.3g} > {strategy.max_inputs:.3g}; use 'cubic' or a subcubic strategy"
        )
    ledger = FlopLedger()
    with torch_threads(resolve(threads, strategy.threads)):
        adaptive_search.take_reused_seconds()
        t0 = time.perf_counter()
        certificate = strategy.search(w)
        t1 = time.perf_counter()
        reused = adaptive_search.take_reused_seconds()  # a shared exploration, as if run alone
        verdict = strategy.check(w, certificate, Ops(ledger))
        t2 = time.perf_counter()
    return ProofResult(
        strategy=strategy.name,
        family=strategy.family,
        model_sha256=w.sha256(),
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        correct_count=int(verdict.correct_count),
        total=cfg.n_inputs,
        flops=ledger.flop,
        int_ops=ledger.int_op,
        branches=ledger.branch,
        unexplained_dim=int(strategy.unexplained_dim(cfg)),
        complexity=strategy.complexity,
        true_correct=true_correct,
        true_accuracy=true_accuracy,
        search_seconds=t1 - t0 + reused,
        check_seconds=t2 - t1,
        version=package_version(),
        flops_by_label=dict(ledger.by_label),
        details=verdict.details,
    )


def prove(
    model: Any,
    strategies: str | Strategy | Iterable[str | Strategy] = "cubic",
    *,
    config: Any = None,
    true_correct: int | None = None,
    true_accuracy: float | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[ProofResult]:
    """Prove accuracy lower bounds for ``model`` (anything ``load`` takes, with its ``config``)
    with each of ``strategies`` (``resolve_strategies``); the results come in that order.

    ``true_correct`` (exact correct count) or ``true_accuracy`` (an estimate) make the results carry
    a normalised bound. Brute force, if chosen, runs first and supplies ``true_correct`` when none
    is given. ``threads``: torch threads for the proofs (default: each strategy's own, see
    ``compact_proofs.threads``; 0 keeps torch's setting). If a proven count exceeds the exact
    count (given, or brute force's), or brute force's differs from a given one, every strategy
    still runs, then ``TruthConflict`` is raised (its ``results`` holds every result): that count
    is wrong, or the strategy is unsound.

    Of several strategies, one that refuses the model (``UnsupportedModelError``: brute force
    on more than 2^30 inputs, or on scores beyond its error analysis) is left out of the results
    and reported as ``on_skip(name, reason)`` (default: a ``UserWarning``) once the others ran;
    if every strategy refuses, the first refusal is raised, as is a single strategy's.

    Raises:
        UserError: (its subclasses) an unreadable or unsupported model (``ModelFormatError``,
            ``UnsupportedModelError``), an unknown strategy name or a bad option, a
            ``true_correct`` outside [0, d_vocab**n_ctx] or a ``true_accuracy`` outside (0, 1];
            ``TruthConflict`` as above. Every
            one has a one-line message naming the problem.
    """
    w = load(model, config)
    chosen = resolve_strategies(strategies)
    order = sorted(range(len(chosen)), key=lambda i: chosen[i].name != "brute-force")
    results: list[ProofResult | None] = [None] * len(chosen)
    refusals: list[tuple[str, UnsupportedModelError]] = []
    source = "the given true count"
    with adaptive_search.shared_exploration():  # the adaptive variants explore once
        for i in order:  # brute force first: it gives the truth
            strategy = chosen[i]
            if progress is not None:
                progress(strategy.name)
            try:
                result = prove_one(
                    w, strategy, true_correct=true_correct, true_accuracy=true_accuracy,
                    threads=threads,
                )  # fmt: skip
            except UnsupportedModelError as refusal:
                if len(chosen) == 1:
                    raise
                refusals.append((strategy.name, refusal))
                continue
            if strategy.name == "brute-force" and true_correct is None:
                true_correct, source = result.correct_count, "brute force's exact count"
                result = _with_truth(result, true_correct)
            results[i] = result
    done = [r for r in results if r is not None]
    if not done:
        raise refusals[0][1]
    for name, refusal in refusals:
        (on_skip or _warn_skip)(name, str(refusal))
    message = wrong_truth_message(done, true_correct, source)
    exact = [r.correct_count for r in done if r.strategy == "brute-force"]
    if message is None and exact and true_correct is not None and exact[0] != true_correct:
        message = (  # below a given count: brute force is exact, so that count is wrong
            f"brute force counts {exact[0]:,} correct inputs exactly, not the given "
            f"{true_correct:,}: that count is wrong"
        )
    if message is not None:
        raise TruthConflict(message, done)
    return done


def _warn_skip(name: str, reason: str) -> None:
    warnings.warn(f"{name} skipped: {reason}", UserWarning, stacklevel=3)


class TruthConflict(UserError):
    """Proofs claim more correct inputs than a given exact count: that count is wrong, or a
    strategy is unsound. ``results`` holds every result, for inspection."""

    def __init__(self, message: str, results: list[ProofResult]):
        super().__init__(message)
        self.results = results


def wrong_truth_message(
    results: list[ProofResult], true_correct: int | None, source: str = "the given true count"
) -> str | None:
    """Why ``results`` contradict ``true_correct`` (None if they do not)."""
    over = [r for r in results if true_correct is not None and r.correct_count > true_correct]
    if not over:
        return None
    r = over[0]
    others = f" (so do {len(over) - 1} more strategies)" if len(over) > 1 else ""
    return (
        f"{r.strategy} proves {r.correct_count:,} inputs correct, more than {source} "
        f"({true_correct:,}){others}: either that count is wrong or {r.strategy} is unsound"
    )


def refuse_wrong_truth(results: list[ProofResult], true_correct: int | None) -> None:
    """Raise ``TruthConflict`` if a proven count exceeds the caller's ``true_correct``."""
    message = wrong_truth_message(results, true_correct, "the given true count")
    if message is not None:
        raise TruthConflict(message, results)


def _with_truth(result: ProofResult, true_correct: int) -> ProofResult:
    from dataclasses import replace

    return replace(result, true_correct=true_correct)


def list_strategies() -> list[Strategy]:
    """The registered strategies, in registry order (``strategy.name`` is what ``prove`` and
    the CLI take; budgets other than the registered ones work by name, see
    ``resolve_strategies``)."""
    return list(STRATEGIES.values())
