"""What a long command is doing, shown while it works: deploys and workloads take 10-30 s.

On a terminal, a rich spinner for each phase and a bar for counted work; otherwise (a pipe, CI,
a log file) one plain line when each phase begins and one when the counted work ends; with
``--json``, nothing at all, so the JSON stays the whole of stdout. Progress goes with the rest of
the human-readable output, on stdout: stderr is for the one line of a user error.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Phases"]

Advance = Callable[[int], None]


class Phases:
    """The phases of one command (``command`` prefixes each plain line)."""

    def __init__(self, command: str, *, json_: bool, stream: TextIO | None = None) -> None:
        self.command = command
        self.json = json_
        self.stream = stream if stream is not None else sys.stdout
        self.mode = "off" if json_ else "rich" if self.stream.isatty() else "lines"
        self._console = Console(file=self.stream, highlight=False) if self.mode == "rich" else None

    def say(self, text: str) -> None:
        if self.mode == "lines":
            click.echo(f"{self.command}: {text}", file=self.stream)
        elif self._console is not None:
            self._console.print(text)

    @contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """While the block runs: ``text ...`` (a spinner on a terminal)."""
        if self._console is not None:
            with self._console.status(f"{text} ..."):
                yield
            return
        self.say(f"{text} ...")
        yield

    @contextmanager
    def counted(self, text: str, total: int, unit: str) -> Iterator[Advance]:
        """Work of ``total`` items: yields ``advance(n)``. A bar on a terminal; otherwise a line
        when it starts and one with the count and the time when it ends."""
        started = time.perf_counter()
        done = 0
        if self._console is not None:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, TimeElapsedColumn(), console=self._console) as bar:
                task = bar.add_task(text, total=total)
                yield lambda n=1: bar.advance(task, n)
            return

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n

        self.say(f"{text}: {total:,} {unit} ...")
        yield advance
        self.say(
            f"{text}: {done:,} of {total:,} {unit} done in {time.perf_counter() - started:.1f} s"
        )
