"""Serving homomorphic inference (jupyter_syft.crypto.he): weights on disk, contexts in memory.

An owner's weights arrive once as safetensors (never a pickle) and stay in
`D/models/NAME.safetensors`. A scientist's public CKKS context (35-53 MB with Galois keys) is
too big for a libp2p frame: it arrives over Flight `put` as an Arrow table of byte chunks and
is kept in memory by its SHA-256 digest, a few at a time; after an eviction or a node restart
the client is told to upload it again. The handlers are in `handlers.py`; evaluation runs in a
worker thread, off the event loop.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pyarrow as pa

from jupyter_syft.crypto.he import EncryptedModel, EncryptedQuery, HEError, PublicContext
from jupyter_syft.crypto.he_formats import decode_weights

CACHED_CONTEXTS = 4  # each holds tens of MB of evaluation keys in memory
DIGEST = re.compile(r"^[0-9a-f]{64}$")


def load_context(path: Path, digest: str, nbytes: int) -> PublicContext:
    """The uploaded context, checked: the announced size and digest, then PublicContext.load."""
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise HEError(f"the context upload is not readable: {exc}") from exc
    if table.schema.names != ["chunk"] or table.schema.field("chunk").type != pa.binary():
        raise HEError("the context upload must be one binary column named 'chunk'")
    data = b"".join(table.column("chunk").to_pylist())
    if len(data) != nbytes or hashlib.sha256(data).hexdigest() != digest:
        raise HEError("the uploaded context does not match the announced size and digest")
    return PublicContext.load(data)


def query_header(query: bytes) -> EncryptedQuery:
    """The query's context digest and sample count, read before any evaluation."""
    try:
        return msgspec.msgpack.decode(query, type=EncryptedQuery)
    except msgspec.DecodeError as exc:
        raise HEError(f"malformed EncryptedQuery: {exc}") from exc


@dataclass
class ContextUpload:
    owner: str
    digest: str
    nbytes: int
    path: Path
    expires: float


@dataclass
class HEServing:
    """The node's in-memory state for HE inference: loaded models, contexts, uploads."""

    _models: dict[str, EncryptedModel] = field(default_factory=dict)
    _contexts: OrderedDict[str, PublicContext] = field(default_factory=OrderedDict)
    _uploads: dict[str, ContextUpload] = field(default_factory=dict)

    def model(self, name: str, path: Path) -> EncryptedModel:
        """The model from its safetensors file, loaded once."""
        if name not in self._models:
            self._models[name] = decode_weights(path.read_bytes())
        return self._models[name]

    def context(self, digest: str) -> PublicContext | None:
        context = self._contexts.get(digest)
        if context is not None:
            self._contexts.move_to_end(digest)
        return context

    def keep_context(self, context: PublicContext) -> None:
        """Cache a context, dropping the least recently used beyond CACHED_CONTEXTS."""
        self._contexts[context.digest] = context
        self._contexts.move_to_end(context.digest)
        while len(self._contexts) > CACHED_CONTEXTS:
            self._contexts.popitem(last=False)

    def begin_upload(self, upload_id: str, upload: ContextUpload) -> None:
        """One pending upload per scientist: a new one replaces (and deletes) the previous."""
        now = time.time()
        for key, pending in list(self._uploads.items()):
            if pending.owner == upload.owner or pending.expires < now:
                del self._uploads[key]
                pending.path.unlink(missing_ok=True)
        self._uploads[upload_id] = upload

    def take_upload(self, upload_id: str, owner: str) -> ContextUpload | None:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.owner != owner:
            return None
        return self._uploads.pop(upload_id)
