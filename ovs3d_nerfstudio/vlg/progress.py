"""Progress bars for the long steps of the point-cloud path (feature extraction, fusion, training)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A bar on nerfstudio's console; yields ``advance(amount=1, **fields)``."""
    from nerfstudio.utils.rich_utils import CONSOLE

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=CONSOLE, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(amount: int = 1, status: str = "") -> None:
            progress.update(task, advance=amount, status=status)

        yield advance
