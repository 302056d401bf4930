"""Datasets: the owner uploads a private table or tensor with its mock; anyone the
domain lets in lists them and reads mocks (a public dataset's mock: strangers too). A table
may be stored as partitions at a location the cluster shares (`partitions.py`).
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
from jupyter_syft.domain.datasets.partitions import location
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
    location: str  # "" = the domain's --storage, else the data dir
    partition_rows: int


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
        if call.partition_rows < 0:
            raise Refused("invalid", f"partition_rows must be 0 or more, not {call.partition_rows}")
        if call.location:
            location(call.location, self.store.paths.root)  # refuses a bad one: nothing made
        self._drop_expired_uploads()
        upload_id = uuid.uuid4().hex
        (self.store.paths.staging / upload_id).mkdir()
        self._uploads[upload_id] = PendingUpload(
            call.dataset,
            call.description,
            call.public,
            caller.peer_id,
            time.time() + UPLOAD_TTL_S,
            call.location,
            call.partition_rows,
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
            info, private = self._staged_dataset(upload, folder)
            if upload.location and info.kind != "table":
                raise Refused(
                    "invalid",
                    f"{upload.dataset!r} is a tensor: only tables are stored as partitions at a "
                    "location (a tensor stays in the data dir: give no location)",
                )
            uri = upload.location or (self.store.storage if info.kind == "table" else "")
            if uri:
                info = self.store.add_partitioned_dataset(
                    caller.peer_id, info, private, folder / "mock.arrow", uri, upload.partition_rows
                )
            else:
                self.store.add_dataset(
                    caller.peer_id, info, folder / "private.arrow", folder / "mock.arrow"
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return info

    def _staged_dataset(
        self, upload: PendingUpload, folder: Path
    ) -> tuple[m.DatasetInfo, pa.Table]:
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
        info = m.DatasetInfo(
            upload.dataset,
            upload.description,
            kind,
            schema,
            rows,
            mock_rows,
            upload.public,
            time.time(),
        )
        return info, private

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


def check_distributed(call: m.SubmitRequest, core: DomainCore) -> None:
    """Refuse a request that takes as a ray.data Dataset an argument that is not one of its
    inputs, or a dataset not stored as partitions. Not converted on demand: a dataset in the
    data dir is one Arrow file the node already holds whole, and writing partitions for a
    request would copy the owner's data to a place the owner did not choose."""
    if len(set(call.distributed)) != len(call.distributed):
        raise Refused("invalid", f"distributed arguments listed twice: {call.distributed}")
    for argument in call.distributed:
        if argument not in call.inputs:
            known = ", ".join(call.inputs)
            raise Refused(
                "invalid",
                f"distributed argument {argument!r} is not an input of the request ({known})",
            )
        info = core.dataset(call.inputs[argument])
        if not info.partitions:
            raise Refused(
                "invalid",
                f"dataset {info.name!r} is stored as one Arrow file in the domain's data dir, "
                "not as partitions, so it cannot be taken distributed (as a ray.data Dataset): "
                "take it as a table, or ask its owner to store it at a shared location "
                "(create_dataset(..., location=URI) or domain start --storage URI)",
            )
