"""A Ray runtime private to one job: how a job gets a real `ray.data.Dataset` input.

ray.data needs a Ray runtime (GCS, raylet, workers talking gRPC over TCP on loopback and unix
sockets, an object store in a shared file). The domain's own Ray cluster is never reachable from
a job: approved code there could start unconfined tasks. Instead a job with a distributed input
starts a runtime of its own, inside its own sandbox, after it has been entered: every process of
that runtime is the job's child, with the job's uid, Landlock domain and seccomp filter, in its
PID namespace (killed with the job), network namespace and cgroup (memory, processes, CPU).

The runtime profile (`PROFILE`), for such jobs only, allows exactly what the runtime needs on
top of the normal one; a job without a distributed input gets the normal profile, unchanged:

- socket(): refused -> AF_UNIX, AF_INET and AF_INET6 only (seccomp); netlink, packet and
  every other family stay refused;
- loopback: down -> up, in the job's own network namespace, which has no other interface:
  nothing outside the job is reachable, the node's loopback and ports included;
- TCP bind/connect: refused by Landlock -> not handled by Landlock (its TCP rules name ports,
  and Ray picks its ports at random): the network namespace alone bounds it, and holds only
  the job's own listeners;
- /tmp: read-write -> read-write with unix sockets too (the runtime's sockets live there);
- input folders: through /proc/self/fd/N -> also attached read-only under /inputs (the
  runtime's processes do not inherit the job's descriptors);
- processes (threads count): `max_processes` -> `max_processes + RUNTIME_PROCESSES` (Ray's
  daemons run some 250 threads); the cgroup and RLIMIT_NPROC hold the new number.

Everything else (the view, read-only inputs, uid, no capabilities, Landlock's file rules and
scopes, the rest of the seccomp filter, memory) is the same. The object store and spilled
objects live in the job's /tmp, which is memory counted in the job's cgroup: the runtime's
memory is part of the job's limit.

Known limit (measured, benchmarks/bench_distributed.py): the runtime itself takes ~1.2-1.5 GB
(the driver, forked with torch preloaded, ~500 MB; Ray Data's stats and autoscaling actors
~200 MB each; a worker per CPU; spill and restore workers), and spilling goes to /tmp, which is
memory too. A mean over 20M rows x 12 columns (1.8 GB) in a 1.5 GiB job sat at its memory limit
spilling, and did not finish in 10 minutes: a dataset larger than memory needs a disk-backed
scratch for spilling (not built yet) and a job memory limit above the runtime's own size.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from typing import Any

PROFILE = "private-ray-runtime"
# Threads that Ray's own processes take (GCS, raylet, agents, a worker per CPU: ~250 counted
# with 2 CPUs), added to the job's process limit.
RUNTIME_PROCESSES = 512
MIN_OBJECT_STORE = 80 * 2**20  # Ray refuses less than 75 MiB
START_ATTEMPTS = 3
VARIABLES = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report (there is no network to send it to)
    "RAY_DISABLE_IMPORT_WARNING": "1",
}


def object_store_bytes(memory_bytes: int, scratch_bytes: int) -> int:
    """The object store's size: a quarter of the job's memory, within a half of its /tmp."""
    return max(MIN_OBJECT_STORE, min(memory_bytes // 4, scratch_bytes // 2))


def start(cpus: float, memory_bytes: int, scratch_bytes: int) -> None:
    """Start the job's private runtime (call it in the job process, once confined) and connect
    this process to it as the driver.

    Ray gives its raylet a fixed 30 s to register, which a loaded machine can miss (its agents
    are Python processes that take ~10 s to start at a load of 10 on 2 cores): then what that
    attempt started is killed and it is tried again, up to START_ATTEMPTS times.
    """
    import ray

    os.environ.update(VARIABLES)
    for attempt in range(1, START_ATTEMPTS + 1):
        folder = tempfile.mkdtemp(prefix="ray-")  # in the job's /tmp in the sandbox
        try:
            _init(ray, folder, cpus, object_store_bytes(memory_bytes, scratch_bytes))
            break
        except Exception:
            # Only as the first process of the job's PID namespace (sandboxed), where kill(-1)
            # reaches exactly the job's other processes: the failed attempt's.
            if attempt == START_ATTEMPTS or os.getpid() != 1:
                raise
            ray.shutdown()
            os.kill(-1, signal.SIGKILL)
            shutil.rmtree(folder, ignore_errors=True)
    from ray.data import DataContext

    # The default hash shuffle for aggregates: it starts an aggregator actor (~20 s on a loaded
    # 2-core machine) but streams; the sort-based one waits for every block of the dataset in
    # the object store first (20M rows in a 1 GiB job: killed for memory).
    DataContext.get_current().enable_progress_bars = False


def _init(ray: Any, folder: str, cpus: float, object_store: int) -> None:
    spilling = {"type": "filesystem", "params": {"directory_path": os.path.join(folder, "spill")}}
    ray.init(
        num_cpus=max(1, int(cpus)),
        include_dashboard=False,
        object_store_memory=object_store,
        _temp_dir=folder,
        _plasma_directory=folder,
        _node_ip_address="127.0.0.1",
        _system_config={
            "object_spilling_config": json.dumps(spilling),
            "enable_metrics_collection": False,  # nothing reads the job's metrics
        },
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def dataset(folder: str) -> Any:
    """A `ray.data.Dataset` over the Parquet partition files in `folder` (lazy: read in the
    runtime's workers as the job's code consumes it)."""
    import ray.data

    return ray.data.read_parquet(folder, file_extensions=["parquet"])
