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
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType

import msgspec

from jupyter_syft.domain.sandbox import SandboxStatus
from jupyter_syft.wire.messages import DPQuery, DPTraining, FederatedPlan

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
    path: str  # an Arrow IPC file written by write_ipc_file
    kind: str  # "table" or "tensor"


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


class JobOrder(msgspec.Struct):
    """What the executor sends a worker: a job, and whether to stay for another (run(keep_for))."""

    job: JobSpec
    keep: bool = False


class JobOutcome(msgspec.Struct):
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


class ExecutorBackend(ABC):
    """Runs a node's approved jobs. `run` blocks and may be called from many threads."""

    sandbox: SandboxStatus  # the sandbox level jobs get, as the node shows it

    @abstractmethod
    def warm(self) -> None:
        """Get ready for the first job (imports, workers); called once after start."""

    @abstractmethod
    def run(self, job: JobSpec, keep_for: str = "") -> JobOutcome:
        """Run `job` to completion; a failure is reported in the outcome, never raised.
        `keep_for` (a federated plan's id) may keep the job's worker for the next round."""

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
