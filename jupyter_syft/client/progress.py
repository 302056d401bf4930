"""Progress bars for what makes someone wait: big transfers, and jobs that report progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from jupyter_syft.wire.messages import JobProgress

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


@contextmanager
def job_progress(description: str) -> Iterator[Callable[[JobProgress | None], None]]:
    """Yield a callback taking a waiting request's latest progress (RequestInfo.progress),
    drawing a bar from the first report on: a job's `syft.progress(i, n)` or its tqdm bars,
    or the node's stage of an environment build. No report, no bar."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    bar: Progress | None = None
    task: TaskID | None = None

    def show(progress: JobProgress | None) -> None:
        nonlocal bar, task
        if progress is None:
            return
        total = progress.total or None  # a stage alone: a bar with no count
        if bar is None:
            bar = Progress(*columns, transient=True)
            bar.start()
            task = bar.add_task(description, total=total, stage=progress.stage)
        assert task is not None
        bar.update(task, completed=progress.done, total=total, stage=progress.stage)

    try:
        yield show
    finally:
        if bar is not None:
            bar.stop()
