"""Progress of long work, for generation and for analyzers: bars in a terminal, lines in a log.

The CLI picks a reporter (Rich bars, plain lines or nothing) and makes it current;
library code and plugins only call ``track``/``task`` and the generation events here.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from zooscope.zoo import Member

T = TypeVar("T")


def clock(seconds: float) -> str:
    """``H:MM:SS``, as Rich's elapsed and remaining columns show time."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Task:
    """One unit of long work an analyzer reports: ``advance()`` after each step."""

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` more steps done."""


class Reporter:
    """Receives progress; this base class shows nothing (library use, ``--quiet``)."""

    #: The split whose metrics each epoch shows: what the run is judged on.
    split = "validation"

    # -- generation ----------------------------------------------------------------------
    def zoo_start(self, units: int) -> None:
        """A zoo with ``units`` member-epochs to train begins."""

    def member_start(self, member: Member, index: int, count: int, epochs: int,
                     done: int) -> None:
        """Member ``index`` of ``count`` begins, with ``done`` of its ``epochs`` committed."""

    def steps_total(self, steps: int) -> None:
        """The member trains ``steps`` optimizer steps per epoch."""

    def step(self, n: int) -> None:
        """``n`` optimizer steps are done."""

    def epoch(self, member: Member, epoch: int, metrics: Mapping[str, float],
              trained: bool = True) -> None:
        """An epoch is committed; ``trained`` is False for a longer run's shared checkpoint."""

    def member_done(self, member: Member, skipped: bool = False) -> None:
        """The member is complete (``skipped``: it already was)."""

    # -- analyses ------------------------------------------------------------------------
    def task(self, description: str, total: int | None) -> Task:
        """Start reporting one piece of work of ``total`` steps."""
        return Task()

    def close(self) -> None:
        """Remove the display; the work is over."""


_current: ContextVar[Reporter | None] = ContextVar("zooscope_progress", default=None)


def current() -> Reporter:
    """The reporter the running command chose (a silent one outside the CLI)."""
    return _current.get() or Reporter()


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Make ``reporter`` current for the work inside the block, and close it afterwards."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)
        reporter.close()


def task(description: str, total: int | None = None) -> Task:
    """Report a long loop of an analysis: ``t = task("reading", n)``, then ``t.advance()``."""
    return current().task(description, total)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` and report each one as a step of ``description``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    t = task(description, total)
    for item in items:
        yield item
        t.advance()


class ZooClock:
    """Elapsed time and the zoo's remaining time from the member-epochs trained so far.

    Counted per member-epoch over the whole run, not over a short window, so the
    estimate exists after the first epoch however long one member takes.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.units = 0
        self.done = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float | None:
        if not self.done:
            return None
        return self.elapsed() / self.done * max(0, self.units - self.done)


def _metric_text(metrics: Mapping[str, float], split: str = "validation") -> str:
    """The metrics of ``split`` (the validation split; the training split for the
    overfit check, which judges it), or all where it has none, as ``name=value``."""
    shown = {k: v for k, v in metrics.items() if k.startswith(f"{split}_")} or dict(metrics)
    return " ".join(f"{k}={v:.4g}" for k, v in shown.items())


class LineReporter(Reporter):
    """One plain line per member-epoch and per tenth of an analysis step: for job logs.

    A SLURM or ``nohup`` log cannot redraw a bar; it can show lines as they come, the
    way Hugging Face's Trainer logs each evaluation.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.clock = ZooClock()
        self.member_index = 0
        self.member_count = 0
        self.epochs = 0

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def zoo_start(self, units: int) -> None:
        self.clock = ZooClock()
        self.clock.units = units

    def member_start(self, member: Member, index: int, count: int, epochs: int,
                     done: int) -> None:
        self.member_index, self.member_count, self.epochs = index, count, epochs

    def epoch(self, member: Member, epoch: int, metrics: Mapping[str, float],
              trained: bool = True) -> None:
        if trained:
            self.clock.done += 1
        remaining = self.clock.remaining()
        eta = clock(remaining) if remaining is not None else "-"
        source = "" if trained else " (shared)"
        self._write(f"member {self.member_index}/{self.member_count} {member.id} "
                    f"epoch {epoch}/{self.epochs}{source} {_metric_text(metrics, self.split)} "
                    f"elapsed {clock(self.clock.elapsed())} zoo ETA {eta}")

    def member_done(self, member: Member, skipped: bool = False) -> None:
        if skipped:
            self._write(f"member {self.member_index}/{self.member_count} {member.id} "
                        "already complete")

    def task(self, description: str, total: int | None) -> Task:
        return _LineTask(self, description, total)


class _LineTask(Task):
    def __init__(self, reporter: LineReporter, description: str, total: int | None) -> None:
        self.reporter = reporter
        self.description = description
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.shown = -1
        self.last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.monotonic() - self.start
        if not self.total:
            if self.done == n or elapsed - self.last >= 30:  # the first, then every 30 s
                self.last = elapsed
                self.reporter._write(f"{self.description}: {self.done} elapsed {clock(elapsed)}")
            return
        tenth = self.done * 10 // self.total
        if tenth == self.shown:
            return  # at most eleven lines per task, whatever its length
        self.shown = tenth
        eta = clock(elapsed / self.done * (self.total - self.done))
        self.reporter._write(f"{self.description}: {self.done}/{self.total} "
                             f"elapsed {clock(elapsed)} ETA {eta}")


class BarReporter(Reporter):
    """Rich bars in a terminal: the zoo in member-epochs, the member's epochs, its steps."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self.clock = ZooClock()
        self._zoo: Any = None
        self._epochs: Any = None
        self._steps: Any = None

    def _start(self) -> Any:
        if self.progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # Speed over the whole run, not Rich's 30 s window: one member can take longer
            # than that, and the zoo's remaining time would never appear.
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self.console,
                                     speed_estimate_period=365 * 24 * 3600.0)
            self.progress.start()
        return self.progress

    def zoo_start(self, units: int) -> None:
        p = self._start()
        self._zoo = p.add_task("zoo (member-epochs)", total=units)
        self._epochs = p.add_task("epochs", total=1, start=False)
        self._steps = p.add_task("steps", total=1, start=False)

    def member_start(self, member: Member, index: int, count: int, epochs: int,
                     done: int) -> None:
        factors = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in member.factors.items() if k != "backbone")
        # reset, not update(completed=0): the elapsed time and speed start again too.
        self.progress.reset(self._epochs, total=epochs, completed=done,
                            description=f"member {index}/{count} epochs ({factors})")

    def steps_total(self, steps: int) -> None:
        self.progress.reset(self._steps, total=steps, completed=0, description="steps")

    def step(self, n: int) -> None:
        task = self.progress.tasks[self._steps]
        if task.total is not None and task.completed >= task.total:
            # A new epoch's first step: the bar starts again here rather than right
            # after an epoch, so a finished run shows its last epoch's steps complete.
            self.progress.reset(self._steps, total=task.total, completed=0)
        self.progress.advance(self._steps, n)

    def epoch(self, member: Member, epoch: int, metrics: Mapping[str, float],
              trained: bool = True) -> None:
        self.progress.advance(self._epochs, 1)
        if trained:
            self.progress.advance(self._zoo, 1)
        acc = metrics.get(f"{self.split}_accuracy")
        if acc is not None:
            label = "val" if self.split == "validation" else self.split
            self.progress.update(self._steps, description=f"steps ({label} acc {acc:.3f})")

    def task(self, description: str, total: int | None) -> Task:
        return _BarTask(self._start(), description, total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class _BarTask(Task):
    def __init__(self, progress: Any, description: str, total: int | None) -> None:
        self.progress = progress
        self.id = progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.id, n)


def for_console(console: Any, quiet: bool = False) -> Reporter:
    """Bars where ``console`` is a terminal, lines where it is a file or pipe, else nothing."""
    if quiet:
        return Reporter()
    if console.is_terminal:
        return BarReporter(console)
    return LineReporter(console.file)
