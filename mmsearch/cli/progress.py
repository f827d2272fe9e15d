"""Progress and skipped files drawn with rich, on stderr."""

from __future__ import annotations


from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..fsutil import display_path
from ..media import Skip

class RichProgress:
    """Draws the library's progress events with rich, on stderr."""

    def __init__(self, console: Console, verbose: bool = False):
        self.console = console
        self.verbose = verbose  # also name the files skipped as before
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = None
        self.task_total: int | None = None

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def start(self, phase: str, total: int | None) -> None:
        if self.task is not None and self.task_total is None:
            self.bar.update(self.task, total=1, completed=1)  # close an open-ended phase (scanning)
        self.task = self.bar.add_task(phase, total=total)
        self.task_total = total

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)

    def skip(self, skip: Skip) -> None:
        self.console.print(Text(f"skipped {display_path(skip.path)}: {skip.reason}", style="yellow"))

    def note(self, message: str) -> None:
        self.console.print(Text(message, style="bold yellow"))

    def skip_again(self, skip: Skip) -> None:
        """A file the last run skipped too, unchanged: named only with ``--verbose``."""
        if self.verbose:
            self.skip(skip)


class QuietProgress:
    """No bar, but skipped files are still named (on stderr)."""

    def __init__(self, console: Console, verbose: bool = False):
        self.console = console
        self.verbose = verbose

    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def skip(self, skip: Skip) -> None:
        self.console.print(Text(f"skipped {display_path(skip.path)}: {skip.reason}"))

    def note(self, message: str) -> None:
        self.console.print(Text(message))

    skip_again = RichProgress.skip_again
