"""Rich progress display shared by every long loop (epochs, batches, decoding, feature caching), and warning lines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def print_warning(console: Console, message: str) -> None:
    """One ``warning:`` line: a finding the user must see although the run went on (shown with --quiet too)."""
    from rich.markup import escape

    console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def make_progress(console: Console, quiet: bool) -> Progress | None:
    if quiet:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def track(iterable: Iterable[T], progress: Progress | None, total: int | None, description: str) -> Iterator[T]:
    """Yield from ``iterable``, advancing a transient task of ``progress`` (nothing shown when None)."""
    if progress is None:
        yield from iterable
        return
    task = progress.add_task(f"  {description}", total=total, info="")
    try:
        for item in iterable:
            yield item
            progress.advance(task)
    finally:
        progress.remove_task(task)
