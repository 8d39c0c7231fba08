"""A progress display for sweeps (used by the CLI): a rich bar over work units with an ETA
at the rate of the units finished in this run since its first one (units found on disk at the
start would make it far too optimistic, and the time before the first unit, mostly training
the models, far too pessimistic). When the console is not a terminal (a log file, a cluster
job) it prints a plain line at most once a minute instead, and at the end."""

import contextlib
import time
from collections.abc import Callable, Iterator

LOG_EVERY = 60.0  # seconds between progress lines when the console is not a terminal
MIN_RATE_SECONDS = 1.0  # no ETA from units that finished closer together than this


def eta_seconds(start_done: int, done: int, total: int, elapsed: float) -> float | None:
    """Remaining seconds at the rate of ``done - start_done`` units in ``elapsed`` seconds, or
    None before any unit, or while they all finished within ``MIN_RATE_SECONDS`` (a burst of
    units done together says nothing of the rate)."""
    ran = done - start_done
    if ran <= 0 or elapsed < MIN_RATE_SECONDS:
        return None
    return (total - done) * elapsed / ran


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def rich_progress(console=None, description: str = "sweep") -> Iterator[Callable[[int, int], None]]:
    """Yields ``update(done, total)`` for ``run_sweep(progress=...)``; draws a transient bar with
    ``done/total``, elapsed time and ETA on ``console`` (a ``rich.console.Console``)."""
    from rich import get_console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.fields[of]} units"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
    )
    console = console or get_console()
    state: dict[str, float] = {}
    # A bar on a terminal only (in a pipe or a log it would leave a stray blank line).
    shown = console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=not shown) as bar:
        task = bar.add_task(description, total=None, eta=_fmt(None), of="?")

        def update(done: int, total: int) -> None:
            now = time.perf_counter()
            if "start" not in state:
                state.update(start=now, start_done=done, logged=now)
            if "first" not in state and done > state["start_done"]:
                state.update(first=now, first_done=done)  # the clock of the ETA starts here
            elapsed = now - state["start"]
            since = now - state.get("first", now)
            eta = _fmt(eta_seconds(int(state.get("first_done", done)), done, total, since))
            bar.update(task, completed=done, total=total, eta=eta, of=total)
            if not shown and (now - state["logged"] >= LOG_EVERY or done == total):
                state["logged"] = now
                console.print(
                    f"{description}: {done}/{total} units, {_fmt(elapsed)} elapsed, ETA {eta}",
                    highlight=False,
                )

        yield update
