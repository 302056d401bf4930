"""Datasets: the owner uploads a private table or tensor with its mock; anyone the
domain lets in lists them and reads mocks (a public dataset's mock: strangers too).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from jupyter_syft.domain.core import (
    ADMIN,
    ANYONE,
    DATASET_NAME,
    UPLOAD_TTL_S,
    DomainCore,
)
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values
from jupyter_syft.wire.rpc import Caller, Refused, handles


@dataclass
class PendingUpload:
    dataset: str
    description: str
    public: bool
    owner: str
    expires: float


class Datasets:
    def __init__(self, core: DomainCore) -> None:
        self.core = core
        self.store = core.store
        self._uploads: dict[str, PendingUpload] = {}

    @handles(m.ListDatasets, allow=ANYONE)
    async def list_datasets(self, caller: Caller, call: m.ListDatasets) -> m.DatasetList:
        found = self.store.datasets()
        return m.DatasetList([d for d in found if caller.role or d.public])

    @handles(m.GetMock, allow=ANYONE)
    async def get_mock(self, caller: Caller, call: m.GetMock) -> m.ArrowData:
        info = self.core.dataset(call.dataset)
        if not (caller.role or info.public):
            raise Refused("not_authorised", f"{caller.peer_id} is not a user of this domain")
        self.store.audit(caller.peer_id, "read_mock", call.dataset)
        return self.core.arrow(self.store.mock_path(call.dataset), caller.peer_id)

    @handles(m.BeginUpload, allow=ADMIN)
    async def begin_upload(self, caller: Caller, call: m.BeginUpload) -> m.UploadTickets:
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
            call.dataset, call.description, call.public, caller.peer_id, time.time() + UPLOAD_TTL_S
        )
        limit = self.core.limits.max_upload_bytes
        return m.UploadTickets(
            upload_id,
            self.core.issuer.issue(
                "put", f"staging/{upload_id}/private.arrow", caller.peer_id, limit
            ),
            self.core.issuer.issue("put", f"staging/{upload_id}/mock.arrow", caller.peer_id, limit),
        )

    @handles(m.CommitUpload, allow=ADMIN)
    async def commit_upload(self, caller: Caller, call: m.CommitUpload) -> m.DatasetInfo:
        upload = self._uploads.pop(call.upload_id, None)
        if upload is None or upload.owner != caller.peer_id:
            raise Refused("not_found", f"no upload {call.upload_id} in progress")
        folder = self.store.paths.staging / call.upload_id
        try:
            info = self._staged_dataset(upload, folder)
            self.store.add_dataset(
                caller.peer_id, info, folder / "private.arrow", folder / "mock.arrow"
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return info

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


def describe(table: pa.Table) -> tuple[str, dict[str, str], int]:
    """Kind, a readable schema and the row count of an asset table."""
    kind = values.table_kind(table.schema)
    if kind == "tensor":
        meta = values.tensor_meta(table.schema)
        shape = meta["shape"]
        return kind, {"shape": json.dumps(shape), "dtype": meta["dtype"]}, shape[0] if shape else 1
    return kind, {f.name: str(f.type) for f in table.schema}, table.num_rows
