"""The job processes: a trusted keeper, and the sandboxed job it starts.

Each worker is forked from the executor's forkserver (torch and the rest already imported) as a
spare, before any job is known, and splits in two right away:

- the **keeper** (this process, the node's uid) talks to the executor, hands the job over,
  seals every piece of the result to its recipient as the job streams it
  (`jupyter_syft.crypto.seal`: no plaintext result reaches the disk), caps the job's
  stdout/stderr and reports a JobOutcome;
- the **job** (a child, first process of a new PID namespace) confines itself
  (`jupyter_syft.domain.sandbox.confine`), opens its declared inputs, gives up the rest of its
  authority, runs the approved code and streams the result back over a socket pair: it cannot
  write anything of the node's, so a hostile job can only lie about its own result.

Threat model: the job's code is hostile; the keeper believes nothing it sends (framed, with
sizes capped before anything is allocated) and never runs its code. Nothing is pickled.

A forked process inherits its parent's random state: without a reseed every job would draw the
same "random" numbers from torch and numpy (Python's `random` reseeds itself after a fork).
For DP-SGD noise that would be fatal (two releases with the same noise cancel it out), so each
job reseeds both from the operating system first.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import linecache
import math
import mmap
import os
import resource
import select
import signal
import socket
import struct
import sys
import termios
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, BinaryIO

import msgspec
import numpy as np
import pyarrow as pa

from jupyter_syft.crypto.seal import ResultSeal, SealingWriter, x25519_public_key
from jupyter_syft.domain import jobs
from jupyter_syft.domain.datasets import partitions
from jupyter_syft.domain.jobs import (
    MANIFEST_FILE,
    MAX_LOG_BYTES,
    PART_FILE,
    CodeError,
    JobOrder,
    JobOutcome,
    JobSpec,
    clip_progress,
    collapsed,
    compile_code,
    crash_message,
    library_of,
    user_file,
)
from jupyter_syft.domain.sandbox import JOB_UID_BASE, cgroups, confine, namespaces, syscalls
from jupyter_syft.domain.sandbox import runtime as private_runtime
from jupyter_syft.domain.sandbox.confine import Confinement
from jupyter_syft.errors import DisclosableError
from jupyter_syft.wire.messages import DPQuery, DPTraining
from jupyter_syft.wire.values import (
    UnsupportedValueError,
    encode_result,
    result_nbytes,
    table_kind,
    table_to_data,
)

MAX_ERROR_CHARS = 32_000
M_ARENA_MAX = -8  # glibc's mallopt() parameter
MALLOC_ARENAS = 2
ADDRESS_SLACK = 256 * 2**20
# Frames from the job to its keeper: one type byte, a 4-byte length, the payload.
_PART, _END_OF_PART, _REPORT, _JOB, _PROGRESS = b"P", b"E", b"R", b"J", b"G"
_HEADER = struct.Struct("!cI")
_STEPS = struct.Struct("!qq")  # a progress frame: done, total
# How often a job sends progress at most (it keeps the latest), and how many updates a second
# its keeper passes on at most (a burst of PROGRESS_BURST): see jobs.progress for why so few.
PROGRESS_INTERVAL_S = 0.25
PROGRESS_PER_S = 4.0
PROGRESS_BURST = 4.0
# What the keeper waits after each progress frame: a job that writes them in a loop fills its
# socket and blocks (its own CPU time, capped), instead of keeping the keeper busy.
PROGRESS_FRAME_PAUSE_S = 0.005
MAX_CHUNK = 8 * 2**20
MAX_REPORT = 2**22


class JobError(Exception):
    """A job failure: what the scientist may see, and the whole text for the owner."""

    def __init__(self, public: str, full: str | None = None) -> None:
        super().__init__(public)
        self.public = public
        self.full = public if full is None else full


class JobReport(msgspec.Struct):
    """The job's last frame: how it ended, and the result's manifest."""

    ok: bool
    error: str = ""
    error_full: str = ""
    manifest: bytes = b""


def cgroup_name(worker_pid: int) -> str:
    return f"worker-{worker_pid}"


def warm_up(confinement: Confinement | None) -> None:
    """Target of the executor's first process: import everything, and when the sandbox is on,
    apply every layer once in a throwaway job so a broken layer shows before the first job."""
    if confinement is None:
        return
    ours, theirs = socket.socketpair()
    name = cgroup_name(os.getpid())
    namespaces.unshare(namespaces.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        ours.close()
        status = 0
        try:
            cgroups.join(name)
            uid = JOB_UID_BASE + os.getppid() if os.getppid() else JOB_UID_BASE
            rules = confine.prepare(confinement, uid)
            confine.enter(confinement, uid, rules, "", [theirs.fileno()])
        except BaseException as e:
            with contextlib.suppress(OSError):
                theirs.sendall(f"{type(e).__name__}: {e}".encode()[:4000])
            status = 1
        os._exit(status)
    theirs.close()
    message = ours.recv(4096).decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"the sandbox could not be applied: {message or status}")


def main(conn: Connection, confinement: Confinement | None, node_pid: int) -> None:
    """Entry point of a worker: start the job process, wait for one job, keep it, exit (or,
    when the executor keeps the worker for a plan's next round, wait for that).

    The executor starts this process before a job arrives (a spare), so forking and the job's
    namespaces are off the request path.
    """
    os.setsid()  # own process group: the executor kills the group on a timeout
    try:
        node = os.pidfd_open(node_pid)
    except ProcessLookupError:  # the node ended before we started
        os._exit(0)
    keeper_end, job_end = socket.socketpair()
    log_read, log_write = os.pipe()
    # Threads first: after unshare(CLONE_NEWPID) this process can start no more of them.
    threading.Thread(target=_die_with_node, args=(node,), daemon=True).start()
    log = bytearray()
    reader = threading.Thread(target=_collect_log, args=(log_read, log), daemon=True)
    reader.start()
    if confinement is not None:
        namespaces.unshare(namespaces.CLONE_NEWPID)
    keeper_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the job process
        conn.close()
        keeper_end.close()
        os.close(log_read)
        if confinement is not None:
            # The job's group holds the job process and all it starts, not the keeper: a
            # job that exhausts its memory or process limit cannot take the keeper down.
            cgroups.join(cgroup_name(keeper_pid))
        _job_process(job_end, log_write, confinement, JOB_UID_BASE + keeper_pid)
    job_end.close()
    os.close(log_write)
    while True:
        try:
            order = msgspec.msgpack.decode(conn.recv_bytes(), type=JobOrder)
        except (EOFError, OSError):  # the executor closed without a(nother) job for us
            os.kill(pid, signal.SIGKILL)
            os._exit(0)
        try:
            outcome = _keep(order, pid, keeper_end, reader, log, log_read, conn)
        except Exception:  # a bug of ours: say so rather than look like the job crashed
            error = traceback.format_exc()
            print(error, file=sys.stderr)
            outcome = JobOutcome(False, "internal error in the worker", error_full=error)
        conn.send_bytes(msgspec.msgpack.encode(outcome))
        if not (order.keep and outcome.ok):
            conn.close()
            # After the reply: ending a process that mapped torch takes a few ms.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            os._exit(0)


def _die_with_node(node: int) -> None:
    """Kill this worker and its job the moment the node process ends (`node` is its pidfd).

    A job never outlives its node: a node that is SIGKILLed or crashes leaves no job running,
    writing result files a restarted node would not expect, or holding the data open
    (tests/test_crash_consistency.py kills a node mid-job and looks for survivors). The
    forkserver in between may linger: the keeper watches the node itself, and the job process
    dies with its keeper (confine.die_with_parent)."""
    select.select([node], [], [])
    os.killpg(0, signal.SIGKILL)


# ---- the keeper ---------------------------------------------------------------------------


def _keep(
    order: JobOrder,
    pid: int,
    sock: socket.socket,
    reader: threading.Thread,
    log: bytearray,
    log_fd: int,
    conn: Connection,
) -> JobOutcome:
    """Hand the job and its open inputs over, seal what comes back, pass its progress on to the
    executor, collect the log and the job's exit status. The keeper opens the inputs: the job's
    view holds none of the data dir."""
    job = order.job
    try:
        fds = _open_inputs(job)
    except JobError as e:
        fds, outcome = [], JobOutcome(ok=False, error=e.public, error_full=e.full)
    if fds or not job.inputs:
        try:
            socket.send_fds(sock, [_JOB], fds)
            for fd in fds:
                os.close(fd)
            order_bytes = msgspec.msgpack.encode(order)
            sock.sendall(_HEADER.pack(_JOB, len(order_bytes)) + order_bytes)
            outcome = _receive_result(job, sock, _ProgressForwarder(conn))
        except (OSError, ValueError) as e:
            outcome = JobOutcome(ok=False, error=f"could not write the result: {e}")
    if outcome.error == _NO_REPORT:
        sock.close()
        _, status = os.waitpid(pid, 0)
        outcome.error = crash_message(os.waitstatus_to_exitcode(status))
        reader.join(1.0)
    else:
        _wait_drained(log_fd, reader)  # the job flushed its output before its report
    outcome.log = bytes(log[:MAX_LOG_BYTES])
    log.clear()
    if not outcome.ok and not outcome.error_full:
        outcome.error_full = outcome.error
    return outcome


_NO_REPORT = "\0no report"


def _open_inputs(job: JobSpec) -> list[int]:
    """The job's inputs (and a round's weights), opened read-only, in the order of job.inputs."""
    fds: list[int] = []
    named = [(f"input {name!r}", spec.path) for name, spec in job.inputs.items()]
    if job.weights_path:
        named.append(("the round's weights", job.weights_path))
    for what, path in named:
        try:
            fds.append(partitions.open_input(path))  # a partition folder: a read-only mount
        except OSError as e:
            for fd in fds:
                os.close(fd)
            raise JobError(
                f"could not load {what}: {type(e).__name__}",
                f"could not load {what}: {type(e).__name__}: {e.strerror}: {path}",
            ) from e
    return fds


class _ProgressForwarder:
    """Passes a job's progress to the executor: at most PROGRESS_PER_S updates a second (a
    token bucket), the latest one held back meanwhile and sent with the next frame that finds
    a token."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._tokens = PROGRESS_BURST
        self._last = time.monotonic()
        self._held: bytes | None = None

    def __call__(self, payload: bytes | None) -> None:
        if payload is not None:
            done, total = _STEPS.unpack(payload)
            self._held = msgspec.msgpack.encode(clip_progress(done, total))
            time.sleep(PROGRESS_FRAME_PAUSE_S)
        now = time.monotonic()
        self._tokens = min(PROGRESS_BURST, self._tokens + (now - self._last) * PROGRESS_PER_S)
        self._last = now
        if self._held is not None and self._tokens >= 1:
            self._conn.send_bytes(self._held)
            self._tokens -= 1
            self._held = None


def _receive_result(job: JobSpec, sock: socket.socket, progress: _ProgressForwarder) -> JobOutcome:
    """Read the job's frames; write each part sealed, pass progress on. The job is not
    trusted: every size is checked before it is read, and a result over the limit stops the
    job."""
    recipient = x25519_public_key(job.seal_to)
    contexts = ResultSeal(job.request_id, job.domain_peer_id, job.requester)
    cap = int(job.max_result_bytes * 1.05) + 2**20  # Arrow's framing on top of the data
    reader = sock.makefile("rb")
    received = 0
    written = 0
    part: tuple[BinaryIO, SealingWriter] | None = None
    count = 0
    while True:
        header = reader.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return JobOutcome(ok=False, error=_NO_REPORT)
        kind, size = _HEADER.unpack(header)
        if kind == _PROGRESS and size == _STEPS.size:
            progress(_read_exactly(reader, size))
            continue
        progress(None)  # one held back: its turn, if a token is free
        if kind == _PART:
            received += size
            if size > MAX_CHUNK or received > cap:
                return JobOutcome(ok=False, error=_over_limit(received, job.max_result_bytes))
            if part is None:
                path = os.path.join(job.output_dir, PART_FILE.format(count))
                file = open(path + ".tmp", "wb")  # noqa: SIM115 - closed at _END_OF_PART
                part = (file, SealingWriter(file, recipient, contexts.part(count)))
            part[1].write(_read_exactly(reader, size))
        elif kind == _END_OF_PART:
            if part is None:
                return JobOutcome(ok=False, error="the job sent an empty result part")
            written += _finish(part, os.path.join(job.output_dir, PART_FILE.format(count)))
            part, count = None, count + 1
        elif kind == _REPORT and size <= MAX_REPORT:
            report = msgspec.msgpack.decode(_read_exactly(reader, size), type=JobReport)
            if not report.ok:
                return JobOutcome(ok=False, error=report.error, error_full=report.error_full)
            path = os.path.join(job.output_dir, MANIFEST_FILE)
            # The manifest goes last: once it exists, the result is complete.
            with open(path + ".tmp", "wb") as file:
                sink = SealingWriter(file, recipient, contexts.manifest())
                sink.write(report.manifest)
                written += _finish((file, sink), path)
            return JobOutcome(ok=True, part_count=count, result_bytes=written)
        else:
            return JobOutcome(ok=False, error="the job sent a malformed frame")


def _finish(part: tuple[BinaryIO, SealingWriter], path: str) -> int:
    """Flush a sealed file to disk and rename it into place: no reader sees a partial file,
    even after a crash (a failed job's leftovers are removed by the executor)."""
    file, sink = part
    sink.close()
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(path + ".tmp", path)
    return sink.sealed_bytes


def _read_exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ValueError("the job ended in the middle of a frame")
    return data


def _over_limit(size: int, limit: int) -> str:
    return f"the result is over {_mib(size)} MiB, past the limit of {_mib(limit)} MiB"


def _wait_drained(fd: int, reader: threading.Thread, timeout_s: float = 0.2) -> None:
    """Until the log reader has taken what the job wrote before its report (the job process
    lives on until the keeper has replied, so there is no end of file to wait for)."""
    deadline = time.monotonic() + timeout_s
    waiting = array.array("i", [1])
    while time.monotonic() < deadline:
        fcntl.ioctl(fd, termios.FIONREAD, waiting)
        if not reader.is_alive():  # the end of the pipe: the job process is gone, all is in
            return
        if waiting[0] == 0:
            break
        time.sleep(0.001)
    time.sleep(0.002)  # the reader's last read, on its way into the buffer


def _collect_log(fd: int, log: bytearray) -> None:
    """Keep the first MAX_LOG_BYTES of the job's output and drain the rest (so a chatty job
    does not block on a full pipe)."""
    with open(fd, "rb", buffering=0, closefd=False) as pipe:  # the keeper polls it too
        while chunk := pipe.read(65536):
            if len(log) < MAX_LOG_BYTES:
                log += chunk[: MAX_LOG_BYTES - len(log)]


# ---- the job process ----------------------------------------------------------------------


def _job_process(
    sock: socket.socket, log_write: int, confinement: Confinement | None, uid: int
) -> None:
    """Confine, wait for the job, run it, stream the result; never returns."""
    status = 0
    confine.die_with_parent()  # again in confine.enter(), whose uid drop clears it
    try:
        setup_error = ""
        rules = None
        if confinement is not None:
            try:
                rules = confine.prepare(confinement, uid)
            except OSError as e:
                setup_error = f"the sandbox could not be set up: {e}"
        entered = False
        while True:
            order, fds = _receive_job(sock)
            job = order.job
            if order.visible_devices is not None:  # kept by confine.clean_environment
                os.environ["CUDA_VISIBLE_DEVICES"] = order.visible_devices
            try:
                if setup_error:
                    raise JobError(setup_error)
                if len(fds) != len(job.inputs) + bool(job.weights_path):
                    raise JobError("the worker was handed the wrong number of inputs")
                if not entered:  # a kept worker's next round is confined and limited already
                    _enter(job, fds, sock, log_write, confinement, rules, uid, order.keep)
                report = _run(job, fds, sock, confinement is not None)
            except JobError as e:
                report = JobReport(
                    ok=False, error=_truncate(e.public), error_full=_truncate(e.full)
                )
            except BaseException as e:
                public, full = _failure(job, "internal error in the worker", e)
                report = JobReport(ok=False, error=public, error_full=full)
            entered = True
            with contextlib.suppress(Exception):  # before the report: the keeper then kills us
                sys.stdout.flush()
                sys.stderr.flush()
            _send(sock, _REPORT, msgspec.msgpack.encode(report))
            if not (order.keep and report.ok):
                break
    except BaseException:
        status = 70
    os._exit(status)  # don't wait for threads the code may have left running


def _receive_job(sock: socket.socket) -> tuple[JobOrder, list[int]]:
    """The job, and its inputs' file descriptors (sent with the first byte)."""
    _, fds, _, _ = socket.recv_fds(sock, 1, 64)
    reader = sock.makefile("rb")
    kind, size = _HEADER.unpack(reader.read(_HEADER.size))
    if kind != _JOB:
        raise ValueError("expected a job")
    return msgspec.msgpack.decode(reader.read(size), type=JobOrder), fds


_SENDING = threading.Lock()  # a thread the job's code started may report progress meanwhile


def _send(sock: socket.socket, kind: bytes, payload: bytes | bytearray | memoryview) -> None:
    with _SENDING:
        sock.sendall(_HEADER.pack(kind, len(payload)))
        sock.sendall(payload)


class _ProgressSender:
    """jobs.progress in a job process: sends (done, total) to the keeper at most every
    PROGRESS_INTERVAL_S, and always the end (done == total), so a loop may call it each step."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sent_at = -math.inf
        self._sent = (-1, -1)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if (done, total) == self._sent or (
            now - self._sent_at < PROGRESS_INTERVAL_S and done < total
        ):
            return
        self._sent_at, self._sent = now, (done, total)
        _send(self._sock, _PROGRESS, _STEPS.pack(done, min(total, 2**63 - 1)))


def _report_tqdm() -> None:
    """Make tqdm's bars inside the job report their steps as jobs.progress does (tqdm redraws
    at most ~10 times a second; its bar text still goes to the job's log)."""
    try:
        from tqdm import std
    except ImportError:  # not installed on this domain: nothing to report
        return
    display = std.tqdm.display

    def reporting_display(bar: Any, *args: Any, **kwargs: Any) -> Any:
        if bar.total and bar.total > 0:
            jobs.progress(int(min(bar.n, bar.total)), int(bar.total))
        return display(bar, *args, **kwargs)

    std.tqdm.display = reporting_display


def _run(job: JobSpec, fds: list[int], sock: socket.socket, confined: bool) -> JobReport:
    """Run one job in the (entered) job process and stream its result."""
    inputs = dict(zip(job.inputs, fds, strict=False))
    weights = fds[-1] if job.weights_path else None
    import torch

    torch.seed()  # from the OS, for every job and round: see the module notes
    np.random.seed()
    cuda = torch.cuda.is_available()
    if job.federated is not None:
        value = _run_federated_round(job, inputs, weights)
    elif job.privacy is not None:
        value = _run_private(job, inputs)
    else:
        value = _call(job, _load_inputs(job, inputs, cuda, confined))
    return _stream_result(job, value, sock)


def _enter(
    job: JobSpec,
    fds: list[int],
    sock: socket.socket,
    log_write: int,
    confinement: Confinement | None,
    rules: syscalls.Filter | None,
    uid: int,
    keep: bool,
) -> None:
    """Once per job process: its output to the log pipe, its limits, the sandbox."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_write, 1)
    os.dup2(log_write, 2)
    os.close(null)
    os.close(log_write)
    if not keep:  # CPU seconds per process (a kept worker's rounds add up: the cgroup's share
        # of the CPUs over each round's wall-clock limit bounds them instead)
        cpu_seconds = math.ceil(job.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    runtime = runs_private_runtime(job)
    if confinement is not None and rules is not None:
        try:
            if runtime:  # its processes do not inherit the descriptors: a path for each folder
                for index, fd in _distributed_fds(job, fds).items():
                    namespaces.attach(fd, f"{namespaces.INPUTS}/{index}")
                rules = syscalls.build_filter(sockets=True)
            kept_fds = [sock.fileno(), *fds]
            confine.enter(confinement, uid, rules, job.environment, kept_fds, runtime=runtime)
        except OSError as e:
            raise JobError(f"the sandbox could not be entered: {e}") from e
    if job.environment:
        sys.path.insert(0, job.environment)
    jobs._report = _ProgressSender(sock)
    _report_tqdm()
    if runtime:  # confined already: the runtime's processes are the job's
        scratch = confinement.scratch_bytes if confinement else private_runtime.MIN_OBJECT_STORE * 2
        try:
            private_runtime.start(job.resources.cpus, job.memory_bytes, scratch)
        except Exception as e:
            raise JobError(
                *_failure(job, "could not start the job's private Ray runtime", e)
            ) from e
    import torch

    if not torch.cuda.is_available():
        _limit_memory(job.memory_bytes)


def runs_private_runtime(job: JobSpec) -> bool:
    """Whether the job takes a ray.data Dataset: it then runs its own private Ray runtime, in
    its sandbox's runtime profile (sandbox/runtime.py)."""
    return any(spec.kind == "distributed" for spec in job.inputs.values())


def _distributed_fds(job: JobSpec, fds: list[int]) -> dict[int, int]:
    """Input index -> descriptor, for the distributed inputs (fds follow job.inputs' order)."""
    kinds = [spec.kind for spec in job.inputs.values()]
    return {
        i: fd for i, (kind, fd) in enumerate(zip(kinds, fds, strict=False)) if kind == "distributed"
    }


def _read_table(fd: int) -> pa.Table:
    """An Arrow IPC file through a private copy-on-write mapping (see values.read_ipc_file)."""
    if partitions.is_folder(fd):  # a dataset stored as partitioned Parquet
        return partitions.read_table(fd)
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    os.close(fd)  # the mapping keeps the file
    return pa.ipc.open_file(pa.py_buffer(mapping)).read_all()


def _limit_memory(memory_bytes: int) -> None:
    """Let the job add at most about `memory_bytes` to this process's memory.

    RLIMIT_AS limits virtual memory, not resident memory: mapped libraries, memory-mapped inputs,
    thread stacks (8 MiB each) and address space that allocators reserve ahead all count. So:
    - the limit is what is mapped now (torch alone maps ~600 MiB) plus `memory_bytes`, plus
      ADDRESS_SLACK for address space that glibc and Arrow reserve but do not use (seen: a
      128 MiB arena reserved for a 256-byte allocation, which then failed);
    - Arrow uses the system allocator here, as mimalloc reserves 1 GiB up front;
    - glibc gets at most MALLOC_ARENAS arenas, as each reserves 64 MiB (and glibc allows 8 per
      core), so that threads started by torch or Arrow do not eat the budget.
    Not used with CUDA, which reserves huge address ranges and fails under RLIMIT_AS. The job's
    cgroup bounds all its processes together (sandbox.cgroups); this gives one process a clean
    MemoryError instead of the kernel's kill.
    """
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except FileNotFoundError:  # no /proc: not Linux, and macOS does not enforce RLIMIT_AS
        return
    pa.set_memory_pool(pa.system_memory_pool())
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):  # glibc (musl has no arenas to cap)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    limit = mapped + memory_bytes + ADDRESS_SLACK
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # the code cannot raise it again


def _load_inputs(job: JobSpec, fds: dict[str, int], cuda: bool, confined: bool) -> dict[str, Any]:
    inputs = {}
    for index, (name, spec) in enumerate(job.inputs.items()):
        if spec.kind == "distributed":
            # Sandboxed: the folder attached under /inputs by _enter (the runtime's workers
            # read it there); with the sandbox off, the node's own path.
            folder = f"{namespaces.INPUTS}/{index}" if confined else spec.path
            try:
                inputs[name] = private_runtime.dataset(folder)
            except Exception as e:
                raise JobError(*_failure(job, f"could not load input {name!r}", e)) from e
            continue
        try:
            table = _read_table(fds[name])
            if table_kind(table.schema) != spec.kind:
                raise JobError(
                    f"could not load input {name!r}: expected a {spec.kind}, "
                    f"found a {table_kind(table.schema)}"
                )
            device = "cuda" if cuda and spec.kind == "tensor" else None
            inputs[name] = table_to_data(table, device)
        except JobError:
            raise
        except Exception as e:
            raise JobError(*_failure(job, f"could not load input {name!r}", e)) from e
    return inputs


def _call(job: JobSpec, inputs: dict[str, Any]) -> Any:
    """Run the code in a fresh namespace and call the function, with tracebacks showing the
    user's lines."""
    filename = _filename(job)
    try:
        code = compile_code(job.code, job.function_name, filename)
    except CodeError as e:
        raise JobError(str(e)) from e
    linecache.cache[filename] = (len(job.code), None, job.code.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec(code, namespace)
        return namespace[job.function_name](**inputs)
    except BaseException as e:  # the job's process ends anyway: report even SystemExit
        raise JobError(*_failure(job, "the code raised an error", e, filename)) from e


def _filename(job: JobSpec) -> str:
    """The name the job's code is compiled under: tracebacks show its lines by it."""
    return user_file(job.request_id)


def _run_private(job: JobSpec, fds: dict[str, int]) -> Any:
    """A DP query or DP training: privacy code decides what leaves, never the job's own code."""
    from jupyter_syft.privacy.queries import run_query
    from jupyter_syft.privacy.training import train

    [fd] = fds.values()
    try:
        table = _read_table(fd)
    except Exception as e:
        raise JobError(*_failure(job, "could not load the dataset", e)) from e
    if isinstance(job.privacy, DPQuery):
        try:
            return run_query(job.privacy, table)
        except Exception as e:
            raise JobError(*_failure(job, "the DP query failed", e)) from e
    model = _call(job, {})
    assert isinstance(job.privacy, DPTraining)  # a private DP job is a query or a training
    try:
        return train(job.privacy, table, model)
    except Exception as e:
        raise JobError(*_failure(job, "DP training failed", e, _filename(job))) from e


def _run_federated_round(job: JobSpec, fds: dict[str, int], weights_fd: int | None) -> Any:
    """Local training for one federated round: the plan's code builds the model, the plan's
    settings train it; the update vector is the result."""
    from jupyter_syft.federated.local import train_round

    assert job.federated is not None and weights_fd is not None
    assert not isinstance(job.privacy, DPQuery)  # a round trains, with DP or without
    [fd] = fds.values()
    try:
        table = _read_table(fd)
        with open(weights_fd, "rb") as file:
            weights = file.read()
    except Exception as e:
        raise JobError(*_failure(job, "could not load the round's inputs", e)) from e
    model = _call(job, {})
    try:
        return train_round(job.federated, table, model, weights, job.privacy)
    except Exception as e:
        raise JobError(*_failure(job, "local training failed", e, _filename(job))) from e


def _stream_result(job: JobSpec, value: Any, sock: socket.socket) -> JobReport:
    try:
        manifest, tables = encode_result(value)
    except UnsupportedValueError as e:
        public = _without_cause(e)
        raise JobError(
            f"the result cannot be sent back: {public}", f"the result cannot be sent back: {e}"
        ) from e
    except (TypeError, ValueError) as e:
        raise JobError(*_failure(job, "the result cannot be sent back", e)) from e
    except Exception as e:
        raise JobError(*_failure(job, "could not encode the result", e)) from e
    size = result_nbytes(tables)
    if size > job.max_result_bytes:
        raise JobError(
            f"the result is {_mib(size)} MiB, over the limit of {_mib(job.max_result_bytes)} MiB"
        )
    for table in tables:
        sink = _FrameSink(sock)
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        sink.flush()
        _send(sock, _END_OF_PART, b"")
    return JobReport(ok=True, manifest=manifest)


class _FrameSink:
    """A file-like object for Arrow's writer that sends what it writes as part frames."""

    closed = False

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        if len(self._buffer) + len(view) < 2**20:
            self._buffer += view
        else:
            self.flush()
            for start in range(0, len(view), MAX_CHUNK):
                _send(self._sock, _PART, view[start : start + MAX_CHUNK])
        return len(view)

    def flush(self) -> None:
        if self._buffer:
            _send(self._sock, _PART, self._buffer)
            self._buffer = bytearray()

    def writable(self) -> bool:
        return True


def _failure(
    job: JobSpec, what: str, error: BaseException, filename: str | None = None
) -> tuple[str, str]:
    """(what the scientist may see, the whole text for the owner).

    The scientist's text names the exception's type and shows the frames of their own code by
    line number and the line of the source they sent (library frames as one line each run: "…
    5 frames in pandas"), never the exception's message, values, the owner's paths or names the
    code made at run time: an approved job could raise the private
    rows as its message (the attack this stops). Running out of memory shows as MemoryError
    (Python, numpy, pyarrow) or as torch's RuntimeError "can't allocate memory"; both become
    one clear message, as does a job that the sandbox stopped.
    """
    try:
        message = str(error)
    except Exception:  # the code's own exception class may fail here too
        message = "(the error message could not be shown)"
    type_name = _public_type_name(error)
    if isinstance(error, DisclosableError) and not _from_code(error, _filename(job)):
        public = full = f"{what}: {message}".splitlines()[0]
    elif isinstance(error, MemoryError) or "can't allocate memory" in message:
        public = f"ran out of memory (limit {_mib(job.memory_bytes)} MiB)"
        full = f"{public}: {what}: {type(error).__name__}: {message}".splitlines()[0]
    else:
        public = f"{what}: {type_name}"
        full = f"{what}: {type(error).__name__}: {message}".splitlines()[0]
    if filename is None:
        return public, full
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next  # skip the worker's own frames
    lines = traceback.format_exception(type(error), error, tb)
    full = full + "\n" + "".join(lines).rstrip()
    source = job.code.splitlines()
    frames: list[str] = []
    libraries: list[str] = []  # a run of library frames, shown as one line
    for frame in traceback.extract_tb(tb):
        if frame.filename != filename:
            libraries.append(library_of(frame.filename))
        elif frame.lineno and 0 < frame.lineno <= len(source):
            if libraries:
                frames.append("  " + collapsed(libraries))
                libraries = []
            frames.append(f"  line {frame.lineno}: {source[frame.lineno - 1].strip()}")
    if frames and libraries:
        frames.append("  " + collapsed(libraries))
    if frames:
        public += "\nin your code (the message is for the owner to release):\n" + "\n".join(frames)
    return public, full


def _from_code(error: BaseException, filename: str) -> bool:
    """Whether a frame of the job's code is on the traceback of `error` or of its causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                return True
            tb = tb.tb_next
        todo += [current.__cause__, current.__context__]
    return False


def _public_type_name(error: BaseException) -> str:
    """The exception's type when Python or a library defines it; a class the job's code made
    (even one claiming another module) could carry data in its name."""
    kind = type(error)
    found: object = sys.modules.get(kind.__module__)
    for part in kind.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not kind or kind.__module__ == "__main__":
        return "an exception class of your code"
    return (
        kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    )


def _without_cause(error: BaseException) -> str:
    """Our own message about an unsupported result, without the library error it wraps (which
    may quote values)."""
    text = str(error)
    if error.__cause__ is None:
        return text
    cause = str(error.__cause__)
    if cause and text.endswith(cause):
        text = text[: -len(cause)].rstrip(": ")
    return f"{text} ({type(error.__cause__).__name__})"


def _truncate(text: str) -> str:
    """Keep the report small: the headline and the end of the traceback."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    headline, _, rest = text.partition("\n")
    return f"{headline}\n[... traceback truncated ...]\n{rest[-MAX_ERROR_CHARS:]}"


def _mib(size: int) -> str:
    return f"{size / 2**20:.4g}"
