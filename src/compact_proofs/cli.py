"""The ``compact-proofs`` command: argument parsing and printing only; all work is in ``api``."""

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from compact_proofs import api
from compact_proofs.errors import UserError
from compact_proofs.proofs import adaptive

DESCRIPTION = (
    "Train small transformers on Max-of-K and prove rounding-sound lower bounds on their "
    "accuracy over every input, with the FLOPs each proof's check costs."
)

console = Console(stderr=True)
# Tables of long strategy names: when piped, print them wide rather than folding every cell.
out = Console(width=None if sys.stdout.isatty() else 200)


@contextmanager
def progress_bar(description: str):
    """Yields ``update(done, total)``; draws a rich progress bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Drawn on a terminal only (in a pipe or a log it would leave a stray blank line).
    shown = console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=not shown) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, *_: object) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _check_output(
    path: str | None, option: str, args: argparse.Namespace | None = None, also=()
) -> None:
    """Refuse, before any work is done, an output file whose directory does not exist, a
    directory, one of the model's own files (``api.model_files`` of ``args.model`` and
    ``args.config``), or one of the files ``also`` (other files of the command)."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: directory {parent} does not exist")
    if Path(path).is_dir():
        raise UserError(f"{option} {path} is a directory; name a file")
    target = Path(path).resolve()
    if args is not None and target in {f.resolve() for f in _model_files(args)}:
        raise UserError(f"{option} {path} is one of the model's own files; name another")
    if target in {Path(f).resolve() for f in also}:
        raise UserError(f"{option} {path} would overwrite the certificate; name another")


def _model_files(args: argparse.Namespace) -> tuple[Path, ...]:
    return api.model_files(args.model, getattr(args, "config", None))


def _write_json(path: str | None, payload: object) -> None:
    if path is None:
        return
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(target)


def cmd_train(args: argparse.Namespace) -> None:
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out} already exists; choose another --out or pass --overwrite")
    with progress_bar(f"training Max-of-{args.k} seed {args.seed}") as update:
        _, meta = api.train_model(
            k=args.k,
            seed=args.seed,
            d_vocab=args.d_vocab,
            d_model=args.d_model,
            steps=args.steps,
            out=args.out,
            overwrite=args.overwrite,
            progress=update,
        )
    stats = meta["train"]
    out.print(
        f"wrote {args.out}  (final train loss {stats['loss']:.4g}, "
        f"accuracy {stats['accuracy']:.4f})"
    )


def cmd_accuracy(args: argparse.Namespace) -> None:
    _check_output(args.json, "--json", args)
    if args.samples < 1:
        raise UserError(f"--samples must be at least 1, got {args.samples}")
    exact = {"auto": None, "exact": True, "sampled": False}[args.method]
    weights = api.load(args.model, args.config)
    with progress_bar("evaluating inputs") as update:
        res = api.accuracy(
            weights,
            exact=exact,
            n_samples=args.samples,
            seed=args.seed,
            progress=update,
        )
    if res["method"] == "exact":
        out.print(
            f"exact accuracy {res['accuracy']:.7f}: {res['correct']:,} of {res['total']:,} "
            f"inputs correct ({res['incorrect']:,} wrong, {res['undecided']:,} exact ties)  "
            f"[{res['seconds']:.2f} s]"
        )
    else:
        enumerated = f" + {res['n_enumerated']:,} enumerated" if res["n_enumerated"] else ""
        out.print(
            f"sampled accuracy {res['accuracy']:.6f} "
            f"(95% CI {res['ci95_low']:.6f} - {res['ci95_high']:.6f}, "
            f"{res['n_samples']:,} samples{enumerated} of {res['total']:.3g} inputs)  "
            f"[{res['seconds']:.2f} s]"
        )
    _write_json(args.json, res)
    _store_accuracy(Path(args.model), weights, res)


def _store_accuracy(model: Path, weights, res: dict) -> None:
    """Keep the result beside a model directory (``accuracy.json``, as sweeps do) for
    ``prove`` to normalise by, unless an exact count for these weights is there already (it is
    never replaced; a sampled estimate is replaced by the newest result)."""
    path = model / "accuracy.json"
    if not model.is_dir():
        return
    stored = _stored_accuracy(model, weights)
    if stored is not None and stored["method"] == "exact":
        return
    try:
        _write_json(str(path), res)
    except OSError as err:  # e.g. a read-only model directory: the result is printed anyway
        out.print(f"not stored beside the model ({err.strerror}: {path})")
        return
    out.print(f"stored in {path} (prove normalises by it)")


def _stored_accuracy(model: Path, weights) -> dict | None:
    """What a sweep or ``accuracy`` stored beside the model (``accuracy.json``), if it is an
    exact count or a sampled estimate for these very weights."""
    path = model / "accuracy.json"
    if not path.is_file():
        return None
    try:
        acc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(acc, dict) or acc.get("model_sha256") != weights.sha256():
        return None
    if acc.get("method") == "exact" and isinstance(acc.get("correct"), int):
        return acc
    accuracy = acc.get("accuracy")
    if acc.get("method") == "sampled" and isinstance(accuracy, float) and 0 < accuracy <= 1:
        return acc
    return None


def _truth(args: argparse.Namespace, weights) -> tuple[int | None, float | None, str]:
    """The exact count (or else the accuracy estimate) to normalise by, and where the count
    came from: the options, else what is stored beside the model."""
    if args.true_correct is not None:
        return args.true_correct, None, "the count given by --true-correct"
    if args.true_accuracy is not None:
        if not 0 < args.true_accuracy <= 1:
            raise UserError(f"--true-accuracy must be in (0, 1], got {args.true_accuracy}")
        return None, args.true_accuracy, ""
    acc = _stored_accuracy(Path(args.model), weights)
    path = Path(args.model) / "accuracy.json"
    if acc is None:
        return None, None, ""
    if acc["method"] == "exact":
        out.print(f"normalising by the exact count in {path}: {acc['correct']:,}")
        return acc["correct"], None, f"the exact count in {path}"
    out.print(f"normalising by the sampled accuracy in {path}: {acc['accuracy']:.6f}")
    return None, acc["accuracy"], ""


def cmd_prove(args: argparse.Namespace) -> None:
    threads = _threads(args)
    cert_files: tuple = ()
    if args.certificate is not None:
        from compact_proofs import certificates

        cert_files = certificates.certificate_targets(args.certificate, _model_files(args))
    _check_output(args.json, "--json", args, also=cert_files)
    names = args.strategy or ["cubic"]
    strategies = api.resolve_strategies(",".join(names))  # each once, in order
    weights = api.load(args.model, args.config)
    if args.certificate is not None and len(strategies) != 1:
        raise UserError("--certificate stores one proof: name exactly one --strategy")
    true_correct, true_accuracy, source = _truth(args, weights)
    skipped: list[tuple[str, str]] = []
    truth = (true_correct, true_accuracy)
    try:
        results = _prove(args, weights, strategies, truth, threads, skipped)
    except api.TruthConflict as conflict:  # show (and write) every result, then the conflict
        _print_results(args.model, conflict.results, skipped)
        _write_results_json(args.json, conflict.results, several=len(strategies) > 1)
        named = api.wrong_truth_message(conflict.results, true_correct, source)
        raise (UserError(named) if named else conflict) from None  # where the count came from
    _print_results(args.model, results, skipped)
    _write_results_json(args.json, results, several=len(strategies) > 1)
    if args.certificate is not None:
        out.print(f"certificate written to {args.certificate}")


def _prove(args, weights, strategies, truth, threads, skipped: list) -> list:
    """The proofs of ``cmd_prove``; appends (name, reason) to ``skipped`` for each strategy
    left out."""
    true_correct, true_accuracy = truth
    if args.certificate is not None:
        from compact_proofs import certificates

        result = certificates.certify(
            weights,
            strategies[0].name,
            args.certificate,
            true_correct=true_correct,
            true_accuracy=true_accuracy,
            threads=threads,
        )
        return [result]
    with progress_bar("proving") as update:
        done = []

        def step(name: str) -> None:
            update(len(done), len(strategies))
            done.append(name)

        return api.prove(
            weights,
            [s.name for s in strategies],
            true_correct=true_correct,
            true_accuracy=true_accuracy,
            progress=step,
            threads=threads,
            on_skip=lambda name, reason: skipped.append((name, reason)),
        )


def _write_results_json(path: str | None, results: list, several: bool) -> None:
    """One result as an object; a list when several strategies were asked for (even if only
    one ran, the others skipped)."""
    payload = [r.to_dict() for r in results]
    _write_json(path, payload if several else payload[0])


def _print_results(model: str, results: list, skipped: Sequence[tuple[str, str]] = ()) -> None:
    table = Table(title=f"proofs for {model}")
    for col in ("strategy", "bound", "normalised", "FLOPs", "unexpl. dim", "search s", "check s"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    table.add_column("complexity")  # the one column that may wrap
    for r in results:
        norm = "-" if r.normalized_bound is None else f"{r.normalized_bound:.4f}"
        table.add_row(
            r.strategy,
            f"{r.accuracy_bound:.6f}",
            norm,
            f"{r.flops:.3g}",
            f"{r.unexplained_dim:,}",
            f"{r.search_seconds:.3f}",
            f"{r.check_seconds:.3f}",
            r.complexity,
        )
    out.print(table)
    for r in results:
        if r.true_correct is None and r.true_accuracy and r.accuracy_bound > r.true_accuracy:
            out.print(
                f"note: {r.strategy} proves accuracy >= {r.accuracy_bound:.6f}, above the "
                f"estimate {r.true_accuracy:.6f} it is normalised by: the estimate is too low"
            )
        budget = adaptive.budget_of(r.strategy)
        if budget is not None and r.flops > budget:
            out.print(
                f"note: {r.strategy} is over its budget ({r.flops:.3g} FLOPs): the cubic stage "
                "it starts from costs more than the budget, so this is the cubic proof"
            )
    for name, reason in skipped:
        out.print(f"note: {name} skipped: {reason}", highlight=False)


def cmd_check(args: argparse.Namespace) -> None:
    from compact_proofs import certificates

    threads = _threads(args)
    cert = Path(args.certificate)
    _check_output(args.json, "--json", args, also=(cert, certificates.tensor_path(cert)))
    confirmation = certificates.check_certificate(
        api.load(args.model, args.config), args.certificate, threads=threads
    )
    c = confirmation
    out.print(
        f"confirmed: {c.strategy} proves at least {c.correct_count:,} of {c.total:,} inputs "
        f"correct (accuracy >= {c.accuracy_bound:.6f}; the check proved {c.proven_count:,}, "
        f"{c.flops:.3g} FLOPs, {c.check_seconds:.3f} s)"
    )
    budget = adaptive.budget_of(c.strategy)
    if budget is not None and c.flops > budget:
        out.print(
            f"note: the check cost {c.flops:.3g} FLOPs, more than the budget {budget:.3g} in the "
            "strategy's name: the bound holds, but this certificate does not fit that budget "
            "(a budgeted proof exceeds its budget only when the cubic stage alone does)"
        )
    _write_json(args.json, c.to_dict())


def cmd_strategies(args: argparse.Namespace) -> None:
    strategies = api.list_strategies()
    if args.names:  # one name per line, for scripts
        print("\n".join(s.name for s in strategies))
        return
    # One heading per (family, complexity), in registry order, then its names: the names are
    # long (up to ~110 characters), so a table with a column for each would not fit a terminal.
    groups: dict[tuple[str, str], list[str]] = {}
    for s in strategies:
        groups.setdefault((s.family, s.complexity), []).append(s.name)
    out.print(f"{len(strategies)} proof strategies, by family, with each family's checking cost")
    for (family, complexity), names in groups.items():
        count = f"{len(names)} strateg{'y' if len(names) == 1 else 'ies'}"
        out.print(f"\n[bold]{family}[/bold], {count}: {complexity}", highlight=False)
        for name in names:
            out.print(f"  {name}", highlight=False, soft_wrap=True)


def _sweep_log(message: str) -> None:
    console.print(message, highlight=False)


def cmd_sweep(args: argparse.Namespace) -> None:
    from compact_proofs import sweep
    from compact_proofs.sweep.progress import rich_progress

    with rich_progress(console, "sweep") as update:
        summary = sweep.run_sweep(
            args.out,
            ks=args.k,
            d_vocab=args.d_vocab,
            seeds=args.seeds,
            strategies=args.strategy,
            jobs=args.jobs,
            dask_address=args.dask,
            train_steps=args.steps,
            d_model=args.d_model,
            analysis=args.analysis,
            progress=update,
            log=_sweep_log,
        )
    out.print(sweep.describe(summary))
    if summary.unsound:
        raise UserError(
            f"the sweep in {args.out} found unsound results (see above): a strategy claimed more "
            "correct inputs than there are; rerunning will not change that"
        )
    if not summary.complete:
        raise UserError(
            f"the sweep in {args.out} did not complete cleanly (see above); rerun to retry"
        )


def cmd_reproduce(args: argparse.Namespace) -> None:
    from compact_proofs import sweep
    from compact_proofs.sweep.progress import rich_progress

    out_dir = args.out or f"runs/reproduce-k{args.k}"
    with rich_progress(console, f"reproduce Max-of-{args.k}") as update:
        report_dir = sweep.reproduce(
            out_dir,
            k=args.k,
            d_vocab=args.d_vocab,
            seeds=args.seeds,
            strategies=args.strategy,
            jobs=args.jobs,
            dask_address=args.dask,
            train_steps=args.steps,
            analysis=args.analysis,
            progress=update,
            log=_sweep_log,
        )
    table = Path(report_dir) / "table1.md"
    if table.is_file():
        print(table.read_text())
    out.print(f"report written to {report_dir}")


def cmd_report(args: argparse.Namespace) -> None:
    from compact_proofs.report import make_report

    report_dir = make_report(args.sweep_dir, seed=args.seed, out=args.out)
    out.print(f"report written to {report_dir}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compact-proofs", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a Max-of-K model with the paper's recipe")
    t.add_argument("--k", type=int, default=4, help="sequence length K (default 4)")
    t.add_argument("--seed", type=int, required=True, help="paper seed (e.g. 50, 104, 123)")
    t.add_argument("--d-vocab", type=int, default=64, help="number of tokens (default 64)")
    t.add_argument("--d-model", type=int, default=32, help="residual width (default 32)")
    t.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the paper's 3000)"
    )
    t.add_argument("--out", required=True, help="model directory to create")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("accuracy", help="exact (or sampled) accuracy of a model")
    a.add_argument("model", help=MODEL_HELP)
    a.add_argument("--config", help=CONFIG_HELP)
    a.add_argument(
        "--method",
        choices=("auto", "exact", "sampled"),
        default="auto",
        help="auto (default): exact up to 2^30 inputs (Max-of-5 at d_vocab 64), else sampled",
    )
    a.add_argument(
        "--samples",
        type=int,
        default=1_000_000,
        help="sampled: about this many inputs (stratified by max token, with a minimum per "
        "stratum; default 1,000,000)",
    )
    a.add_argument("--seed", type=int, default=0, help="sampled: random seed (default 0)")
    a.add_argument("--json", help="also write the result to this JSON file")
    a.set_defaults(func=cmd_accuracy)

    pr = sub.add_parser("prove", help="prove accuracy lower bounds")
    pr.add_argument("model", help=MODEL_HELP)
    pr.add_argument("--config", help=CONFIG_HELP)
    pr.add_argument(
        "--strategy",
        action="append",
        help="a name, comma-separated names, or 'all'; repeatable (default: cubic)",
    )
    truth = pr.add_mutually_exclusive_group()
    truth.add_argument(
        "--true-correct",
        type=int,
        default=None,
        help="exact correct count, for normalising (default: the exact count or sampled "
        "accuracy `accuracy` stored beside a model directory, if any)",
    )
    truth.add_argument(
        "--true-accuracy",
        type=float,
        default=None,
        help="an accuracy estimate to normalise by when no exact count is known (K >= 10)",
    )
    pr.add_argument(
        "--json",
        help="also write the result to this JSON file (a list when several strategies are named; "
        "skipped ones are left out)",
    )
    pr.add_argument(
        "--certificate",
        metavar="FILE",
        help="store the proof's certificate (FILE JSON + tensors beside it) for `check`",
    )
    _add_threads(pr)
    pr.set_defaults(func=cmd_prove)

    ck = sub.add_parser("check", help="re-run only the trusted check of a stored certificate")
    ck.add_argument("model", help=MODEL_HELP)
    ck.add_argument("certificate", help="certificate JSON written by `prove --certificate`")
    ck.add_argument("--config", help=CONFIG_HELP)
    ck.add_argument("--json", help="also write the confirmation to this JSON file")
    _add_threads(ck)
    ck.set_defaults(func=cmd_check)

    s = sub.add_parser("strategies", help="list the proof strategies")
    s.add_argument("--names", action="store_true", help="print only the names, one per line")
    s.set_defaults(func=cmd_strategies)

    sw = sub.add_parser("sweep", help="train, measure and prove many models (resumable)")
    sw.add_argument("--k", type=int, nargs="+", default=[4], help="sequence lengths (default 4)")
    sw.add_argument(
        "--d-vocab", type=int, nargs="+", default=[64], help="vocabulary sizes (default 64)"
    )
    sw.add_argument(
        "--seeds", default="3", help="a count of paper seeds (default 3), 'all', or e.g. 50,104"
    )
    sw.add_argument(
        "--strategy",
        default="all",
        help=f"a name, comma-separated names, or 'all' (default: all {len(api.STRATEGIES)}, "
        "about 1 min per Max-of-4 model on one core)",
    )
    sw.add_argument("--out", required=True, help="sweep directory (created or resumed)")
    _add_run_options(sw, jobs_default=1)
    sw.add_argument("--d-model", type=int, default=32, help="residual width (default 32)")
    sw.add_argument(
        "--analysis", choices=ANALYSES, default="basic", help=ANALYSIS_HELP + " (default basic)"
    )
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("reproduce", help="the paper's study on a small default, with its report")
    rp.add_argument("--k", type=int, default=4, help="sequence length K (default 4)")
    rp.add_argument("--d-vocab", type=int, default=64, help="number of tokens (default 64)")
    rp.add_argument(
        "--seeds", default="3", help="a count of paper seeds (default 3), 'all', or e.g. 50,104"
    )
    rp.add_argument(
        "--strategy", default="all", help="a name, comma-separated names, or 'all' (default)"
    )
    rp.add_argument("--out", default=None, help="directory (default runs/reproduce-k{K})")
    _add_run_options(rp, jobs_default=-1)
    rp.add_argument(
        "--analysis", choices=ANALYSES, default="sampled", help=ANALYSIS_HELP + " (default sampled)"
    )
    rp.set_defaults(func=cmd_reproduce)

    rt = sub.add_parser("report", help="tables, figures and LaTeX values from a sweep directory")
    rt.add_argument("sweep_dir", help="a directory written by `sweep` or `reproduce`")
    rt.add_argument(
        "--seed",
        type=int,
        default=None,
        help="model for the per-model figures (default 123 if present, else the smallest seed)",
    )
    rt.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/report)")
    rt.set_defaults(func=cmd_report)
    return p


MODEL_HELP = (
    "model directory, .safetensors file, or TransformerLens state dict (.safetensors/.pt/.pth)"
)
CONFIG_HELP = "TransformerLens config JSON for a foreign checkpoint (default: found beside it)"
ANALYSES = ("none", "basic", "sampled", "full")
ANALYSIS_HELP = "per-model analysis for the report (ablations, noise): none/basic/sampled/full"


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every strategy (default: 1, which is robust when the cores are "
        "busy, and torch's own setting for brute force, whose large tensor operations scale "
        "with cores; 0: torch's own setting)",
    )


def _threads(args: argparse.Namespace) -> int | None:
    if args.threads is not None and args.threads < 0:
        raise UserError(f"--threads must be 0 (torch's setting) or positive, got {args.threads}")
    return args.threads


def _add_run_options(parser: argparse.ArgumentParser, *, jobs_default: int) -> None:
    parser.add_argument(
        "--jobs",
        type=int,
        default=jobs_default,
        help=f"local processes (default {jobs_default}; -1: all cores; not used with --dask)",
    )
    parser.add_argument(
        "--dask", default=None, metavar="tcp://HOST:PORT", help="run on this Dask cluster"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the paper's 3000)"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's time limit), handled as Ctrl-C is: a sweep
    cancels its queued work and tabulates what finished before the command exits."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM raises ``Terminated`` (a no-op outside the main thread,
    where Python cannot install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_interrupts():
            return args.func(args) or 0
    except UserError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except Terminated:
        console.print("terminated")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
