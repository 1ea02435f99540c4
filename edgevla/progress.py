"""Stage timing and progress display shared by the pipeline and the CLI.

The pipeline reports through a :class:`Progress` object; the CLI passes one
that draws with rich on a terminal, the API default is silent. Every stage's
wall time is recorded either way, because the report needs it.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


class Progress:
    """Silent progress: records stage times, shows nothing."""

    def __init__(self) -> None:
        self.stage_seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, description: str = "") -> Iterator[None]:
        start = time.perf_counter()
        self._started(name, description)
        try:
            yield
        finally:
            self.stage_seconds[name] = time.perf_counter() - start
        self._finished(name, self.stage_seconds[name])

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A long step with a known amount of work; yields ``advance(n)``."""
        yield lambda n=1: None

    def note(self, message: str) -> None:
        pass

    def _started(self, name: str, description: str) -> None:
        pass

    def _finished(self, name: str, seconds: float) -> None:
        pass


class ConsoleProgress(Progress):
    """Stage lines and progress bars on stderr (rich), plain lines when not a terminal."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)

    def _started(self, name: str, description: str) -> None:
        self.console.print(f"[bold]▶ {name}[/bold] {description}".rstrip())

    def _finished(self, name: str, seconds: float) -> None:
        self.console.print(f"  [green]✓[/green] {name} {seconds:.1f} s")

    def note(self, message: str) -> None:
        self.console.print(f"  {message}")

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if not sys.stderr.isatty():
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TimeElapsedColumn

        with Bar("  {task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=self.console, transient=True) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)
