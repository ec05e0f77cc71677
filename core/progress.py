"""Rich progress display shared by every long loop: epochs, batches, decoding, feature caching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


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
