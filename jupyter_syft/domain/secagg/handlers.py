"""Secure aggregation: this domain's side of a session for an aggregate-only request;
its result vector is opened only here and leaves only masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import trio

from jupyter_syft.crypto.seal import (
    ResultSeal,
    SealError,
    open_sealed,
)
from jupyter_syft.crypto.secagg import MAX_ABS, SecAggClient, SecAggError
from jupyter_syft.crypto.secagg_messages import BadFrame, open_frame
from jupyter_syft.domain.core import (
    INLINE_BYTES,
    MEMBERS,
    DomainCore,
)
from jupyter_syft.domain.jobs import MANIFEST_FILE, PART_FILE
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values
from jupyter_syft.wire.rpc import Caller, Refused, handles


@dataclass
class AggregationState:
    """A domain's side of one secure-aggregation session, for one aggregate-only request."""

    client: SecAggClient
    vector: np.ndarray | None  # dropped once masked: nothing else needs it


class SecureAggregation:
    def __init__(self, core: DomainCore) -> None:
        self.core = core
        self.store = core.store
        self._aggregations: dict[str, AggregationState] = {}

    @handles(m.SecAggStep, allow=MEMBERS)
    async def sec_agg_step(self, caller: Caller, call: m.SecAggStep) -> m.SecAggFrame:
        """Feed one round's frame to this request's SecAggClient; its signed reply goes back.

        Order, replays, forgeries and wrong sessions are refused by the library's own checks.
        """
        info = self.core.request_for(caller, call.request_id)
        if info.requester != caller.peer_id:
            raise Refused("not_authorised", "only the requester may aggregate a request's result")
        if info.policy != "aggregate":
            raise Refused("invalid", f"request {call.request_id} is not aggregate-only")
        if info.status != "done":
            raise Refused("conflict", f"request {call.request_id} is {info.status}, not done")
        if self.core.identity is None:
            raise Refused("internal", "this node cannot take part in secure aggregation")
        try:
            envelope = open_frame(call.frame)
        except BadFrame as exc:
            raise Refused("invalid", str(exc)) from exc
        state = self._aggregations.get(call.request_id)
        try:
            if envelope.round == 0:
                client = SecAggClient(self.core.identity, call.frame)
                if client.server != caller.peer_id:
                    raise Refused("invalid", "the setup frame is not signed by the requester")
                vector = self._result_vector(info)
                if client.setup.length != len(vector):
                    raise Refused(
                        "invalid",
                        f"the session sums vectors of length {client.setup.length}; "
                        f"this result has length {len(vector)}",
                    )
                self.store.join_aggregation(caller.peer_id, call.request_id, client.session)
                reply = client.advertise_keys()
                self._aggregations[call.request_id] = AggregationState(client, vector)
            elif state is None:
                raise Refused("conflict", "no secure aggregation in progress for this request")
            elif envelope.round == 1:
                reply = state.client.share_keys(call.frame)
            elif envelope.round == 2:
                unmasked, state.vector = state.vector, None  # masked once, even if replayed now
                if unmasked is None:
                    raise Refused("invalid", "this domain already sent its masked input")
                # Masking and signing a long vector takes ~0.1 s per million entries: off the
                # event loop, so the node keeps answering meanwhile.
                reply = await trio.to_thread.run_sync(
                    state.client.masked_input, call.frame, unmasked
                )
                self.store.audit(caller.peer_id, "secagg_masked_input", call.request_id)
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
        ticket = self.core.issuer.issue("get", relative, caller.peer_id)
        return m.SecAggFrame(b"", ticket=ticket, nbytes=len(reply))

    def _masked_input_file(self, request_id: str) -> Path:
        """Where a large signed masked input waits for the aggregator to fetch it."""
        return self.store.paths.result_dir(request_id) / "secagg-masked-input.frame"

    def _result_vector(self, info: m.RequestInfo) -> np.ndarray:
        """An aggregate-only result, sealed to this node, opened here and nowhere else."""
        assert self.core.identity is not None  # checked by the caller
        folder = self.store.paths.result_dir(info.request_id)
        contexts = ResultSeal(info.request_id, self.core.peer_id, info.requester)
        parts = self.store.result_parts(info.request_id)
        try:
            return result_vector(folder, parts, self.core.identity, contexts)
        except SealError as exc:
            raise Refused("internal", f"the stored result is damaged: {exc}") from exc
        except ValueError as exc:
            raise Refused("invalid", str(exc)) from exc


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
    if isinstance(value, int | float | np.number) or (
        isinstance(value, np.ndarray) and value.ndim == 0
    ):
        value = np.asarray(value).reshape(1)  # a number: summed as a vector of one
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.size == 0:
        raise ValueError(
            "an aggregate request must return a number or a non-empty 1-D vector (numpy "
            f"array, tensor or list of numbers), not {_describe_value(value)}"
        )
    if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"an aggregate request must return int or float values, not {value.dtype}")
    if np.iscomplexobj(value):
        raise ValueError("an aggregate request must return real values, not complex ones")
    if not np.all(np.isfinite(value)) or np.max(np.abs(value)) > MAX_ABS:
        raise ValueError(f"an aggregate request's values must be finite, |x| <= {MAX_ABS:g}")
    return value


def _describe_value(value: object) -> str:
    shape = getattr(value, "shape", None)
    return type(value).__name__ + (f" of shape {tuple(shape)}" if shape is not None else "")
