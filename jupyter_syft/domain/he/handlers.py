"""Homomorphic inference: models the owner publishes, public contexts scientists upload,
predictions on ciphertexts (state and checks in jupyter_syft.domain.he.serving).
"""

from __future__ import annotations

import time
import uuid

import trio

from jupyter_syft.crypto.he import MAX_CONTEXT_BYTES, HEError
from jupyter_syft.crypto.he_formats import decode_weights
from jupyter_syft.domain.core import (
    ADMIN,
    DATASET_NAME,
    MEMBERS,
    UPLOAD_TTL_S,
    DomainCore,
)
from jupyter_syft.domain.he.serving import (
    DIGEST,
    ContextUpload,
    HEServing,
    load_context,
    query_header,
)
from jupyter_syft.domain.store import StoreError
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import Caller, Refused, handles


class EncryptedModels:
    def __init__(self, core: DomainCore) -> None:
        self.core = core
        self.store = core.store
        self._he: HEServing = HEServing()

    @handles(m.CreateModel, allow=ADMIN)
    async def create_model(self, caller: Caller, call: m.CreateModel) -> m.ModelInfo:
        """Publishing a model is the owner's approval: members may then query it, audited."""
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
            self.store.add_model(caller.peer_id, info, staged)
        finally:
            staged.unlink(missing_ok=True)
        return info

    @handles(m.ListModels, allow=MEMBERS)
    async def list_models(self, caller: Caller, call: m.ListModels) -> m.ModelList:
        return m.ModelList(self.store.models(caller.peer_id))

    @handles(m.GetModelUsage, allow=ADMIN)
    async def get_model_usage(self, caller: Caller, call: m.GetModelUsage) -> m.ModelUsageList:
        self._model(call.model, caller.peer_id)
        return m.ModelUsageList(call.model, self.store.model_usage(call.model))

    @handles(m.BeginContextUpload, allow=MEMBERS)
    async def begin_context_upload(
        self, caller: Caller, call: m.BeginContextUpload
    ) -> m.ContextTicket:
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
        upload = ContextUpload(
            caller.peer_id, call.digest, call.nbytes, path, time.time() + UPLOAD_TTL_S
        )
        self._he.begin_upload(upload_id, upload)
        relative = path.relative_to(self.store.paths.root).as_posix()
        # Arrow counts each batch's offsets too: a little room over the context's own size.
        ticket = self.core.issuer.issue("put", relative, caller.peer_id, call.nbytes + 2**16)
        return m.ContextTicket(upload_id, ticket)

    @handles(m.CommitContextUpload, allow=MEMBERS)
    async def commit_context_upload(self, caller: Caller, call: m.CommitContextUpload) -> m.Done:
        upload = self._he.take_upload(call.upload_id, caller.peer_id)
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
        self.store.audit(caller.peer_id, "he_context", context.digest, f"{upload.nbytes} bytes")
        return m.Done()

    @handles(m.PredictEncrypted, allow=MEMBERS)
    async def predict_encrypted(
        self, caller: Caller, call: m.PredictEncrypted
    ) -> m.EncryptedPrediction:
        """Evaluate on ciphertexts in a worker thread; count and audit only what succeeded."""
        info = self._model(call.model, caller.peer_id)
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
            self.store.record_prediction(caller.peer_id, call.model, header.samples)
        except StoreError as exc:  # a concurrent prediction took the last of the limit
            raise Refused("budget_exhausted", str(exc)) from exc
        return m.EncryptedPrediction(reply)

    def _model(self, name: str, peer_id: str) -> m.ModelInfo:
        info = self.store.model(name, peer_id)
        if info is None:
            raise Refused("not_found", f"no model named {name!r} on domain {self.core.name!r}")
        return info
