"""Requests: code a scientist submits, the owner's decision, results and what a job
discloses (errors, logs, results held for review).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import msgspec
import trio

from jupyter_syft.crypto.seal import (
    ResultSeal,
    SealError,
    SealingWriter,
    open_stream,
    x25519_public_key,
)
from jupyter_syft.domain.core import (
    ADMIN,
    MAX_CODE_BYTES,
    MEMBERS,
    DomainCore,
)
from jupyter_syft.domain.datasets.handlers import check_distributed
from jupyter_syft.domain.jobs import MANIFEST_FILE, PART_FILE, CodeError, check_code
from jupyter_syft.domain.requests.resources import checked_ask
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import Caller, Refused, handles

MAX_WAIT_S = 60.0
AGGREGATE_ONLY = "an aggregate-only result is released only inside secure aggregation"


class Requests:
    def __init__(self, core: DomainCore) -> None:
        self.core = core
        self.store = core.store
        self._releasing: set[str] = set()  # held results being re-sealed now

    @handles(m.SubmitRequest, allow=MEMBERS)
    async def submit_request(self, caller: Caller, call: m.SubmitRequest) -> m.RequestInfo:
        if len(call.code.encode()) > MAX_CODE_BYTES:
            raise Refused("invalid", f"code is larger than {MAX_CODE_BYTES} bytes")
        if not call.inputs:
            raise Refused("invalid", "a request must read at least one dataset")
        for argument, dataset in call.inputs.items():
            if not argument.isidentifier():
                raise Refused("invalid", f"argument name {argument!r} is not a Python identifier")
            self.core.dataset(dataset)
        check_distributed(call, self.core)
        try:
            check_code(call.code, call.function_name)
        except CodeError as exc:
            raise Refused("invalid", str(exc)) from exc
        requirements = self.core.requirements(call.requirements, call.inputs.values())
        resources = await self._resources(call)
        checked = msgspec.structs.replace(call, requirements=requirements, resources=resources)
        return self.store.add_request(caller.peer_id, checked)

    async def _resources(self, call: m.SubmitRequest) -> m.Resources | None:
        """The resources asked for, if within the caps of every dataset read and the
        executor's largest machine (asked in a thread: a cluster's answer takes a moment)."""
        if call.resources is None or call.resources == m.Resources():
            return None
        capacity = await trio.to_thread.run_sync(self.core.capacity)
        return checked_ask(call.resources, self.store, call.inputs.values(), capacity)

    @handles(m.GetRequest, allow=MEMBERS)
    async def get_request(self, caller: Caller, call: m.GetRequest) -> m.RequestInfo:
        info = self.core.request_for(caller, call.request_id)
        if call.wait_s > 0 and info.status == call.known_status:
            await self.core.changed(call.request_id, min(call.wait_s, MAX_WAIT_S))
            info = self.core.request_for(caller, call.request_id)
        return self.core.disclosed(info, caller)

    @handles(m.ListRequests, allow=MEMBERS)
    async def list_requests(self, caller: Caller, call: m.ListRequests) -> m.RequestList:
        requester = None if caller.role == "admin" else caller.peer_id
        found = self.store.requests(requester, call.status)
        return m.RequestList([self.core.disclosed(info, caller) for info in found])

    @handles(m.FetchResult, allow=MEMBERS)
    async def fetch_result(self, caller: Caller, call: m.FetchResult) -> m.ResultData:
        info = self.core.request_for(caller, call.request_id)
        if info.status != "done":
            raise Refused("conflict", f"request {call.request_id} is {info.status}, not done")
        if info.policy == "aggregate":
            raise Refused("not_authorised", AGGREGATE_ONLY)
        folder = self.store.paths.result_dir(call.request_id)
        manifest = (folder / MANIFEST_FILE).read_bytes()
        count = self.store.result_parts(call.request_id)
        parts = [
            self.core.sealed(folder / PART_FILE.format(i), caller.peer_id) for i in range(count)
        ]
        self.store.audit(caller.peer_id, "fetch_result", call.request_id)
        return m.ResultData(manifest, parts)

    @handles(m.Decide, allow=ADMIN)
    async def decide(self, caller: Caller, call: m.Decide) -> m.RequestInfo:
        current = self.core.request_for(caller, call.request_id)
        if current.policy == "federated" and current.status == "approved" and not call.approve:
            info = self.store.revoke_plan(
                caller.peer_id, call.request_id, call.reason
            )  # no more rounds
            self.core.notify(call.request_id)
            return info
        info = self.store.decide(caller.peer_id, call.request_id, call.approve, call.reason)
        self.core.notify(call.request_id)
        if call.approve:
            await self.core.on_approved(call.request_id)
        return info

    @handles(m.ReleaseError, allow=ADMIN)
    async def release_error(self, caller: Caller, call: m.ReleaseError) -> m.RequestInfo:
        self.core.request_for(caller, call.request_id)
        self.store.release_error(caller.peer_id, call.request_id)
        self.core.notify(call.request_id)
        return self.core.disclosed(self.core.request_for(caller, call.request_id), caller)

    @handles(m.PreviewResult, allow=ADMIN)
    async def preview_result(self, caller: Caller, call: m.PreviewResult) -> m.ResultData:
        """The held result re-sealed to the admin who asks (same contexts, their key)."""
        info = self._held(caller, call.request_id)
        folder = self._preview_dir(call.request_id, caller.peer_id)
        shutil.rmtree(folder, ignore_errors=True)
        parts = self.store.result_parts(call.request_id)
        await self._reseal(info, folder, parts, caller.peer_id)
        self.store.audit(caller.peer_id, "preview_result", call.request_id)
        manifest = (folder / MANIFEST_FILE).read_bytes()
        pieces = [
            self.core.sealed(folder / PART_FILE.format(i), caller.peer_id) for i in range(parts)
        ]
        return m.ResultData(manifest, pieces)

    @handles(m.DecideResult, allow=ADMIN)
    async def decide_result(self, caller: Caller, call: m.DecideResult) -> m.RequestInfo:
        """Release a held result to its requester, atomically, or withhold it for good."""
        info = self._held(caller, call.request_id)
        if not call.release and not call.reason.strip():
            raise Refused("invalid", "withholding a result needs a reason: the scientist sees it")
        folder = self.store.paths.result_dir(call.request_id)
        self._releasing.add(call.request_id)
        try:
            if call.release:
                updated = await self._release(info, folder, caller.peer_id, call.reason)
            else:
                updated = self.store.decide_result(
                    caller.peer_id, call.request_id, False, call.reason, _nothing
                )
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            self._releasing.discard(call.request_id)
        for preview in self.store.paths.staging.glob(f"preview-{call.request_id}-*"):
            shutil.rmtree(preview, ignore_errors=True)
        self.core.notify(call.request_id)
        return updated

    async def _release(
        self, info: m.RequestInfo, folder: Path, actor: str, reason: str
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
            updated = self.store.decide_result(actor, info.request_id, True, reason, swap)
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
        contexts = ResultSeal(info.request_id, self.core.peer_id, info.requester)
        try:
            await trio.to_thread.run_sync(
                reseal, source, target, parts, self.store.identity, contexts, recipient
            )
        except (SealError, OSError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise Refused("internal", f"the held result cannot be opened: {exc}") from exc

    def _held(self, caller: Caller, request_id: str) -> m.RequestInfo:
        info = self.core.request_for(caller, request_id)
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
