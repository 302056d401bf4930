"""Progress bars for transfers big enough to make someone wait."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

SHOW_ABOVE_BYTES = 64 * 2**20


@contextmanager
def transfer_progress(description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """Yield a callback taking bytes moved, drawing a bar; None (no bar) for small transfers."""
    if total < SHOW_ABOVE_BYTES:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda nbytes: bar.advance(task, nbytes)
