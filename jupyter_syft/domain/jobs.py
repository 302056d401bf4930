"""What a domain hands an executor and gets back, and the seam for executors.

A job is a `JobSpec` (msgspec, never pickled); its outcome a `JobOutcome`. An
`ExecutorBackend` runs approved jobs for a node: the local pool of sandboxed worker processes
(`jupyter_syft.domain.executor`, registered as "local") is the embedded default; another
engine registers itself with `@register_backend("name")` and is chosen with
`domain start --executor name`. The node stays the only place that authenticates, approves,
charges budgets and seals; a backend only runs what the node gives it, and every backend
applies the same sandbox, limits and timeouts.
"""

from __future__ import annotations

import ast
import operator
import os
import re
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import CodeType

import msgspec

from jupyter_syft.domain.sandbox import SandboxStatus
from jupyter_syft.wire.messages import (
    DPQuery,
    DPTraining,
    FederatedPlan,
    JobProgress,
    Placement,
    Resources,
)

MANIFEST_FILE = "manifest.sealed"
PART_FILE = "part-{}.sealed"
MAX_OUTCOME_BYTES = 2**22
MAX_LOG_BYTES = 2**20


class CodeError(ValueError):
    """Submitted code does not compile or does not define the function to call."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


class InputSpec(msgspec.Struct):
    # An Arrow IPC file written by write_ipc_file, or a dataset's folder of partitioned Parquet
    # files at its location (jupyter_syft.domain.datasets.partitions): the keeper opens either.
    path: str
    # "table" or "tensor"; "distributed": a ray.data Dataset over the partition folder `path`
    kind: str


class JobSpec(msgspec.Struct):
    request_id: str
    code: str
    function_name: str
    inputs: dict[str, InputSpec]  # argument name -> asset
    output_dir: str  # receives part-0.sealed, part-1.sealed, ... and manifest.sealed
    # Each piece is sealed to `seal_to` (the requester, or the domain itself for an
    # aggregate-only result) under a context naming the request, the domain and the requester.
    domain_peer_id: str
    requester: str
    seal_to: str
    timeout_s: float = 60.0
    memory_bytes: int = 4 * 2**30
    max_result_bytes: int = 1 * 2**30
    # A DP query runs no code (`code` only describes it); DP training calls `function_name`
    # for its model. Either reads its one input as a table.
    privacy: DPQuery | DPTraining | None = None
    # A federated round: the plan, and the global weights (safetensors) it starts from.
    federated: FederatedPlan | None = None
    weights_path: str = ""
    # A declared environment: the site-packages folder of its build, put first on sys.path
    # and shown read-only to the job ("" = the domain's own packages only).
    environment: str = ""
    # What the job runs with, filled in by the node (never 0: the request's ask, capped by the
    # policy, defaults from the node's limits). memory_bytes above is the same memory limit.
    resources: Resources = Resources(cpus=1.0, gpus=0, memory_mb=4096)


class JobOrder(msgspec.Struct):
    """What the executor sends a worker: a job, and whether to stay for another (run(keep_for))."""

    job: JobSpec
    keep: bool = False
    # The GPUs the job may see (CUDA_VISIBLE_DEVICES of the run's thread of control: a Ray
    # task's own, set per task), None = as the worker was started. Spares fork before a job.
    visible_devices: str | None = None


class JobOutcome(msgspec.Struct, tag="outcome"):
    ok: bool
    # What the scientist may see of a failure: one line with the exception type, then the
    # frames of their own code (line numbers and source lines), never exception messages,
    # values or the owner's paths (they could carry private data).
    error: str = ""
    # The whole text (messages, values, traceback): the node seals it to itself at rest and
    # shows it to the owner, who may release it to the scientist.
    error_full: str = ""
    # The job's stdout and stderr, interleaved, capped at MAX_LOG_BYTES: sealed like
    # error_full, never written to the node's log.
    log: bytes = b""
    part_count: int = 0
    result_bytes: int = 0  # bytes of the result files written
    seconds: float = 0.0
    # Where it ran; set by the backend (the worker leaves it None).
    placement: Placement | None = None


ProgressCallback = Callable[[JobProgress], None]
# Set by the worker in a job process: sends (done, total) to its keeper. None elsewhere.
_report: Callable[[int, int], None] | None = None


def progress(done: int, total: int) -> None:
    """Report that a job has done `done` of `total` steps: the scientist's cell shows a bar.

    `import jupyter_syft as syft; syft.progress(i, n)` in a request's code (tqdm bars inside a
    job report the same way); outside a job it does nothing, so the code runs unchanged on the
    mock. Cheap to call often: the job sends at most a few updates a second, its keeper passes
    on at most a few a second more, and the node keeps only the latest, in memory.

    Disclosure: what leaves is two whole numbers, nothing else. No label or other text from the
    job: a free-text label would be a channel for private values (`progress(i, n,
    label=df.name[0])`) that bypasses the error redaction and the owner's result review, and
    is easy to miss in review. Two numbers are a far narrower channel (clipped to
    0 <= done <= total <= MAX_PROGRESS_TOTAL, a few samples a second, only the latest seen),
    and requests whose result leaves only after review or only inside an aggregate show it to
    the owner alone (DomainCore.disclosed).
    """
    try:
        done, total = operator.index(done), operator.index(total)
    except TypeError:
        raise TypeError(
            f"syft.progress(done, total) takes whole numbers, got {type(done).__name__} and "
            f"{type(total).__name__}"
        ) from None
    if total <= 0 or done < 0:
        raise ValueError(
            f"syft.progress(done, total) needs 0 <= done and 0 < total: {done}, {total}"
        )
    if _report is not None:
        _report(min(done, total), total)


MAX_PROGRESS_TOTAL = 10**9


def clip_progress(done: int, total: int) -> JobProgress:
    """What a job's progress may say, whatever its frames claim: 0 <= done <= total."""
    total = max(0, min(total, MAX_PROGRESS_TOTAL))
    return JobProgress(done=max(0, min(done, total)), total=total)


# ---- tracebacks as the scientist sees them ------------------------------------------------

_FRAME = re.compile(r'^(\s*)File "(.*)", line (\d+), in (.*)$')
_PACKAGE_DIR = re.compile(r"[^\s\"'(]*/(?:site|dist)-packages/")
_PYTHON_DIR = re.compile(r"[^\s\"'(]*/lib/python3\.\d+/")


def user_file(request_id: str) -> str:
    """The name a job's code is compiled under: tracebacks show its frames by it."""
    return f"<request {request_id}>"


def library_of(filename: str) -> str:
    """The package a traceback frame's file belongs to ("pandas" for
    .../site-packages/pandas/core/frame.py), "python" for the standard library."""
    parts = filename.split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            index = len(parts) - 1 - parts[::-1].index(marker)
            rest = parts[index + 1 : index + 2]
            return rest[0].removesuffix(".py") if rest else "python"
    if "jupyter_syft" in parts:
        return "jupyter_syft"
    return "python"


def collapsed(libraries: list[str]) -> str:
    """One line for a run of library frames: "… 5 frames in pandas"."""
    names = ", ".join(dict.fromkeys(libraries))
    count = len(libraries)
    return f"… {count} frame{'s' if count > 1 else ''} in {names}"


def for_scientist(text: str, paths: list[tuple[str, str]]) -> str:
    """A released traceback (or job log) as its scientist sees it: the frames of their code
    as Python printed them, each run of library frames as one line ("… 5 frames in pandas"),
    and every path of the owner's machine replaced (`paths`: prefix and its stand-in, then a
    pattern for any other package or Python folder). The owner's copy stays whole."""
    sections = re.split(r"(\n\n(?:The above exception|During handling of).*\n\n)", text)
    shown = [_tidy_section(section) for section in sections]
    tidy = "".join(shown)
    for prefix, stand_in in paths:
        tidy = tidy.replace(prefix, stand_in)
    tidy = _PACKAGE_DIR.sub("<packages>/", tidy)
    return _PYTHON_DIR.sub("<python>/", tidy)


def _tidy_section(section: str) -> str:
    lines = section.split("\n")
    out: list[str] = []
    libraries: list[str] = []
    index = 0
    while index < len(lines):
        match = _FRAME.match(lines[index])
        if match is None:
            if libraries:
                out.append(" " * 2 + collapsed(libraries))
                libraries = []
            out.append(lines[index])
            index += 1
            continue
        indent = len(match.group(1))
        end = index + 1
        while end < len(lines) and _indent(lines[end]) > indent and lines[end].strip():
            end += 1
        if match.group(2).startswith("<request "):
            if libraries:
                out.append(" " * indent + collapsed(libraries))
                libraries = []
            out += lines[index:end]
        else:
            libraries.append(library_of(match.group(2)))
        index = end
    if libraries:
        out.append("  " + collapsed(libraries))
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


@cache
def owner_paths(data_dir: Path) -> list[tuple[str, str]]:
    """This machine's folders that a job's traceback or log can name, longest first, each
    with what the scientist sees instead: the domain's data dir, the Python installation and
    its package folders, this package, the node's home and working folders."""
    found: dict[str, str] = {}
    for entry in sys.path:
        if os.path.basename(entry) in ("site-packages", "dist-packages"):
            found[entry] = "<packages>"
    for folder in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        found.setdefault(folder, "<python>")
    found[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] = "<jupyter_syft>"
    found[str(data_dir)] = "<domain>"
    found.setdefault(os.path.expanduser("~"), "~")
    found.setdefault(os.getcwd(), "<node>")
    pairs = {
        variant: stand_in
        for path, stand_in in found.items()
        for variant in (path, os.path.realpath(path), os.path.abspath(path))
        if len(variant) > 1
    }
    return sorted(pairs.items(), key=lambda pair: -len(pair[0]))


def compile_code(code: str, function_name: str, filename: str = "<code>") -> CodeType:
    """Compile `code`, checking that it defines `function_name` with a top-level def."""
    try:
        tree = ast.parse(code, filename)
        compiled = compile(tree, filename, "exec")  # some errors only show here
    except SyntaxError as e:
        raise CodeError(
            f"syntax error at line {e.lineno}, column {e.offset}: {e.msg}", e.lineno, e.offset
        ) from e
    except ValueError as e:  # e.g. a null byte in the source
        raise CodeError(f"invalid code: {e}") from e
    if not any(
        isinstance(node, ast.FunctionDef) and node.name == function_name for node in tree.body
    ):
        raise CodeError(f"the code defines no top-level function {function_name!r}")
    return compiled


def check_code(code: str, function_name: str) -> None:
    """Raise CodeError if the code cannot run: checked before a request is accepted."""
    compile_code(code, function_name)


def crash_message(code: int) -> str:
    """What a worker's exit code says about how it ended."""
    if code >= 0:
        return f"worker crashed (exit code {code})"
    if -code == signal.SIGKILL:
        return (
            "worker was killed (signal 9 SIGKILL), most likely for using more memory than "
            "the job may"
        )
    try:
        name = signal.Signals(-code).name
    except ValueError:  # real-time signals have no name
        name = "unnamed"
    return f"worker crashed (signal {-code} {name})"


@dataclass(frozen=True)
class BackendOptions:
    """What the node tells a backend it starts (from DomainConfig)."""

    sandbox: str = "on"  # "off": jobs run unconfined (see jupyter_syft.domain.sandbox)
    data_dir: str | None = None
    address: str = ""  # the engine's cluster, for a backend that has one ("local": start one)


class ExecutorBackend(ABC):
    """Runs a node's approved jobs. `run` blocks and may be called from many threads."""

    sandbox: SandboxStatus  # the sandbox level jobs get, as the node shows it

    @abstractmethod
    def warm(self) -> None:
        """Get ready for the first job (imports, workers); called once after start."""

    @abstractmethod
    def run(
        self, job: JobSpec, keep_for: str = "", on_progress: ProgressCallback | None = None
    ) -> JobOutcome:
        """Run `job` to completion; a failure is reported in the outcome, never raised.
        `keep_for` (a federated plan's id) may keep the job's worker for the next round;
        `on_progress` is called (from this thread) with the job's progress as it reports it,
        a few times a second at most."""

    @abstractmethod
    def capacity(self) -> Resources:
        """The most one job can get here (the largest machine's cpus, gpus and memory): a
        request asking for more is refused at submission, with these numbers."""

    @abstractmethod
    def close(self) -> None:
        """Kill running jobs (their `run` reports it) and refuse new ones."""


BACKENDS: dict[str, Callable[[BackendOptions], ExecutorBackend]] = {}

B = Callable[[BackendOptions], ExecutorBackend]


def register_backend(name: str) -> Callable[[B], B]:
    """Make a backend factory available as `domain start --executor NAME`."""

    def register(factory: B) -> B:
        if name in BACKENDS:
            raise ValueError(f"an executor backend named {name!r} is already registered")
        BACKENDS[name] = factory
        return factory

    return register
