"""A dataset taken as a `ray.data.Dataset`: `domain.request(fn, df=ds.distributed())`.

On the domain the job's argument is a ray.data Dataset over the dataset's partitions (so it
can map and aggregate over more rows than one machine holds); on the mock the same code runs
at once here, on `ray.data.from_pandas(mock)` in a Ray started in this process on first use.

Ray binds every interface of this machine, not only loopback, even when asked for 127.0.0.1
(checked with `ss -ltnp` on Ray 2.60: its GCS, raylet and workers listen on `*`): a local Ray
for a mock is as reachable as any Ray the user starts. It is started only when a distributed
mock runs, never by importing this package or for a plain request.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jupyter_syft.client.mocks import plain_mock

if TYPE_CHECKING:
    from jupyter_syft.client.domain import Dataset

STARTING = "starting a local Ray for the distributed mock (a few seconds)…"
START_ATTEMPTS = 2


class Distributed:
    """`ds.distributed()`: ask for `ds` as a ray.data Dataset over its partitions on the
    domain (it must be stored as partitions: `ds.info.partitions`); `mock` is a small local
    ray.data Dataset over its mock, for trying the same code here."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def mock(self) -> Any:
        return mock_dataset(self.dataset.mock)

    def __repr__(self) -> str:
        parts = self.dataset.info.partitions
        stored = f"{parts} partitions" if parts else "not stored as partitions"
        return f"<Distributed {self.name}: ray.data over {stored}>"


def mock_dataset(mock: Any, say: Callable[[str], None] | None = None) -> Any:
    """`mock` (a DataFrame) as a ray.data Dataset, in this process's local Ray."""
    import pandas as pd
    import ray.data

    start_local_ray(say)
    return ray.data.from_pandas(pd.DataFrame(plain_mock(mock)))


def start_local_ray(say: Callable[[str], None] | None = None) -> None:
    """Start Ray in this process for mock runs, once; `say` gets a word while it starts.
    Always a fresh local instance (`address="local"`): never a cluster named by RAY_ADDRESS,
    which would run the scientist's mock code elsewhere."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no notes on each run in a cell
    (say or _to_stderr)(STARTING)
    for attempt in range(START_ATTEMPTS):
        try:
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                num_cpus=max(2, os.cpu_count() or 2),  # ray.data stalls with a single CPU
            )
            break
        except Exception as exc:  # Ray gives up after 30 s (fixed) on a busy machine
            ray.shutdown()  # what it did start
            if attempt + 1 == START_ATTEMPTS:
                raise RuntimeError(
                    f"a local Ray could not start for the distributed mock: {exc}"
                ) from None
            (say or _to_stderr)("Ray did not start in time (a busy machine?): trying again…")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Aggregates by sort, not by hash: the hash shuffle starts actors for each aggregate
    # (17-20 s for a mean over 8 rows here, against 0.1 s once warm by sort).
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
