"""Progress of long stages: counts, rate and time left.

On a terminal, one live rich line per stage (on stderr); anywhere else (a log file, CI) a plain line
on stderr when a stage starts, every `every` seconds while it runs, and when it ends. Library code
takes a `Meter`-shaped callback `(done, total)`; `Reporter.meter(name, unit)` makes one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Callback = Callable[[int, int | None], None]  # (done, total or None when unknown)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def describe(name: str, unit: str, done: int, total: int | None, elapsed: float) -> str:
    """'profiling: 1,200/4,800 tok (25%), 150 tok/s, 0:24 left' (the parts that are known)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{name}: {done:,}" + (f"/{total:,}" if total else "") + f" {unit}"
    if total:
        text += f" ({100 * done / total:.0f}%)"
    if rate > 0:
        text += f", {rate:,.1f} {unit}/s" if rate < 10 else f", {rate:,.0f} {unit}/s"
        if total and done < total:
            text += f", {_clock((total - done) / rate)} left"
    return text + (f", {_clock(elapsed)} in all" if total and done >= total else "")


class Reporter:
    """Stage messages and meters for one command's run."""

    def __init__(self, stream: TextIO | None = None, *, every: float = 10.0, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.every = every
        self.live = self.stream.isatty() if live is None else live
        self._rich = None

    def say(self, message: str) -> None:
        """A stage starts (or a fact worth one line)."""
        if self._rich is not None:
            self._rich.console.print(message, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def meter(self, name: str, unit: str) -> Callback:
        """A callback `(done, total)` that shows this stage's count, rate and time left."""
        return self._live_meter(name, unit) if self.live else self._plain_meter(name, unit)

    def _plain_meter(self, name: str, unit: str) -> Callback:
        state = {"start": time.monotonic(), "last": time.monotonic(), "ended": False}

        def update(done: int, total: int | None) -> None:
            now = time.monotonic()
            finished = total is not None and done >= total
            if (finished and not state["ended"]) or now - state["last"] >= self.every:
                state["last"], state["ended"] = now, finished
                print(describe(name, unit, done, total, now - state["start"]), file=self.stream, flush=True)

        return update

    def _live_meter(self, name: str, unit: str) -> Callback:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        if self._rich is None:
            self._rich = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + "{task.fields[unit]}"),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=Console(file=self.stream),
            )  # fmt: skip
            self._rich.start()
        task = self._rich.add_task(name, total=None, unit=unit, rate="")
        start = time.monotonic()

        def update(done: int, total: int | None) -> None:
            elapsed = time.monotonic() - start
            rate = f"{done / elapsed:,.1f} {unit}/s" if elapsed > 0 and done else ""
            self._rich.update(task, completed=done, total=total, rate=rate)

        return update

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


@contextmanager
def reporter(stream: TextIO | None = None, **options) -> Iterator[Reporter]:
    r = Reporter(stream, **options)
    try:
        yield r
    finally:
        r.close()


def quiet() -> Reporter:
    """A reporter that shows nothing (library calls without a terminal to speak to)."""
    return _Quiet()


class _Quiet(Reporter):
    def __init__(self):
        super().__init__(live=False)

    def say(self, message: str) -> None:
        import logging

        logging.getLogger("resect").info(message)

    def meter(self, name: str, unit: str) -> Callback:
        return lambda done, total: None
