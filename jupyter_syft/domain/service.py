"""The domain protocol's handlers: check the call, check the caller's role, act, reply.

One rule holds every handler together: a refused call changes nothing. Each handler validates
everything first and writes to the store last, in one transaction. For DP requests that
includes the privacy budget: a refused query is never charged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import trio

from jupyter_syft.crypto.he import MAX_CONTEXT_BYTES, HEError
from jupyter_syft.crypto.seal import (
    ResultSeal,
    SealError,
    SealingWriter,
    open_sealed,
    open_stream,
    x25519_public_key,
)
from jupyter_syft.crypto.secagg import MAX_ABS, SecAggClient, SecAggError
from jupyter_syft.crypto.secagg_messages import BadFrame, open_frame
from jupyter_syft.domain.environments import (
    Environments,
    RequirementError,
    check_allowed,
    check_requirements,
    check_requirements_policy,
)
from jupyter_syft.domain.executor import MANIFEST_FILE, PART_FILE, CodeError, check_code
from jupyter_syft.domain.models import (
    DIGEST,
    ContextUpload,
    HEServing,
    decode_weights,
    load_context,
    query_header,
)
from jupyter_syft.domain.store import BudgetExceeded, Store, StoreError
from jupyter_syft.federated.plan import MAX_WEIGHTS_BYTES, PlanError, check_plan, round_spec
from jupyter_syft.federated.weights import from_safetensors
from jupyter_syft.identity import Identity, IdentityError, public_key_of
from jupyter_syft.privacy.budget import BudgetValueError, delta_units, epsilon_units
from jupyter_syft.privacy.policy import PolicyError, auto_approves, check_policy
from jupyter_syft.privacy.queries import QueryError, check_query, describe_query
from jupyter_syft.privacy.training import TrainingError, check_training, noise_multiplier
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values
from jupyter_syft.wire.signing import BadMessage, ReplayGuard, open_call
from jupyter_syft.wire.tickets import TicketIssuer

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INLINE_BYTES = 1 << 20  # files up to this size ride the control plane; larger go over Flight
MAX_CODE_BYTES = 256 * 1024
MAX_WAIT_S = 60.0
UPLOAD_TTL_S = 600.0


AGGREGATE_ONLY = "an aggregate-only result is released only inside secure aggregation"


class Refused(Exception):
    """A call the node will not carry out; becomes an `Error` reply."""

    def __init__(self, code: m.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


WARMING_UP_NOTE = "the domain's job workers are warming up (torch, Opacus: a few seconds)"


@dataclass
class Limits:
    job_timeout_s: float = 60.0
    job_memory_bytes: int = 4 * 2**30
    max_result_bytes: int = 2 * 2**30
    max_upload_bytes: int = 16 * 2**30


@dataclass
class PendingUpload:
    dataset: str
    description: str
    public: bool
    owner: str
    expires: float


@dataclass
class AggregationState:
    """A domain's side of one secure-aggregation session, for one aggregate-only request."""

    client: SecAggClient
    vector: np.ndarray | None  # dropped once masked: nothing else needs it


@dataclass
class DomainService:
    """Everything a handler needs; the node owns the processes behind these objects."""

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
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    identity: Identity | None = None  # the node's key: signs its secure-aggregation frames
    environments: Environments | None = None  # builds what requests declare; None: refused
    _aggregations: dict[str, AggregationState] = field(default_factory=dict)
    _uploads: dict[str, PendingUpload] = field(default_factory=dict)
    _changed: dict[str, trio.Event] = field(default_factory=dict)
    _he: HEServing = field(default_factory=HEServing)
    _releasing: set[str] = field(default_factory=set)  # held results being re-sealed now
    # True until the executor's workers have preloaded torch and Opacus (~4 s after start):
    # requests waiting to run meanwhile say so (RequestInfo.note) instead of looking hung.
    warming_up: bool = True

    # ---- entry point ------------------------------------------------------------------------

    async def handle(self, remote_peer: str, frame: bytes) -> bytes:
        try:
            envelope = open_call(frame, remote_peer, self.peer_id, self.guard)
        except BadMessage as exc:
            return m.encode(m.Error("bad_message", str(exc)))
        sender, call = envelope.sender, envelope.call
        handler = getattr(self, "_" + type(call).__name__)
        try:
            reply = await handler(sender, self.store.role_of(sender), call)
        except Refused as exc:
            if exc.code == "not_authorised":
                self.store.audit(sender, "refused", type(call).__name__, str(exc))
            return m.encode(m.Error(exc.code, str(exc)))
        except BudgetExceeded as exc:
            return m.encode(m.Error("budget_exhausted", str(exc)))
        except StoreError as exc:
            return m.encode(m.Error("conflict", str(exc)))
        return m.encode(reply)

    @staticmethod
    def bad_frame_reply(reason: str) -> bytes:
        return m.encode(m.Error("bad_message", reason))

    def notify(self, request_id: str) -> None:
        """Wake every long-poll waiting on this request."""
        event = self._changed.pop(request_id, None)
        if event is not None:
            event.set()

    # ---- anyone -----------------------------------------------------------------------------

    async def _Hello(self, sender: str, role: str, call: m.Hello) -> m.NodeInfo:
        return m.NodeInfo(
            self.name,
            self.peer_id,
            role,
            self.flight_location,
            self.tls_cert_pem,
            self.tls_fingerprint,
            self.sandbox,
        )

    async def _ListDatasets(self, sender: str, role: str, call: m.ListDatasets) -> m.DatasetList:
        found = self.store.datasets()
        return m.DatasetList([d for d in found if role or d.public])

    async def _GetMock(self, sender: str, role: str, call: m.GetMock) -> m.ArrowData:
        info = self._dataset(call.dataset)
        if not (role or info.public):
            raise Refused("not_authorised", f"{sender} is not a user of this domain")
        self.store.audit(sender, "read_mock", call.dataset)
        return self._arrow(self.store.mock_path(call.dataset), sender)

    # ---- members ----------------------------------------------------------------------------

    async def _SubmitRequest(self, sender: str, role: str, call: m.SubmitRequest) -> m.RequestInfo:
        self._require_member(sender, role)
        if len(call.code.encode()) > MAX_CODE_BYTES:
            raise Refused("invalid", f"code is larger than {MAX_CODE_BYTES} bytes")
        if not call.inputs:
            raise Refused("invalid", "a request must read at least one dataset")
        for argument, dataset in call.inputs.items():
            if not argument.isidentifier():
                raise Refused("invalid", f"argument name {argument!r} is not a Python identifier")
            self._dataset(dataset)
        try:
            check_code(call.code, call.function_name)
        except CodeError as exc:
            raise Refused("invalid", str(exc)) from exc
        requirements = self._requirements(call.requirements, call.inputs.values())
        checked = msgspec.structs.replace(call, requirements=requirements)
        return self.store.add_request(sender, checked)

    async def _GetRequest(self, sender: str, role: str, call: m.GetRequest) -> m.RequestInfo:
        info = self._request_for(sender, role, call.request_id)
        if call.wait_s > 0 and info.status == call.known_status:
            event = self._changed.setdefault(call.request_id, trio.Event())
            with trio.move_on_after(min(call.wait_s, MAX_WAIT_S)):
                await event.wait()
            info = self._request_for(sender, role, call.request_id)
        return self._disclosed(info, sender, role)

    async def _ListRequests(self, sender: str, role: str, call: m.ListRequests) -> m.RequestList:
        self._require_member(sender, role)
        requester = None if role == "admin" else sender
        found = self.store.requests(requester, call.status)
        return m.RequestList([self._disclosed(info, sender, role) for info in found])

    async def _FetchResult(self, sender: str, role: str, call: m.FetchResult) -> m.ResultData:
        info = self._request_for(sender, role, call.request_id)
        if info.status != "done":
            raise Refused("conflict", f"request {call.request_id} is {info.status}, not done")
        if info.policy == "aggregate":
            raise Refused("not_authorised", AGGREGATE_ONLY)
        folder = self.store.paths.result_dir(call.request_id)
        manifest = (folder / MANIFEST_FILE).read_bytes()
        count = self.store.result_parts(call.request_id)
        parts = [self._sealed(folder / PART_FILE.format(i), sender) for i in range(count)]
        self.store.audit(sender, "fetch_result", call.request_id)
        return m.ResultData(manifest, parts)

    async def _SecAggStep(self, sender: str, role: str, call: m.SecAggStep) -> m.SecAggFrame:
        """Feed one round's frame to this request's SecAggClient; its signed reply goes back.

        Order, replays, forgeries and wrong sessions are refused by the library's own checks.
        """
        info = self._request_for(sender, role, call.request_id)
        if info.requester != sender:
            raise Refused("not_authorised", "only the requester may aggregate a request's result")
        if info.policy != "aggregate":
            raise Refused("invalid", f"request {call.request_id} is not aggregate-only")
        if info.status != "done":
            raise Refused("conflict", f"request {call.request_id} is {info.status}, not done")
        if self.identity is None:
            raise Refused("internal", "this node cannot take part in secure aggregation")
        try:
            envelope = open_frame(call.frame)
        except BadFrame as exc:
            raise Refused("invalid", str(exc)) from exc
        state = self._aggregations.get(call.request_id)
        try:
            if envelope.round == 0:
                if state is not None:
                    raise Refused("conflict", "this request's result was already aggregated once")
                client = SecAggClient(self.identity, call.frame)
                if client.server != sender:
                    raise Refused("invalid", "the setup frame is not signed by the requester")
                vector = self._result_vector(info)
                if client.setup.length != len(vector):
                    raise Refused(
                        "invalid",
                        f"the session sums vectors of length {client.setup.length}; "
                        f"this result has length {len(vector)}",
                    )
                reply = client.advertise_keys()
                self._aggregations[call.request_id] = AggregationState(client, vector)
                self.store.audit(sender, "secagg_join", call.request_id, client.session)
            elif state is None:
                raise Refused("conflict", "no secure aggregation in progress for this request")
            elif envelope.round == 1:
                reply = state.client.share_keys(call.frame)
            elif envelope.round == 2:
                vector, state.vector = state.vector, None  # masked once, even if replayed now
                if vector is None:
                    raise Refused("invalid", "this domain already sent its masked input")
                # Masking and signing a long vector takes ~0.1 s per million entries: off the
                # event loop, so the node keeps answering meanwhile.
                reply = await trio.to_thread.run_sync(state.client.masked_input, call.frame, vector)
                self.store.audit(sender, "secagg_masked_input", call.request_id)
            elif envelope.round == 3:
                self._masked_input_file(call.request_id).unlink(missing_ok=True)  # fetched
                reply = state.client.consistency_check(call.frame)
            else:
                reply = state.client.unmask(call.frame)
        except SecAggError as exc:
            raise Refused("invalid", str(exc)) from exc
        if len(reply) <= INLINE_BYTES:
            return m.SecAggFrame(reply)
        # A masked input is 8 bytes per entry: the bulk data plane carries it, as it does
        # results (libp2p frames are capped at 16 MiB and move ~5x slower than Flight).
        path = self._masked_input_file(call.request_id)
        path.write_bytes(reply)
        relative = path.relative_to(self.store.paths.root).as_posix()
        ticket = self.issuer.issue("get", relative, sender)
        return m.SecAggFrame(b"", ticket=ticket, nbytes=len(reply))

    def _masked_input_file(self, request_id: str) -> Path:
        """Where a large signed masked input waits for the aggregator to fetch it."""
        return self.store.paths.result_dir(request_id) / "secagg-masked-input.frame"

    # ---- admin ------------------------------------------------------------------------------

    async def _Decide(self, sender: str, role: str, call: m.Decide) -> m.RequestInfo:
        self._require_admin(sender, role)
        current = self._request_for(sender, role, call.request_id)
        if current.policy == "federated" and current.status == "approved" and not call.approve:
            info = self.store.revoke_plan(sender, call.request_id, call.reason)  # no more rounds
            self.notify(call.request_id)
            return info
        info = self.store.decide(sender, call.request_id, call.approve, call.reason)
        self.notify(call.request_id)
        if call.approve:
            await self.on_approved(call.request_id)
        return info

    async def _AddUser(self, sender: str, role: str, call: m.AddUser) -> m.Done:
        self._require_admin(sender, role)
        try:
            public_key_of(call.peer_id)
        except IdentityError as exc:
            raise Refused("invalid", str(exc)) from exc
        self.store.add_user(sender, call.peer_id, call.role, call.name)
        return m.Done()

    async def _ListUsers(self, sender: str, role: str, call: m.ListUsers) -> m.UserList:
        self._require_admin(sender, role)
        return m.UserList(self.store.users())

    async def _BeginUpload(self, sender: str, role: str, call: m.BeginUpload) -> m.UploadTickets:
        self._require_admin(sender, role)
        if not DATASET_NAME.match(call.dataset):
            raise Refused(
                "invalid",
                f"dataset name {call.dataset!r}: use 1-64 letters, digits, '_', '.', '-'",
            )
        if self.store.dataset(call.dataset) is not None:
            raise Refused("conflict", f"a dataset named {call.dataset!r} already exists")
        self._drop_expired_uploads()
        upload_id = uuid.uuid4().hex
        (self.store.paths.staging / upload_id).mkdir()
        self._uploads[upload_id] = PendingUpload(
            call.dataset, call.description, call.public, sender, time.time() + UPLOAD_TTL_S
        )
        limit = self.limits.max_upload_bytes
        return m.UploadTickets(
            upload_id,
            self.issuer.issue("put", f"staging/{upload_id}/private.arrow", sender, limit),
            self.issuer.issue("put", f"staging/{upload_id}/mock.arrow", sender, limit),
        )

    async def _CommitUpload(self, sender: str, role: str, call: m.CommitUpload) -> m.DatasetInfo:
        self._require_admin(sender, role)
        upload = self._uploads.pop(call.upload_id, None)
        if upload is None or upload.owner != sender:
            raise Refused("not_found", f"no upload {call.upload_id} in progress")
        folder = self.store.paths.staging / call.upload_id
        try:
            info = self._staged_dataset(upload, folder)
            self.store.add_dataset(sender, info, folder / "private.arrow", folder / "mock.arrow")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return info

    async def _ReadAudit(self, sender: str, role: str, call: m.ReadAudit) -> m.AuditLog:
        self._require_admin(sender, role)
        problem = self.store.check_audit()
        return m.AuditLog(self.store.audit_entries(call.limit), not problem, problem)

    # ---- disclosure: errors, logs and results held for review -------------------------------

    async def _ReleaseError(self, sender: str, role: str, call: m.ReleaseError) -> m.RequestInfo:
        self._require_admin(sender, role)
        self._request_for(sender, role, call.request_id)
        self.store.release_error(sender, call.request_id)
        self.notify(call.request_id)
        return self._disclosed(self._request_for(sender, role, call.request_id), sender, role)

    async def _PreviewResult(self, sender: str, role: str, call: m.PreviewResult) -> m.ResultData:
        """The held result re-sealed to the admin who asks (same contexts, their key)."""
        self._require_admin(sender, role)
        info = self._held(sender, role, call.request_id)
        folder = self._preview_dir(call.request_id, sender)
        shutil.rmtree(folder, ignore_errors=True)
        parts = self.store.result_parts(call.request_id)
        await self._reseal(info, folder, parts, sender)
        self.store.audit(sender, "preview_result", call.request_id)
        manifest = (folder / MANIFEST_FILE).read_bytes()
        pieces = [self._sealed(folder / PART_FILE.format(i), sender) for i in range(parts)]
        return m.ResultData(manifest, pieces)

    async def _DecideResult(self, sender: str, role: str, call: m.DecideResult) -> m.RequestInfo:
        """Release a held result to its requester, atomically, or withhold it for good."""
        self._require_admin(sender, role)
        info = self._held(sender, role, call.request_id)
        if not call.release and not call.reason.strip():
            raise Refused("invalid", "withholding a result needs a reason: the scientist sees it")
        folder = self.store.paths.result_dir(call.request_id)
        self._releasing.add(call.request_id)
        try:
            if call.release:
                updated = await self._release(info, folder, sender, call.reason)
            else:
                updated = self.store.decide_result(
                    sender, call.request_id, False, call.reason, _nothing
                )
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            self._releasing.discard(call.request_id)
        for preview in self.store.paths.staging.glob(f"preview-{call.request_id}-*"):
            shutil.rmtree(preview, ignore_errors=True)
        self.notify(call.request_id)
        return updated

    async def _release(
        self, info: m.RequestInfo, folder: Path, sender: str, reason: str
    ) -> m.RequestInfo:
        """Re-seal every piece to the requester beside the held ones, then swap the folders
        in the transaction that marks the request done (a crash between: `Store` undoes it)."""
        staged = folder.with_name(folder.name + ".release")
        held = folder.with_name(folder.name + ".held")
        shutil.rmtree(staged, ignore_errors=True)
        await self._reseal(info, staged, self.store.result_parts(info.request_id), info.requester)

        def swap() -> None:
            os.replace(folder, held)
            os.replace(staged, folder)

        try:
            updated = self.store.decide_result(sender, info.request_id, True, reason, swap)
        except BaseException:
            if held.exists():  # swapped, then the commit failed: put the held pieces back
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(held, folder)
            shutil.rmtree(staged, ignore_errors=True)
            raise
        shutil.rmtree(held, ignore_errors=True)
        return updated

    async def _reseal(self, info: m.RequestInfo, target: Path, parts: int, recipient: str) -> None:
        source = self.store.paths.result_dir(info.request_id)
        contexts = ResultSeal(info.request_id, self.peer_id, info.requester)
        try:
            await trio.to_thread.run_sync(
                reseal, source, target, parts, self.store.identity, contexts, recipient
            )
        except (SealError, OSError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise Refused("internal", f"the held result cannot be opened: {exc}") from exc

    def _held(self, sender: str, role: str, request_id: str) -> m.RequestInfo:
        info = self._request_for(sender, role, request_id)
        if info.status != "awaiting_release":
            raise Refused(
                "conflict", f"request {request_id} is {info.status}, not awaiting_release"
            )
        if request_id in self._releasing:
            raise Refused("conflict", f"request {request_id} is being released or withheld now")
        return info

    def _preview_dir(self, request_id: str, admin: str) -> Path:
        who = hashlib.sha256(admin.encode()).hexdigest()[:16]
        return self.store.paths.staging / f"preview-{request_id}-{who}"

    def _disclosed(self, info: m.RequestInfo, sender: str, role: str) -> m.RequestInfo:
        """`info` with the job's full error and log opened: for admins, and for its
        requester once released (the stored copies stay sealed)."""
        if self.warming_up and info.status in ("approved", "running"):
            info = msgspec.structs.replace(info, note=WARMING_UP_NOTE)
        found = self.store.job_output(info.request_id)
        if found is None:
            return info
        error_full, log, released = found
        if role != "admin" and not (released and info.requester == sender):
            return info
        return msgspec.structs.replace(info, error_full=error_full, log=log, released=released)

    # ---- differential privacy ---------------------------------------------------------------

    async def _SubmitDPQuery(self, sender: str, role: str, call: m.SubmitDPQuery) -> m.RequestInfo:
        self._require_member(sender, role)
        info = self._table(call.dataset)
        try:
            check_query(call.query, info.schema, info.rows)
            auto = auto_approves(self.store.policy(call.dataset), call.query)
        except (QueryError, PolicyError) as exc:
            raise Refused("invalid", str(exc)) from exc
        query = call.query
        request = self.store.add_dp_request(
            sender, call.dataset, query, describe_query(query), f"dp.{query.kind}", auto
        )
        if auto:
            await self.on_approved(request.request_id)
        return request

    async def _SubmitDPTraining(
        self, sender: str, role: str, call: m.SubmitDPTraining
    ) -> m.RequestInfo:
        self._require_member(sender, role)
        info = self._table(call.dataset)
        requirements = self._requirements(call.requirements, [call.dataset])
        spec = call.training
        if len(spec.code.encode()) > MAX_CODE_BYTES:
            raise Refused("invalid", f"code is larger than {MAX_CODE_BYTES} bytes")
        try:
            check_code(spec.code, spec.function_name)
            check_training(spec, info.schema, info.rows)
            await trio.to_thread.run_sync(noise_multiplier, spec, info.rows)
        except (CodeError, TrainingError) as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.add_dp_request(
            sender, call.dataset, spec, spec.code, spec.function_name, False, requirements
        )

    async def _GetBudget(self, sender: str, role: str, call: m.GetBudget) -> m.BudgetList:
        self._require_member(sender, role)
        peer_id = call.peer_id or sender
        if peer_id != sender and role != "admin":
            raise Refused("not_authorised", "only an admin may read another user's budget")
        if call.dataset:
            self._dataset(call.dataset)
            return m.BudgetList([self.store.budget(peer_id, call.dataset)])
        return m.BudgetList(self.store.budgets(peer_id))

    async def _SetBudget(self, sender: str, role: str, call: m.SetBudget) -> m.BudgetInfo:
        self._require_admin(sender, role)
        self._dataset(call.dataset)
        if not self.store.role_of(call.peer_id):
            raise Refused("not_found", f"{call.peer_id} is not a user of this domain: add them")
        try:
            epsilon = epsilon_units(call.epsilon, allow_zero=True)
            delta = delta_units(call.delta)
        except BudgetValueError as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.set_budget(sender, call.peer_id, call.dataset, epsilon, delta)

    async def _GetPolicy(self, sender: str, role: str, call: m.GetPolicy) -> m.PolicyInfo:
        self._require_member(sender, role)
        self._dataset(call.dataset)
        return self.store.policy(call.dataset)

    async def _SetPolicy(self, sender: str, role: str, call: m.SetPolicy) -> m.PolicyInfo:
        self._require_admin(sender, role)
        self._dataset(call.dataset)
        requirements = None
        try:
            if call.max_query_epsilon is not None:
                check_policy(call.max_query_epsilon)
            if call.requirements is not None:
                requirements = check_requirements_policy(call.requirements)
        except (PolicyError, RequirementError) as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.set_policy(
            sender,
            call.dataset,
            call.auto_approve,
            call.max_query_epsilon,
            call.errors,
            call.release,
            requirements,
        )

    # ---- federated learning (see jupyter_syft.federated) ------------------------------------

    async def _SubmitFederatedPlan(
        self, sender: str, role: str, call: m.SubmitFederatedPlan
    ) -> m.RequestInfo:
        """A plan waits for the owner's review, once; with DP all its rounds must fit now."""
        self._require_member(sender, role)
        info = self._table(call.dataset)
        requirements = self._requirements(call.requirements, [call.dataset])
        plan = call.plan
        if len(plan.code.encode()) > MAX_CODE_BYTES:
            raise Refused("invalid", f"code is larger than {MAX_CODE_BYTES} bytes")
        try:
            check_code(plan.code, plan.function_name)
            dp = check_plan(plan, info.schema, info.rows)
            if dp is not None:
                await trio.to_thread.run_sync(noise_multiplier, dp, info.rows)
        except (CodeError, PlanError, TrainingError) as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.add_federated_plan(sender, call.dataset, plan, dp, requirements)

    async def _FederatedRound(
        self, sender: str, role: str, call: m.FederatedRound
    ) -> m.RequestInfo:
        """Start one round of an approved plan: no review (the plan had it), a DP charge."""
        self._require_member(sender, role)
        plan_info = self._request_for(sender, role, call.plan_id)
        found = self.store.federated_plan(call.plan_id)
        if found is None:
            raise Refused("invalid", f"request {call.plan_id} is not a federated plan")
        if plan_info.requester != sender:
            raise Refused("not_authorised", "only the plan's requester may run its rounds")
        if len(call.weights) > MAX_WEIGHTS_BYTES:
            raise Refused("invalid", f"the weights are larger than {MAX_WEIGHTS_BYTES} bytes")
        try:
            from_safetensors(call.weights)
        except Exception as exc:  # safetensors raises its own error types
            raise Refused("invalid", f"the weights are not a safetensors file: {exc}") from exc
        plan = found[1]
        dp = round_spec(plan) if plan.epsilon or plan.delta else None
        request_id = uuid.uuid4().hex
        path = self.store.paths.round_weights(request_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(call.weights)
        tmp.replace(path)
        try:
            info = self.store.start_federated_round(
                request_id, sender, call.plan_id, call.round, dp
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.notify(call.plan_id)
        await self.on_approved(request_id)
        return info

    # ---- helpers ----------------------------------------------------------------------------

    def _require_member(self, sender: str, role: str) -> None:
        if not role:
            raise Refused("not_authorised", f"{sender} is not a user of this domain")

    def _requirements(self, requirements: list[str], datasets: Iterable[str]) -> list[str]:
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

    def _require_admin(self, sender: str, role: str) -> None:
        if role != "admin":
            raise Refused("not_authorised", f"{sender} is not an admin of this domain")

    def _dataset(self, name: str) -> m.DatasetInfo:
        info = self.store.dataset(name)
        if info is None:
            raise Refused("not_found", f"no dataset named {name!r} on domain {self.name!r}")
        return info

    def _table(self, name: str) -> m.DatasetInfo:
        info = self._dataset(name)
        if info.kind != "table":
            raise Refused("invalid", f"dataset {name!r} is a {info.kind}: DP needs a table")
        return info

    def _request_for(self, sender: str, role: str, request_id: str) -> m.RequestInfo:
        """The request, if the sender may see it: its requester or an admin (invariant 3)."""
        info = self.store.request(request_id)
        if info is None or (info.requester != sender and role != "admin"):
            raise Refused("not_found", f"no request {request_id} of yours on this domain")
        return info

    def _result_vector(self, info: m.RequestInfo) -> np.ndarray:
        """An aggregate-only result, sealed to this node, opened here and nowhere else."""
        assert self.identity is not None  # checked by the caller
        folder = self.store.paths.result_dir(info.request_id)
        contexts = ResultSeal(info.request_id, self.peer_id, info.requester)
        parts = self.store.result_parts(info.request_id)
        try:
            return result_vector(folder, parts, self.identity, contexts)
        except SealError as exc:
            raise Refused("internal", f"the stored result is damaged: {exc}") from exc
        except ValueError as exc:
            raise Refused("invalid", str(exc)) from exc

    def _ticket(self, path: Path, requester: str, size: int) -> m.ArrowData:
        relative = path.relative_to(self.store.paths.root).as_posix()
        return m.ArrowData(ticket=self.issuer.issue("get", relative, requester), nbytes=size)

    def _sealed(self, path: Path, requester: str) -> m.ArrowData:
        """A sealed result piece as it is stored: inline when small, else a Flight ticket."""
        size = path.stat().st_size
        if size > INLINE_BYTES:
            return self._ticket(path, requester, size)
        return m.ArrowData(ipc=path.read_bytes())

    def _arrow(self, path: Path, requester: str) -> m.ArrowData:
        """Small files inline as an Arrow IPC stream; large ones as a Flight ticket."""
        size = path.stat().st_size
        if size > INLINE_BYTES:
            return self._ticket(path, requester, size)
        table = values.read_ipc_file(path)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return m.ArrowData(ipc=sink.getvalue().to_pybytes())

    def _staged_dataset(self, upload: PendingUpload, folder: Path) -> m.DatasetInfo:
        missing = [p for p in ("private.arrow", "mock.arrow") if not (folder / p).exists()]
        if missing:
            raise Refused("invalid", f"upload incomplete: {', '.join(missing)} not received")
        private = values.read_ipc_file(folder / "private.arrow")
        mock = values.read_ipc_file(folder / "mock.arrow")
        try:
            values.check_mock_schema(private.schema, mock.schema)
        except values.SchemaMismatchError as exc:
            raise Refused("invalid", f"mock does not match the private data: {exc}") from exc
        kind, schema, rows = describe(private)
        _, _, mock_rows = describe(mock)
        return m.DatasetInfo(
            upload.dataset,
            upload.description,
            kind,
            schema,
            rows,
            mock_rows,
            upload.public,
            time.time(),
        )

    def _drop_expired_uploads(self) -> None:
        now = time.time()
        for upload_id, upload in list(self._uploads.items()):
            if upload.expires < now:
                del self._uploads[upload_id]
                shutil.rmtree(self.store.paths.staging / upload_id, ignore_errors=True)

    # ---- homomorphic inference (state and checks in jupyter_syft.domain.models) -------------

    async def _CreateModel(self, sender: str, role: str, call: m.CreateModel) -> m.ModelInfo:
        """Publishing a model is the owner's approval: members may then query it, audited."""
        self._require_admin(sender, role)
        if not DATASET_NAME.match(call.name):
            raise Refused("invalid", f"model name {call.name!r}: use 1-64 letters, digits, _.-")
        if self.store.model(call.name) is not None:
            raise Refused("conflict", f"a model named {call.name!r} already exists")
        if call.max_samples < 0:
            raise Refused("invalid", "max_samples must be >= 0 (0 = no limit)")
        try:
            spec = decode_weights(call.weights).spec
        except HEError as exc:
            raise Refused("invalid", str(exc)) from exc
        info = m.ModelInfo(
            call.name,
            call.description,
            spec.features,
            spec.rows,
            spec.outputs,
            spec.depth,
            call.max_samples,
            0,
            time.time(),
        )
        staged = self.store.paths.staging / f"model-{uuid.uuid4().hex}.safetensors"
        staged.write_bytes(call.weights)
        try:
            self.store.add_model(sender, info, staged)
        finally:
            staged.unlink(missing_ok=True)
        return info

    async def _ListModels(self, sender: str, role: str, call: m.ListModels) -> m.ModelList:
        self._require_member(sender, role)
        return m.ModelList(self.store.models(sender))

    async def _GetModelUsage(
        self, sender: str, role: str, call: m.GetModelUsage
    ) -> m.ModelUsageList:
        self._require_admin(sender, role)
        self._model(call.model, sender)
        return m.ModelUsageList(call.model, self.store.model_usage(call.model))

    async def _BeginContextUpload(
        self, sender: str, role: str, call: m.BeginContextUpload
    ) -> m.ContextTicket:
        self._require_member(sender, role)
        if not DIGEST.match(call.digest):
            raise Refused("invalid", "digest must be a SHA-256 in lowercase hex")
        if not 0 < call.nbytes <= MAX_CONTEXT_BYTES:
            raise Refused(
                "invalid", f"a public context holds 1..{MAX_CONTEXT_BYTES} bytes, not {call.nbytes}"
            )
        if self._he.context(call.digest) is not None:
            return m.ContextTicket()
        upload_id = uuid.uuid4().hex
        path = self.store.paths.staging / f"context-{upload_id}.arrow"
        upload = ContextUpload(sender, call.digest, call.nbytes, path, time.time() + UPLOAD_TTL_S)
        self._he.begin_upload(upload_id, upload)
        relative = path.relative_to(self.store.paths.root).as_posix()
        # Arrow counts each batch's offsets too: a little room over the context's own size.
        ticket = self.issuer.issue("put", relative, sender, call.nbytes + 2**16)
        return m.ContextTicket(upload_id, ticket)

    async def _CommitContextUpload(
        self, sender: str, role: str, call: m.CommitContextUpload
    ) -> m.Done:
        self._require_member(sender, role)
        upload = self._he.take_upload(call.upload_id, sender)
        if upload is None:
            raise Refused("not_found", f"no context upload {call.upload_id} in progress")
        try:
            if not upload.path.exists():
                raise Refused("invalid", "the context upload was not received")
            context = await trio.to_thread.run_sync(
                load_context, upload.path, upload.digest, upload.nbytes
            )
        except HEError as exc:
            raise Refused("invalid", str(exc)) from exc
        finally:
            upload.path.unlink(missing_ok=True)
        self._he.keep_context(context)
        self.store.audit(sender, "he_context", context.digest, f"{upload.nbytes} bytes")
        return m.Done()

    async def _PredictEncrypted(
        self, sender: str, role: str, call: m.PredictEncrypted
    ) -> m.EncryptedPrediction:
        """Evaluate on ciphertexts in a worker thread; count and audit only what succeeded."""
        self._require_member(sender, role)
        info = self._model(call.model, sender)
        try:
            header = query_header(call.query)
        except HEError as exc:
            raise Refused("invalid", str(exc)) from exc
        context = self._he.context(header.context_digest)
        if context is None:
            raise Refused(
                "not_found",
                f"public context {header.context_digest} is not on this domain: upload it "
                "(BeginContextUpload) and ask again",
            )
        if info.max_samples and info.samples_used + header.samples > info.max_samples:
            raise Refused(
                "budget_exhausted",
                f"query limit of model {call.model!r} reached: {info.max_samples} samples per "
                f"scientist, {info.samples_used} used, this asks for {header.samples}",
            )
        try:
            model = self._he.model(call.model, self.store.paths.model_file(call.model))
            reply = await trio.to_thread.run_sync(model.predict, context, call.query)
        except HEError as exc:
            raise Refused("invalid", str(exc)) from exc
        try:
            self.store.record_prediction(sender, call.model, header.samples)
        except StoreError as exc:  # a concurrent prediction took the last of the limit
            raise Refused("budget_exhausted", str(exc)) from exc
        return m.EncryptedPrediction(reply)

    def _model(self, name: str, sender: str) -> m.ModelInfo:
        info = self.store.model(name, sender)
        if info is None:
            raise Refused("not_found", f"no model named {name!r} on domain {self.name!r}")
        return info


def result_vector(folder: Path, parts: int, identity: Identity, contexts: ResultSeal) -> np.ndarray:
    """A stored result, sealed to this node (`identity`), as the 1-D numeric vector an
    aggregate-only request must return. The plaintext exists only in this process's memory."""
    manifest = open_sealed((folder / MANIFEST_FILE).read_bytes(), identity, contexts.manifest())
    tables = []
    for i in range(parts):
        sealed = (folder / PART_FILE.format(i)).read_bytes()
        plain = pa.py_buffer(open_sealed(sealed, identity, contexts.part(i)))
        tables.append(pa.ipc.open_file(plain).read_all())
    value = values.decode_result(manifest, tables)
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, list | tuple):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.size == 0:
        raise ValueError(
            "an aggregate request must return a non-empty 1-D vector (numpy array, tensor or "
            f"list of numbers), not {_describe_value(value)}"
        )
    if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"an aggregate request must return int or float values, not {value.dtype}")
    if np.iscomplexobj(value):
        raise ValueError("an aggregate request must return real values, not complex ones")
    if not np.all(np.isfinite(value)) or np.max(np.abs(value)) > MAX_ABS:
        raise ValueError(f"an aggregate request's values must be finite, |x| <= {MAX_ABS:g}")
    return value


def reseal(
    source: Path, target: Path, parts: int, node: Identity, contexts: ResultSeal, recipient: str
) -> None:
    """Open each piece of a result sealed to this node and seal it to `recipient` under the
    same context, chunk by chunk: the plaintext never reaches the disk. Manifest last, as the
    worker writes it (its presence means complete).

    Threat model: as for any result, the node is trusted with it (it computed it); a held
    result reaches only the admin who previews it and, once released, its requester.
    """
    target.mkdir(parents=True)
    public = x25519_public_key(recipient)
    pieces = [(PART_FILE.format(i), contexts.part(i)) for i in range(parts)]
    for name, context in [*pieces, (MANIFEST_FILE, contexts.manifest())]:
        with (source / name).open("rb") as src, (target / name).open("wb") as dst:
            writer = SealingWriter(dst, public, context)
            open_stream(src, writer, node, context)  # type: ignore[arg-type]
            writer.close()


def _nothing() -> None:
    """No files to move: a withheld result is removed after its transaction."""


def _describe_value(value: object) -> str:
    shape = getattr(value, "shape", None)
    return type(value).__name__ + (f" of shape {tuple(shape)}" if shape is not None else "")


def describe(table: pa.Table) -> tuple[str, dict[str, str], int]:
    """Kind, a readable schema and the row count of an asset table."""
    kind = values.table_kind(table.schema)
    if kind == "tensor":
        meta = values.tensor_meta(table.schema)
        shape = meta["shape"]
        return kind, {"shape": json.dumps(shape), "dtype": meta["dtype"]}, shape[0] if shape else 1
    return kind, {f.name: str(f.type) for f in table.schema}, table.num_rows
