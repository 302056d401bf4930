"""Approved jobs on a Ray cluster (`domain start --executor ray --ray-address ADDR|local`).

Each job becomes one Ray task asking for the job's cpus, GPUs and memory; on whichever Ray node
runs it, the task runs the job through the same sandboxed local pool as a node without Ray
(`jupyter_syft.domain.executor.Executor`, one per Ray worker process, made on its first job and
kept): the same sandbox, limits, timeouts and declared environments. The node stays the only
place that authenticates, approves, charges budgets and seals: Ray runs only jobs the node
approved, and the JobSpec goes to the task and the JobOutcome comes back as msgspec bytes.

What the cluster must share: the node's data dir (datasets, results, environments) at the same
path on every Ray node (a shared file system; in tests every Ray node is on one machine), and
this package and its dependencies in the Python the Ray nodes run.

Faults: a task whose Ray worker or node dies is retried once by Ray (system failures only,
never an exception of ours), starting from an empty output folder, so a job is never lost and
only one run's outcome is ever taken; a second loss fails the job saying so. A task dies with
the node that started it (its Ray driver): the node's restart runs interrupted jobs again.

`ray` itself is imported only when this backend is chosen (it takes a second or two).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from jupyter_syft.domain.executor import Executor, SandboxUnavailable
from jupyter_syft.domain.jobs import (
    BackendOptions,
    ExecutorBackend,
    JobOutcome,
    JobSpec,
    ProgressCallback,
    register_backend,
)
from jupyter_syft.domain.sandbox import SandboxStatus, probe
from jupyter_syft.wire.messages import JobProgress, Placement, Resources

BACKEND = "ray"
LOCAL = "local"  # --ray-address local: the node starts a Ray head of its own
POLL_S = 0.25  # how often a running job's progress is collected
# How long a task may take beyond its job's time limit before the node kills it: a new Ray
# worker's pool starts and imports first (the job's own limit starts after that).
TASK_GRACE_S = 120.0
CAPACITY_TTL_S = 2.0  # nodes join and leave: the cluster's size is asked again after this
CLOSE_WAIT_S = 30.0  # how long close() waits for cancelled jobs' run() to report


class ClusterUnavailable(RuntimeError):
    """The Ray cluster named by --ray-address cannot be used."""


@register_backend(BACKEND)
def ray_cluster(options: BackendOptions) -> ExecutorBackend:
    """Jobs as Ray tasks on the cluster at `options.address` ("local": one of the node's own)."""
    if not options.address:
        raise ClusterUnavailable(
            "--executor ray needs --ray-address: a Ray cluster's address (HOST:PORT) or "
            "'local' to start one for this node"
        )
    return RayExecutor(options)


@dataclass
class _Running:
    """A job in flight, as the node's side sees it."""

    ref: Any = None  # the task's ObjectRef
    starts: list[str] = field(default_factory=list)  # the Ray node of each attempt
    started_at: float = 0.0  # when its last attempt started (monotonic)
    progress: list[JobProgress] = field(default_factory=list)  # not yet passed on
    ended: str = ""  # why the node ended it ("timed out ...", "closed ...")


class RayExecutor(ExecutorBackend):
    """Runs each job as a Ray task; run() blocks and may be called from many threads."""

    def __init__(self, options: BackendOptions) -> None:
        import ray

        self.sandbox: SandboxStatus = probe("on" if options.sandbox == "on" else "off")
        if self.sandbox.missing:  # each Ray node's pool checks its own machine again
            raise SandboxUnavailable(
                "the job sandbox is missing "
                + "; ".join(self.sandbox.missing)
                + " (start the node with --sandbox off to run jobs unconfined, at your risk)"
            )
        self._options = options
        self._head_dir = ""
        init: dict[str, Any] = {"address": options.address}
        if options.address == LOCAL:
            # ray.init without an address starts a head owned by this process, stopped by
            # ray.shutdown(); its files go in a folder of its own (mode 0700) in the temp dir,
            # not the machine's /tmp/ray, nor the data dir: Ray's unix socket paths under it
            # must fit 107 bytes, which a data dir's path often leaves no room for.
            self._head_dir = tempfile.mkdtemp(prefix="syft-ray-")
            init = {"_temp_dir": self._head_dir, "include_dashboard": False}
        # ray.init puts Ray's crash handler on SIGTERM and SIGINT, which aborts the process:
        # the node's own handlers (a clean stop that closes this executor) go back after it.
        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # Job output never reaches the node's log: it is the keeper's, sealed (jobs.py).
            ray.init(**init, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as e:
            self._remove_head_dir()
            raise ClusterUnavailable(
                f"could not connect to the Ray cluster at {options.address}: {e}"
            ) from e
        finally:
            for sig, handler in handlers.items():
                if main and handler is not None:
                    signal.signal(sig, handler)
        here = ray.get_runtime_context().get_node_id()
        on_this_node = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, False)
        # Kept on this node: it lives and dies with the node (its driver), like its jobs.
        self._board = (
            ray.remote(num_cpus=0, scheduling_strategy=on_this_node)(Board).remote()  # type: ignore[call-overload]
        )
        # System failures only (a dead worker or node), never an exception of ours, once.
        self._task = ray.remote(max_retries=1, retry_exceptions=False)(run_on_ray_node)
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._closed = False
        self._capacity: tuple[float, Resources] | None = None
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def warm(self) -> None:
        """Start a pool on every Ray node now (each imports torch and the rest, ~4 s)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        warmers = [
            ray.remote(warm_ray_node)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], True))
            .remote(self._options)
            for node in ray.nodes()
            if node["Alive"]
        ]
        for problem in ray.get(warmers):
            if problem:
                print(f"ray executor: {problem}", file=sys.stderr, flush=True)

    def run(
        self, job: JobSpec, keep_for: str = "", on_progress: ProgressCallback | None = None
    ) -> JobOutcome:
        """Run the job as a Ray task; `keep_for` has no effect (each round is a new task)."""
        started = time.monotonic()
        running = _Running()
        with self._lock:
            if self._closed:
                return JobOutcome(ok=False, error="the executor is closed")
            self._running[job.request_id] = running
            running.ref = self._task.options(
                num_cpus=job.resources.cpus,
                num_gpus=job.resources.gpus,
                memory=job.resources.memory_mb * 2**20,
            ).remote(msgspec.msgpack.encode(job), self._options, self._board)
        try:
            outcome = self._wait(job, running, on_progress)
            if not self._closed:  # Ray is going away otherwise
                self._collect()  # the last attempt's start, if the poller has not seen it yet
        finally:
            with self._lock:
                self._running.pop(job.request_id, None)
        attempts = max(1, len(running.starts))
        node = running.starts[-1] if running.starts else "ray (not started)"
        if outcome.placement is not None:
            node = outcome.placement.node
        outcome.seconds = time.monotonic() - started
        outcome.placement = Placement(BACKEND, node, job.resources, outcome.seconds, attempts)
        if not outcome.ok and attempts > 1 and running.ended == "" and "died" in outcome.error:
            outcome.error += f" (tried {attempts} times)"
        return outcome

    def _wait(
        self, job: JobSpec, running: _Running, on_progress: ProgressCallback | None
    ) -> JobOutcome:
        import ray

        while True:
            done, _ = ray.wait([running.ref], timeout=POLL_S)
            with self._lock:
                progress, running.progress = running.progress, []
                late = running.started_at and (
                    time.monotonic() - running.started_at > job.timeout_s + TASK_GRACE_S
                )
            if on_progress is not None:
                for report in progress:
                    on_progress(report)
            if done:
                break
            if late:
                running.ended = f"timed out after {job.timeout_s:g} s"
                ray.cancel(running.ref, force=True)
        try:
            return msgspec.msgpack.decode(ray.get(running.ref), type=JobOutcome)
        except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError) as e:
            if running.ended:
                return JobOutcome(ok=False, error=running.ended)
            return JobOutcome(ok=False, error=_died(e))
        except ray.exceptions.RayTaskError as e:  # a bug of ours in the task: say so
            return JobOutcome(
                ok=False, error="internal error running the job on Ray", error_full=str(e)
            )
        except ray.exceptions.RayError as e:
            return JobOutcome(ok=False, error=running.ended or _died(e))

    def capacity(self) -> Resources:
        """The largest alive Ray node's cpus, GPUs and memory (each the largest of any node)."""
        import ray

        with self._lock:
            if self._capacity is not None and time.monotonic() < self._capacity[0]:
                return self._capacity[1]
        alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        largest = Resources(
            cpus=max((r.get("CPU", 0.0) for r in alive), default=0.0),
            gpus=int(max((r.get("GPU", 0.0) for r in alive), default=0.0)),
            memory_mb=int(max((r.get("memory", 0.0) for r in alive), default=0.0)) // 2**20,
        )
        with self._lock:
            self._capacity = (time.monotonic() + CAPACITY_TTL_S, largest)
        return largest

    def close(self) -> None:
        """Kill every running job's task (and so its job process) and leave the cluster;
        a head this node started stops with it."""
        import ray

        with self._lock:
            self._closed = True
            running = list(self._running.values())
            for job in running:
                job.ended = "the executor was closed while the job was running"
        for job in running:
            ray.cancel(job.ref, force=True)
        # No thread may still call Ray when it shuts down (its core worker aborts the process).
        self._poller.join()
        deadline = time.monotonic() + CLOSE_WAIT_S
        while time.monotonic() < deadline:  # their run() reports it before Ray goes away
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        ray.shutdown()
        self._remove_head_dir()

    def _poll(self) -> None:
        """Collect the running jobs' starts and progress from the board a few times a second."""
        while not self._closed:
            time.sleep(POLL_S)
            with self._lock:
                idle = not self._running
            if not idle:
                try:
                    self._collect()
                except Exception:  # Ray is going away (close): nothing more to collect
                    return

    def _collect(self) -> None:
        import ray

        for request_id, kind, payload in ray.get(self._board.take.remote()):
            with self._lock:
                running = self._running.get(request_id)
                if running is None:
                    continue
                if kind == "start":
                    running.starts.append(payload.decode())
                    running.started_at = time.monotonic()
                else:
                    running.progress.append(msgspec.msgpack.decode(payload, type=JobProgress))

    def _remove_head_dir(self) -> None:
        if self._head_dir:
            shutil.rmtree(self._head_dir, ignore_errors=True)


def _died(error: Exception) -> str:
    return (
        "the Ray node running the job died or lost its worker "
        f"({type(error).__name__}); the job did not finish"
    )


class Board:
    """A Ray actor on the node's own Ray node: tasks post their starts and progress, the node
    takes them a few times a second (JobProgress is two numbers, msgspec bytes)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, bytes]] = []

    def post(self, request_id: str, kind: str, payload: bytes) -> None:
        self._events.append((request_id, kind, payload))

    def take(self) -> list[tuple[str, str, bytes]]:
        events, self._events = self._events, []
        return events


# ---- on the Ray node ----------------------------------------------------------------------

_pool: Executor | None = None  # this Ray worker process's sandboxed pool, made once
_pool_lock = threading.Lock()


def _local_pool(options: BackendOptions) -> Executor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = Executor(sandbox=options.sandbox, data_dir=options.data_dir)
            _pool.warm()
        return _pool


def node_label() -> str:
    """How a placement names the Ray node it is on."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return f"ray node {node_id[:8]} ({ray.util.get_node_ip_address()})"


def warm_ray_node(options: BackendOptions) -> str:
    """Start this Ray worker's pool; what went wrong, or ""."""
    try:
        _local_pool(options)
    except (SandboxUnavailable, OSError, ValueError) as e:
        return f"{node_label()}: {e}"
    return ""


def run_on_ray_node(job_bytes: bytes, options: BackendOptions, board: Any) -> bytes:
    """The Ray task: run one job in this Ray worker's sandboxed pool; its outcome as bytes."""
    import ray

    job = msgspec.msgpack.decode(job_bytes, type=JobSpec)
    here = node_label()
    ray.get(board.post.remote(job.request_id, "start", here.encode()))
    if job.resources.gpus == 0:  # Ray leaves it unset then: the job sees no GPU at all
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # A retried attempt starts clean: nothing of a run on a node that died stays.
    shutil.rmtree(job.output_dir, ignore_errors=True)

    def on_progress(progress: JobProgress) -> None:
        board.post.remote(job.request_id, "progress", msgspec.msgpack.encode(progress))

    try:
        pool = _local_pool(options)
    except (SandboxUnavailable, OSError, ValueError) as e:
        outcome = JobOutcome(ok=False, error=f"the job could not run on {here}: {e}")
    else:
        outcome = pool.run(job, on_progress=on_progress)
    outcome.placement = Placement(BACKEND, here, job.resources, outcome.seconds)
    return msgspec.msgpack.encode(outcome)
