"""Run approved code on private data in a separate, sandboxed worker process.

Each job runs in a fresh process forked from a multiprocessing "forkserver" that has already
imported torch, numpy, pandas and pyarrow: ~10 ms per job instead of ~1 s for a new interpreter,
and without forking this (possibly multi-threaded) process, which hangs OpenMP in the child.
A crash, a timeout or running out of memory then ends only that process.

The job goes to the worker as msgspec bytes and the outcome comes back as msgspec bytes over a
pipe; the result itself is written as Arrow IPC files plus a msgspec manifest, each sealed as it
is written (`jupyter_syft.crypto.seal`), so no plaintext result reaches the disk. Nothing is
pickled.

The job's code is treated as hostile although an owner approved it (a reviewer can miss one
line): with the sandbox on (the default) it runs confined by every layer of
`jupyter_syft.domain.sandbox`, in a per-job cgroup this executor sets up and removes, so that
it reads only its declared inputs, reaches no network, key or other job, and leaves nothing
behind. The forkserver starts with a clean environment: a job that reads its own
`/proc/self/environ` sees none of the node's variables.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import msgspec

from jupyter_syft.domain import worker
from jupyter_syft.domain.jobs import (
    MANIFEST_FILE,
    MAX_OUTCOME_BYTES,
    PART_FILE,
    BackendOptions,
    CodeError,
    ExecutorBackend,
    JobOrder,
    JobOutcome,
    JobSpec,
    ProgressCallback,
    check_code,
    crash_message,
    register_backend,
)
from jupyter_syft.domain.sandbox import SandboxStatus, cgroups, confinement, probe
from jupyter_syft.domain.sandbox.confine import Confinement, clean_environment, process_limit
from jupyter_syft.wire.messages import DPQuery, JobProgress, Placement, Resources

PRELOAD = [
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "jupyter_syft.wire.values",
    "jupyter_syft.domain.worker",
    "jupyter_syft.privacy.queries",  # OpenDP: ~0.15 s to import, paid once here, not per query
    "jupyter_syft.privacy.training",
    "opacus",  # ~2.5 s to import: paid at start, not by each DP training job or round
    "torch._dynamo",  # ~1 s, imported by the first torch.optim optimizer a job makes
    "jupyter_syft.federated.local",  # safetensors: each federated round loads weights
    "matplotlib.pyplot",  # ~2 s with its font list: a job that plots pays nothing (Agg)
    "tqdm",  # jupyter_syft.domain.worker makes its bars report progress
    # A worker re-runs the node's main module (`python -m jupyter_syft.cli`) as it starts;
    # with its imports (trio: ~0.1 s) already loaded here, that costs nothing.
    "jupyter_syft.cli",
]
KEEP_S = 120.0  # how long a kept worker waits for the next round of its plan
MAX_KEPT = 4  # kept workers at most (each holds a process's memory)
EXIT_GRACE_S = 5.0  # how long a worker that reported may take to exit before it is killed
# What a job's cgroup allows beyond its memory limit: the interpreter's own pages that the job
# process writes to after the fork (copy-on-write) and its /tmp, which lives in memory.
CGROUP_MEMORY_MARGIN = 256 * 2**20


class SandboxUnavailable(RuntimeError):
    """The sandbox is on but a layer is missing here: no job may run."""


class Executor(ExecutorBackend):
    """Runs jobs in worker processes; run() is blocking and may be called from many threads.

    `sandbox="on"` (the default) confines every job; a machine without every layer raises
    SandboxUnavailable naming what is missing. `data_dir` is the node's (checked to lie outside
    everything a job may read). `scratch_mb` caps a job's /tmp, `max_processes` its processes.
    """

    def __init__(
        self,
        preload: bool = True,
        sandbox: str = "on",
        data_dir: str | None = None,
        scratch_mb: int = 256,
        max_processes: int = 64,
        cpus: float | None = None,
    ) -> None:
        self.sandbox: SandboxStatus = probe("on" if sandbox == "on" else "off")
        if self.sandbox.missing:
            raise SandboxUnavailable(
                "the job sandbox is missing "
                + "; ".join(self.sandbox.missing)
                + " (start the node with --sandbox off to run jobs unconfined, at your risk)"
            )
        self._confinement: Confinement | None = None
        if self.sandbox.mode == "on":
            cgroups.remove_stale()
            self._confinement = confinement(
                data_dir, scratch_mb, max_processes, cpus or os.cpu_count() or 1
            )
        self._context = multiprocessing.get_context("forkserver")
        if preload:
            self._context.set_forkserver_preload(PRELOAD)
        _start_forkserver_with_clean_environment()
        # multiprocessing reads a finished process's exit status in Process.start() (for all
        # processes) and in join(); two threads reading it at once can misreport it, so both
        # happen under this lock. Waiting for a process happens outside it.
        self._lock = threading.Lock()
        self._running: set[BaseProcess] = set()
        self._spares: list[tuple[BaseProcess, Connection]] = []
        self._kept: dict[str, tuple[BaseProcess, Connection, float]] = {}  # see run(keep_for)
        self._closed = False
        self._warming = threading.Lock()  # held while warm() runs: jobs wait, unclocked

    def warm(self) -> None:
        """Start the forkserver and its imports (~4 s) now, so the first job is fast."""
        with self._warming:
            process = self._start(worker.warm_up, (self._confinement,))
            if process is None:
                raise RuntimeError("the executor is closed")
            code = self._reap(process, None)
            if code != 0:
                raise SandboxUnavailable(
                    "the job sandbox could not be applied on this machine (see the node's "
                    "output above); start the node with --sandbox off to run jobs unconfined"
                )
            self._add_spare()

    def run(
        self, job: JobSpec, keep_for: str = "", on_progress: ProgressCallback | None = None
    ) -> JobOutcome:
        """Run a job to completion; a failure is reported in the outcome, never raised;
        `on_progress` gets its progress as its worker passes it on (ExecutorBackend.run).

        `keep_for` (a federated plan's id) keeps the worker, confined as it is, for the next
        job with the same key: the rounds of one approved plan (one scientist, one model
        code, one dataset) then cost no fork, no sandbox set-up and no imports. It may keep
        state from round to round, as it may from batch to batch within a round.
        """
        with self._warming:  # a job's time limit starts once workers can start
            pass
        self._evict_stale()
        started = time.monotonic()
        try:
            if not isinstance(job.privacy, DPQuery):
                check_code(job.code, job.function_name)
        except CodeError as e:
            return JobOutcome(ok=False, error=str(e), seconds=time.monotonic() - started)
        created = not os.path.isdir(job.output_dir)
        try:
            os.makedirs(job.output_dir, exist_ok=True)
            outcome = self._run(job, started + job.timeout_s, keep_for, on_progress)
        except OSError as e:
            outcome = JobOutcome(ok=False, error=f"could not run the job: {e}")
        if not outcome.ok:
            _remove_result_files(job.output_dir, created)
        outcome.seconds = time.monotonic() - started
        outcome.placement = Placement(BACKEND, socket.gethostname(), job.resources, outcome.seconds)
        return outcome

    def capacity(self) -> Resources:
        """This machine: its cpus, its GPUs (as the NVIDIA driver lists them), its memory."""
        return machine_capacity()

    def close(self) -> None:
        """Kill running jobs (their run() reports it) and refuse new ones.

        The forkserver is shared by the whole process and ends when this process does.
        """
        if self._warming.locked():
            # Still warming up (the forkserver importing, ~4 s; the start holds the lock):
            # no job has started, as jobs wait for warm(); waiting would only wait it out.
            self._closed = True
            return
        with self._lock:
            self._closed = True
            for process in self._running:
                _kill(process)
            spares, self._spares = self._spares, []
            spares += [(process, conn) for process, conn, _ in self._kept.values()]
            self._kept = {}
        for process, conn in spares:
            conn.close()
            self._reap(process, EXIT_GRACE_S)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(
        self, job: JobSpec, deadline: float, keep_for: str, on_progress: ProgressCallback | None
    ) -> JobOutcome:
        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        spare = self._take_kept(keep_for) if keep_for else None
        spare = spare or self._take_spare()
        if spare is None:
            return JobOutcome(ok=False, error="the executor is closed")
        process, conn = spare
        if self._confinement is not None:
            assert process.pid is not None
            cgroups.limit(
                worker.cgroup_name(process.pid),
                memory=job.memory_bytes + CGROUP_MEMORY_MARGIN,
                processes=process_limit(self._confinement, worker.runs_private_runtime(job)),
                # The cpus the request was granted (the node's share is the most it can get).
                cpus=min(self._confinement.cpus, job.resources.cpus or self._confinement.cpus),
            )
        outcome: JobOutcome | None = None
        try:
            devices = os.environ.get("CUDA_VISIBLE_DEVICES")
            order = JobOrder(job, keep=bool(keep_for), visible_devices=devices)
            conn.send_bytes(msgspec.msgpack.encode(order))
            while outcome is None and (ready := conn.poll(remaining())):
                outcome = _message(conn.recv_bytes(MAX_OUTCOME_BYTES), on_progress)
        except (EOFError, OSError):  # the worker ended without reporting
            ready = True
        if outcome is not None:
            if keep_for and outcome.ok and self._keep(keep_for, process, conn):
                return outcome
            conn.close()
            # Waiting for the worker's exit (~5 ms) and forking the next spare happen off the
            # request path, and after the job, so they do not compete with it for the CPU.
            threading.Thread(target=self._retire, args=(process,), daemon=True).start()
            return outcome
        conn.close()
        code = self._reap(process, remaining())
        threading.Thread(target=self._add_spare, daemon=True).start()
        if not ready:
            return JobOutcome(ok=False, error=f"timed out after {job.timeout_s:g} s")
        return JobOutcome(ok=False, error=self._crash_message(code))

    def _keep(self, key: str, process: BaseProcess, conn: Connection) -> bool:
        """Park a worker for the next job of `key`; False if it cannot be kept."""
        with self._lock:
            if self._closed or key in self._kept or not process.is_alive():
                return False
            self._kept[key] = (process, conn, time.monotonic())
        self._evict_stale()
        # Let it go once idle for KEEP_S even if no other job comes to evict it.
        timer = threading.Timer(KEEP_S + 1, self._evict_stale)
        timer.daemon = True
        timer.start()
        return True

    def _evict_stale(self) -> None:
        """Let go of kept workers idle for KEEP_S, and of the oldest beyond MAX_KEPT."""
        with self._lock:
            by_age = sorted(self._kept, key=lambda k: self._kept[k][2])
            now = time.monotonic()
            stale = [k for k in by_age if now - self._kept[k][2] > KEEP_S]
            stale += [k for k in by_age[: max(0, len(by_age) - MAX_KEPT)] if k not in stale]
            expired = [self._kept.pop(k) for k in stale]
        for process, conn, _ in expired:
            conn.close()
            threading.Thread(target=self._retire, args=(process,), daemon=True).start()

    def _take_kept(self, key: str) -> tuple[BaseProcess, Connection] | None:
        with self._lock:
            kept = self._kept.pop(key, None)
        if kept is None:
            return None
        process, conn, _ = kept
        if process.is_alive():
            return process, conn
        conn.close()
        self._reap(process, 0)
        return None

    def _retire(self, process: BaseProcess) -> None:
        self._reap(process, EXIT_GRACE_S)
        self._add_spare()

    def _spawn(self) -> tuple[BaseProcess, Connection] | None:
        """A worker process waiting for its job on a pipe, or None once closed."""
        ours, theirs = self._context.Pipe(duplex=True)
        try:
            process = self._start(worker.main, (theirs, self._confinement, os.getpid()))
        finally:
            theirs.close()
        if process is None:
            ours.close()
            return None
        return process, ours

    def _add_spare(self) -> None:
        spare = self._spawn()
        if spare is None:
            return
        with self._lock:
            if not self._closed:
                self._spares.append(spare)
                return
        spare[1].close()
        self._reap(spare[0], EXIT_GRACE_S)

    def _take_spare(self) -> tuple[BaseProcess, Connection] | None:
        """A ready spare that is still alive, else a new worker."""
        while True:
            with self._lock:
                spare = self._spares.pop() if self._spares else None
                alive = spare is not None and spare[0].is_alive()
            if spare is None:
                return self._spawn()
            if alive:
                return spare
            spare[1].close()
            self._reap(spare[0], 0)

    def _start(self, target: Callable[..., None], args: tuple) -> BaseProcess | None:
        """Start a worker process, or return None once the executor is closed."""
        process = self._context.Process(target=target, args=args, daemon=True)
        with self._lock:
            if self._closed:
                return None
            process.start()
            self._running.add(process)
        return process

    def _reap(self, process: BaseProcess, grace: float | None) -> int:
        """Wait up to `grace` seconds (None: no limit) for the process to end, kill it if it
        has not, and return its exit code."""
        if not wait([process.sentinel], grace):
            with self._lock:
                _kill(process)
            wait([process.sentinel])
        if self._confinement is not None:
            assert process.pid is not None  # every job process left behind goes here
            cgroups.kill_and_remove(worker.cgroup_name(process.pid))
        with self._lock:
            process.join()
            self._running.discard(process)
            code = process.exitcode
        process.close()
        assert code is not None  # joined
        return code

    def _crash_message(self, code: int) -> str:
        if self._closed:
            return "the executor was closed while the job was running"
        return crash_message(code)


def _message(data: bytes, on_progress: ProgressCallback | None) -> JobOutcome | None:
    """A worker's message: its outcome, or None for a progress update (passed on)."""
    try:
        message = msgspec.msgpack.decode(data, type=JobOutcome | JobProgress)
    except msgspec.DecodeError as e:
        return JobOutcome(ok=False, error=f"the worker sent a malformed report: {e}")
    if isinstance(message, JobOutcome):
        return message
    if on_progress is not None:
        on_progress(message)
    return None


def _start_forkserver_with_clean_environment() -> None:
    """Start the forkserver (once per process) with only the job environment's variables: a
    process's initial environment stays readable in /proc/self/environ however it changes
    os.environ later, and every worker is forked from the forkserver."""
    from multiprocessing import forkserver

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_environment())
    os.environ["MPLBACKEND"] = "Agg"  # jobs have no display: figures render to PNG
    try:
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _kill(process: BaseProcess) -> None:
    """Kill a worker and anything it started (it leads its own process group)."""
    with suppress(ProcessLookupError, PermissionError):
        if process.pid is not None:
            os.killpg(process.pid, signal.SIGKILL)
    process.kill()


def _remove_result_files(output_dir: str, remove_dir: bool) -> None:
    """Remove what a failed job may have written, and the directory if the job created it."""
    for pattern in (PART_FILE.format("*"), MANIFEST_FILE):
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern + "*")):
            with suppress(FileNotFoundError):
                os.remove(path)
    if remove_dir:
        with suppress(OSError):
            os.rmdir(output_dir)


def machine_capacity() -> Resources:
    """What one job could get on this machine at most; no torch import (the node has none)."""
    gpus = len(glob.glob("/proc/driver/nvidia/gpus/*"))
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return Resources(cpus=float(os.cpu_count() or 1), gpus=gpus, memory_mb=memory_mb)


BACKEND = "local"


@register_backend(BACKEND)
def local_pool(options: BackendOptions) -> ExecutorBackend:
    """The embedded default: sandboxed worker processes on this machine."""
    return Executor(sandbox=options.sandbox, data_dir=options.data_dir)
