"""The domain protocol's core: what every feature shares, and the router that serves them.

A domain node serves `wire.messages.DOMAIN` from feature modules, each owning its handlers and
its tables over this core and the store core: `datasets`, `requests`, `privacy`, `federated`,
`secagg` and `he` (homomorphic inference), plus the node's own calls here (hello, users, the
audit log). `domain.router` collects their handlers into one table, checked at start-up.

One rule holds every handler together: a refused call changes nothing. Each handler validates
everything first and writes to the store last, in one transaction. For DP requests that
includes the privacy budget: a refused query is never charged. Roles are declared with each
handler (`@handles(Call, allow=...)`) and checked before it runs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pyarrow as pa
import trio

from jupyter_syft.domain.audit import Receipts
from jupyter_syft.domain.environments import (
    Environments,
    RequirementError,
    check_allowed,
    check_requirements,
)
from jupyter_syft.domain.executor import machine_capacity
from jupyter_syft.domain.jobs import for_scientist, owner_paths
from jupyter_syft.domain.store import Store
from jupyter_syft.identity import Identity, IdentityError, public_key_of
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values
from jupyter_syft.wire.rpc import Caller, Refused, handles
from jupyter_syft.wire.tickets import TicketIssuer

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # also models' names
INLINE_BYTES = 1 << 20  # files up to this size ride the control plane; larger go over Flight
MAX_CODE_BYTES = 256 * 1024
UPLOAD_TTL_S = 600.0

# Who may make a call, by the role the caller holds on this domain ("" for a stranger).
ANYONE = frozenset({"", "data_scientist", "admin"})
MEMBERS = frozenset({"data_scientist", "admin"})
ADMIN = frozenset({"admin"})

WARMING_UP_NOTE = "the domain's job workers are warming up (torch, Opacus: a few seconds)"


@dataclass
class Limits:
    job_timeout_s: float = 60.0
    job_memory_bytes: int = 4 * 2**30
    max_result_bytes: int = 2 * 2**30
    max_upload_bytes: int = 16 * 2**30

    def job_resources(self) -> m.Resources:
        """What a job gets where its request asks for nothing: 1 cpu, no GPU, the node's
        memory limit per job (--job-memory-mb)."""
        return m.Resources(cpus=1.0, gpus=0, memory_mb=self.job_memory_bytes // 2**20)


@dataclass
class DomainCore:
    """Everything the features share; the node owns the processes behind these objects."""

    name: str
    peer_id: str
    store: Store
    issuer: TicketIssuer
    flight_location: str
    tls_cert_pem: bytes
    tls_fingerprint: str
    limits: Limits
    on_approved: Callable[[str], Awaitable[None]]
    sandbox: str  # the job sandbox's level, as NodeInfo shows it
    identity: Identity | None = None  # the node's key: signs its secure-aggregation frames
    environments: Environments | None = None  # builds what requests declare; None: refused
    # The most one job can get from the executor (ExecutorBackend.capacity: its largest
    # machine); asked at each submission that asks for resources, as a cluster can change.
    capacity: Callable[[], m.Resources] = machine_capacity
    # True until the executor's workers have preloaded torch and Opacus (~4 s after start):
    # requests waiting to run meanwhile say so (RequestInfo.note) instead of looking hung.
    warming_up: bool = True
    # The latest progress of each building or running request (in memory only: one entry per
    # job however often it reports, gone when the job ends).
    progress: dict[str, m.JobProgress] = field(default_factory=dict)
    _changed: dict[str, trio.Event] = field(default_factory=dict)

    def set_progress(self, request_id: str, progress: m.JobProgress | None) -> None:
        """Record (None: forget) a request's progress and wake its long-polls."""
        if progress is None:
            self.progress.pop(request_id, None)
        else:
            self.progress[request_id] = progress
        self.notify(request_id)

    def notify(self, request_id: str) -> None:
        """Wake every long-poll waiting on this request."""
        event = self._changed.pop(request_id, None)
        if event is not None:
            event.set()

    async def changed(self, request_id: str, timeout_s: float) -> None:
        """Wait until `notify(request_id)`, or `timeout_s`."""
        event = self._changed.setdefault(request_id, trio.Event())
        with trio.move_on_after(timeout_s):
            await event.wait()

    def requirements(self, requirements: list[str], datasets: Iterable[str]) -> list[str]:
        """Declared requirements, checked and in canonical form; refused (saying what is
        wrong) if one is not allowed here or by the policy of a dataset the request reads."""
        if not requirements:
            return []
        if self.environments is None:
            raise Refused("invalid", f"domain {self.name!r} does not build environments")
        try:
            checked = check_requirements(requirements)
            for dataset in datasets:
                check_allowed(checked, self.store.policy(dataset).requirements, dataset)
        except RequirementError as exc:
            raise Refused("invalid", str(exc)) from exc
        return checked

    def dataset(self, name: str) -> m.DatasetInfo:
        info = self.store.dataset(name)
        if info is None:
            raise Refused("not_found", f"no dataset named {name!r} on domain {self.name!r}")
        return info

    def table(self, name: str) -> m.DatasetInfo:
        info = self.dataset(name)
        if info.kind != "table":
            raise Refused("invalid", f"dataset {name!r} is a {info.kind}: DP needs a table")
        return info

    def request_for(self, caller: Caller, request_id: str) -> m.RequestInfo:
        """The request, if the sender may see it: its requester or an admin (invariant 3)."""
        info = self.store.request(request_id)
        if info is None or (info.requester != caller.peer_id and caller.role != "admin"):
            raise Refused("not_found", f"no request {request_id} of yours on this domain")
        return info

    def ticket(self, path: Path, requester: str, size: int) -> m.ArrowData:
        relative = path.relative_to(self.store.paths.root).as_posix()
        return m.ArrowData(ticket=self.issuer.issue("get", relative, requester), nbytes=size)

    def sealed(self, path: Path, requester: str) -> m.ArrowData:
        """A sealed result piece as it is stored: inline when small, else a Flight ticket."""
        size = path.stat().st_size
        if size > INLINE_BYTES:
            return self.ticket(path, requester, size)
        return m.ArrowData(ipc=path.read_bytes())

    def arrow(self, path: Path, requester: str) -> m.ArrowData:
        """Small files inline as an Arrow IPC stream; large ones as a Flight ticket."""
        size = path.stat().st_size
        if size > INLINE_BYTES:
            return self.ticket(path, requester, size)
        table = values.read_ipc_file(path)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return m.ArrowData(ipc=sink.getvalue().to_pybytes())

    def disclosed(self, info: m.RequestInfo, caller: Caller) -> m.RequestInfo:
        """`info` with the job's full error and log opened: for admins, and for its
        requester once released (the stored copies stay sealed)."""
        if self.warming_up and info.status in ("approved", "running"):
            info = msgspec.structs.replace(info, note=WARMING_UP_NOTE)
        progress = self.progress.get(info.request_id)
        if (
            progress is not None
            and info.status in ("building", "running")
            and (progress.stage or caller.role == "admin" or self._steps_public(info))
        ):
            info = msgspec.structs.replace(info, progress=progress)
        found = self.store.job_output(info.request_id)
        if found is None:
            return info
        error_full, log, released = found
        if caller.role != "admin" and not (released and info.requester == caller.peer_id):
            return info
        if caller.role != "admin":  # the requester: their frames first, none of our paths
            paths = owner_paths(self.store.paths.root)
            error_full, log = for_scientist(error_full, paths), for_scientist(log, paths)
        return msgspec.structs.replace(info, error_full=error_full, log=log, released=released)

    def _steps_public(self, info: m.RequestInfo) -> bool:
        """Whether the job's own progress numbers reach its requester: only for a raw result
        that leaves without another look, as they are numbers the job's code chose
        (jobs.progress). Under any other policy they would carry private values past what
        protects that result: DP training's noise (`progress(int(x[0]), n)` in `forward`), a
        secure aggregate's masking, the owner's review of a held result."""
        release = self.store.disclosure(info.inputs.values())[1]
        return info.policy == "raw" and release != "after_review"


class NodeCalls:
    """The node's own calls: who it is, its users, its audit log."""

    def __init__(self, core: DomainCore) -> None:
        self.core = core

    @handles(m.Hello, allow=ANYONE)
    async def hello(self, caller: Caller, call: m.Hello) -> m.NodeInfo:
        core = self.core
        return m.NodeInfo(
            core.name,
            core.peer_id,
            caller.role,
            core.flight_location,
            core.tls_cert_pem,
            core.tls_fingerprint,
            core.sandbox,
        )

    @handles(m.AddUser, allow=ADMIN)
    async def add_user(self, caller: Caller, call: m.AddUser) -> m.Done:
        try:
            public_key_of(call.peer_id)
        except IdentityError as exc:
            raise Refused("invalid", str(exc)) from exc
        self.core.store.add_user(caller.peer_id, call.peer_id, call.role, call.name)
        return m.Done()

    @handles(m.RemoveUser, allow=ADMIN)
    async def remove_user(self, caller: Caller, call: m.RemoveUser) -> m.Done:
        """The user loses every role here; their requests and the audit keep their name.
        The creator always stays admin, so the last admin is never removed."""
        if call.peer_id == caller.peer_id:
            raise Refused("conflict", "an admin cannot remove themselves: ask another admin")
        if not self.core.store.remove_user(caller.peer_id, call.peer_id):
            raise Refused("not_found", f"{call.peer_id} is not a user of this domain")
        return m.Done()

    @handles(m.ListUsers, allow=ADMIN)
    async def list_users(self, caller: Caller, call: m.ListUsers) -> m.UserList:
        return m.UserList(self.core.store.users())

    @handles(m.ReadAudit, allow=ADMIN)
    async def read_audit(self, caller: Caller, call: m.ReadAudit) -> m.AuditLog:
        """The newest entries, whether the chain verifies, and if it does its signed head."""
        problem = self.core.store.check_audit()
        head = None if problem else Receipts(self.core.store).head()
        return m.AuditLog(self.core.store.audit_entries(call.limit), not problem, problem, head)
