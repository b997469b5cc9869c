"""Progress display: a rich bar with spectra/s and ETA, or nothing."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Count spectra through a run; draws a rich progress bar on stderr when enabled.

    Parameters
    ----------
    total : int
        Spectra the run must produce (including those done by earlier attempts).
    done : int
        Spectra already finished by earlier attempts (shown as completed at start and
        left out of the rate).
    enabled : bool
        Draw the bar. When False nothing is printed (for logs, tests and workers).
    description : str
        Text before the bar.
    """

    def __init__(
        self, total: int, done: int = 0, *, enabled: bool = True, description: str = "infer"
    ) -> None:
        self.total = total
        self.done = done
        self.failed = 0
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("spectra"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[failed]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total, completed=done, rate="", failed="")

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n_spectra: int, *, failed: bool = False) -> None:
        """Count ``n_spectra`` more as finished (or failed: still advances the bar)."""
        self.done += n_spectra
        if failed:
            self.failed += n_spectra
        if self._bar is not None:
            self._bar.update(self._task, advance=n_spectra)
            task = self._bar.tasks[0]
            speed = task.speed
            self._bar.update(
                self._task,
                rate=f"{speed:,.0f}/s" if speed else "",
                failed=f"[red]{self.failed} failed" if self.failed else "",
            )
