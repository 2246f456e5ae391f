"""Progress of long work: a rich bar on a terminal, plain lines on stderr otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .text import Output, human_size


class PlainProgress:
    """One line per 10 % (or per 10 s) on a stream that is not a terminal."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label, self.stream = label, stream
        self.size = 0
        self.done = 0
        self.start = self.last = time.monotonic()
        self.shown = -1
        self.converted = -1  # tenths of the qemu-img conversion shown

    def total(self, size: int) -> None:
        self.size = size

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        tenth = self.done * 10 // self.size if self.size else 0
        if tenth > self.shown or now - self.last >= 10:
            self.shown, self.last = tenth, now
            rate = self.done / max(now - self.start, 1e-6)
            pct = f"{100 * self.done // self.size}%" if self.size else "?"
            print(f"{self.label}: {pct} {human_size(self.done)} {human_size(rate)}/s",
                  file=self.stream, flush=True)

    def converting(self, done: int, size: int) -> None:
        """The qemu-img conversion before the upload: a line per tenth."""
        tenth = done * 10 // size if size else 10
        if tenth > self.converted:
            self.converted = tenth
            print(f"{self.label}: converting to raw {100 * done // max(size, 1)}% of "
                  f"{human_size(size)}", file=self.stream, flush=True)


class RichProgress:
    def __init__(self, label: str, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                            DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                            console=Console(file=stream), transient=False)
        self.task = self.bar.add_task(label, total=None)
        self.convert_task: Any = None

    def total(self, size: int) -> None:
        self.bar.update(self.task, total=size)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def converting(self, done: int, size: int) -> None:
        if self.convert_task is None:
            self.convert_task = self.bar.add_task("convert to raw", total=size)
        self.bar.update(self.convert_task, completed=done, total=size)


class NoProgress:
    def total(self, size: int) -> None:
        pass

    def converting(self, done: int, size: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


@contextmanager
def progress_bar(label: str, stream: TextIO | None = None) -> Iterator[Any]:
    if Output.quiet:
        yield NoProgress()
        return
    out = sys.stderr if stream is None else stream
    if out.isatty():
        try:
            bar = RichProgress(label, out)
        except ImportError:
            pass
        else:
            with bar.bar:
                yield bar
            return
    yield PlainProgress(label, out)
