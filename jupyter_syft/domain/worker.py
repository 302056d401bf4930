"""The job process: load the inputs, run the approved function, write the result.

Runs in a process forked from the executor's forkserver. Everything it reports goes back as a
msgspec-encoded JobOutcome; the result goes to Arrow IPC files plus a msgspec manifest, each
sealed to its recipient as it is written (`jupyter_syft.crypto.seal`): no plaintext result ever
reaches the disk.

A forked process inherits its parent's random state: without a reseed every job would draw the
same "random" numbers from torch and numpy (Python's `random` reseeds itself after a fork).
For DP-SGD noise that would be fatal (two releases with the same noise cancel it out), so each
job reseeds both from the operating system first.
"""

from __future__ import annotations

import ctypes
import linecache
import os
import resource
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from jupyter_syft.crypto.seal import ResultSeal, SealingWriter, x25519_public_key
from jupyter_syft.domain.executor import (
    MANIFEST_FILE,
    PART_FILE,
    CodeError,
    JobOutcome,
    JobSpec,
    compile_code,
)
from jupyter_syft.wire.messages import DPQuery
from jupyter_syft.wire.values import (
    encode_result,
    read_ipc_file,
    result_nbytes,
    table_kind,
    table_to_data,
)

MAX_ERROR_CHARS = 32_000
M_ARENA_MAX = -8  # glibc's mallopt() parameter
MALLOC_ARENAS = 2


class JobError(Exception):
    """A job failure, with the message the data scientist will see."""


def warm_up() -> None:
    """Target of the executor's first process: starting it is the whole point."""


def main(conn: Connection) -> None:
    """Entry point of a job process: wait for one job, run it, report the outcome, exit at once.

    The executor starts this process before a job arrives (a spare), so forking is off the
    request path; each job still gets a process of its own.
    """
    os.setsid()  # own process group, so a timeout also kills anything the code started
    try:
        job_bytes = conn.recv_bytes()
    except (EOFError, OSError):  # the executor closed without a job for us
        os._exit(0)
    outcome = run_job(msgspec.msgpack.decode(job_bytes, type=JobSpec))
    conn.send_bytes(msgspec.msgpack.encode(outcome))
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # don't wait for threads the code may have left running


def run_job(job: JobSpec) -> JobOutcome:
    try:
        import torch

        torch.seed()  # from the OS: see the module notes
        np.random.seed()
        cuda = torch.cuda.is_available()
        if not cuda:
            _limit_memory(job.memory_bytes)
        if job.federated is not None:
            return _write_result(job, _run_federated_round(job))
        if job.privacy is not None:
            return _write_result(job, _run_private(job))
        inputs = _load_inputs(job, cuda)
        value = _call(job, inputs)
        return _write_result(job, value)
    except JobError as e:
        return JobOutcome(ok=False, error=_truncate(str(e)))
    except Exception as e:
        return JobOutcome(ok=False, error=_failure(job, "internal error in the worker", e))


def _limit_memory(memory_bytes: int) -> None:
    """Let the job add at most about `memory_bytes` to this process's memory.

    RLIMIT_AS limits virtual memory, not resident memory: mapped libraries, memory-mapped inputs,
    thread stacks (8 MiB each) and address space that allocators reserve ahead all count. So:
    - the limit is what is mapped now (torch alone maps ~600 MiB) plus `memory_bytes`;
    - Arrow uses the system allocator here, as mimalloc reserves 1 GiB up front;
    - glibc gets at most MALLOC_ARENAS arenas, as each reserves 64 MiB (and glibc allows 8 per
      core), so that threads started by torch or Arrow do not eat the budget.
    Not used with CUDA, which reserves huge address ranges and fails under RLIMIT_AS.
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
    limit = mapped + memory_bytes
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # the code cannot raise it again


def _load_inputs(job: JobSpec, cuda: bool) -> dict[str, Any]:
    inputs = {}
    for name, spec in job.inputs.items():
        try:
            table = read_ipc_file(spec.path)
            if table_kind(table.schema) != spec.kind:
                raise ValueError(f"expected a {spec.kind}, found a {table_kind(table.schema)}")
            device = "cuda" if cuda and spec.kind == "tensor" else None
            inputs[name] = table_to_data(table, device)
        except Exception as e:
            raise JobError(_failure(job, f"could not load input {name!r}", e)) from e
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
        raise JobError(_failure(job, "the code raised an error", e, filename)) from e


def _filename(job: JobSpec) -> str:
    """The name the job's code is compiled under: tracebacks show its lines by it."""
    return f"<request {job.request_id}>"


def _run_private(job: JobSpec) -> Any:
    """A DP query or DP training: privacy code decides what leaves, never the job's own code."""
    from jupyter_syft.privacy.queries import run_query
    from jupyter_syft.privacy.training import train

    [spec] = job.inputs.values()
    try:
        table = read_ipc_file(spec.path)
    except Exception as e:
        raise JobError(_failure(job, "could not load the dataset", e)) from e
    if isinstance(job.privacy, DPQuery):
        try:
            return run_query(job.privacy, table)
        except Exception as e:
            raise JobError(_failure(job, "the DP query failed", e)) from e
    model = _call(job, {})
    try:
        return train(job.privacy, table, model)
    except Exception as e:
        raise JobError(_failure(job, "DP training failed", e)) from e


def _run_federated_round(job: JobSpec) -> Any:
    """Local training for one federated round: the plan's code builds the model, the plan's
    settings train it; the update vector is the result."""
    from jupyter_syft.federated.local import train_round

    assert job.federated is not None
    [spec] = job.inputs.values()
    try:
        table = read_ipc_file(spec.path)
        with open(job.weights_path, "rb") as file:
            weights = file.read()
    except Exception as e:
        raise JobError(_failure(job, "could not load the round's inputs", e)) from e
    model = _call(job, {})
    try:
        return train_round(job.federated, table, model, weights, job.privacy)
    except Exception as e:
        raise JobError(_failure(job, "local training failed", e, _filename(job))) from e


def _write_result(job: JobSpec, value: Any) -> JobOutcome:
    try:
        manifest, tables = encode_result(value)
    except (TypeError, ValueError) as e:
        raise JobError(f"the result cannot be sent back: {e}") from e
    except Exception as e:
        raise JobError(_failure(job, "could not encode the result", e)) from e
    size = result_nbytes(tables)
    if size > job.max_result_bytes:
        raise JobError(
            f"the result is {_mib(size)} MiB, over the limit of {_mib(job.max_result_bytes)} MiB"
        )
    contexts = ResultSeal(job.request_id, job.domain_peer_id, job.requester)
    try:
        recipient = x25519_public_key(job.seal_to)
        written = 0
        for i, table in enumerate(tables):
            path = os.path.join(job.output_dir, PART_FILE.format(i))
            written += _write_sealed(path, recipient, contexts.part(i), _ipc_writer(table))
        # The manifest goes last: once it exists, the result is complete.
        path = os.path.join(job.output_dir, MANIFEST_FILE)
        written += _write_sealed(path, recipient, contexts.manifest(), lambda f: f.write(manifest))
    except Exception as e:
        raise JobError(_failure(job, "could not write the result", e)) from e
    return JobOutcome(ok=True, part_count=len(tables), result_bytes=written)


def _ipc_writer(table: pa.Table) -> Callable[[SealingWriter], None]:
    def write(sink: SealingWriter) -> None:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    return write


def _write_sealed(
    path: str, recipient: bytes, context: bytes, write: Callable[[SealingWriter], object]
) -> int:
    """Seal what `write` writes into `path`; returns the file's size.

    Written next to its destination, flushed to disk and renamed into place, so a reader never
    sees a partial file, even after a crash (a failed job's leftovers are removed by the
    executor).
    """
    with open(path + ".tmp", "wb") as file:
        sink = SealingWriter(file, recipient, context)
        write(sink)
        sink.close()
        file.flush()
        os.fsync(file.fileno())
    os.replace(path + ".tmp", path)
    return sink.sealed_bytes


def _failure(job: JobSpec, what: str, error: BaseException, filename: str | None = None) -> str:
    """One line saying what went wrong; for an error in the user's code (`filename`), then the
    traceback from the user's code on.

    Running out of memory shows as MemoryError (Python, numpy, pyarrow) or as torch's
    RuntimeError "can't allocate memory"; both become one clear message.
    """
    try:
        message = str(error)
    except Exception:  # the code's own exception class may fail here too
        message = "(the error message could not be shown)"
    if isinstance(error, MemoryError) or "can't allocate memory" in message:
        headline = f"ran out of memory (limit {_mib(job.memory_bytes)} MiB)"
    else:
        headline = f"{what}: {type(error).__name__}: {message}".splitlines()[0]
    if filename is None:
        return headline
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next  # skip the worker's own frames
    lines = traceback.format_exception(type(error), error, tb)
    return headline + "\n" + "".join(lines).rstrip()


def _truncate(text: str) -> str:
    """Keep the report small: the headline and the end of the traceback."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    headline, _, rest = text.partition("\n")
    return f"{headline}\n[... traceback truncated ...]\n{rest[-MAX_ERROR_CHARS:]}"


def _mib(size: int) -> str:
    return f"{size / 2**20:.4g}"
