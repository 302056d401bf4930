"""The domain node's bulk-data server: Arrow Flight over TLS, gated by single-use tickets.

Clients get tickets over libp2p (see `jupyter_syft.wire.tickets`) and present them signed here.
Data lives under one data root; a ticket names a path relative to it. Arrow IPC files (`.arrow`)
are served as their table. Any other file (a sealed result piece: opaque bytes) is served as a
table of one binary column whose values are consecutive slices of the file, since Flight only
carries Arrow.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from jupyter_syft.tls import TlsCert
from jupyter_syft.wire.tickets import Grant, TicketError, TicketIssuer

log = logging.getLogger(__name__)

# Batches of a few MiB stream fastest; one huge batch is slower and holds more memory at once.
BATCH_BYTES = 4 << 20
FILE_SCHEMA = pa.schema([pa.field("bytes", pa.binary(), nullable=False)])


class FlightDataServer(flight.FlightServerBase):
    """Serves `get` (download a file) and `put` (upload an IPC file) for ticket holders only."""

    def __init__(
        self,
        data_root: Path,
        tls: TlsCert,
        issuer: TicketIssuer,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(
            f"grpc+tls://{host}:{port}",
            tls_certificates=[flight.CertKeyPair(tls.cert_pem, tls.key_pem)],
        )
        self.location = f"grpc+tls://{host}:{self.port}"
        self._root = Path(data_root).resolve()
        self._issuer = issuer
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Serve in a daemon thread; the socket already accepts once the constructor returns."""
        self._thread = threading.Thread(target=self.serve, name="flight-data-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Shut down (waiting for running transfers) and join; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.shutdown()
        if self._thread is not None:
            self._thread.join()

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        grant = self._redeem("get", ticket.ticket, context)
        path = self._resolve(grant)
        try:
            # Memory-mapped and zero-copy: the file is never loaded into memory as a whole.
            mapped = pa.memory_map(str(path))
            if path.suffix != ".arrow":
                return flight.RecordBatchStream(_file_slices(mapped.read_buffer()))
            table = pa.ipc.open_file(mapped).read_all()
        except FileNotFoundError as exc:
            raise flight.FlightServerError(f"no data at {grant.path!r}") from exc
        except (OSError, pa.ArrowInvalid) as exc:
            # Details stay in the node's log: they would show the client the node's file layout.
            log.warning("cannot serve %s: %s", path, exc)
            raise flight.FlightServerError(
                f"{grant.path!r} is not a readable Arrow IPC file"
            ) from exc
        return flight.RecordBatchStream(_rechunked(table))

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        grant = self._redeem("put", descriptor.command, context)
        target = self._resolve(grant)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: readers never see a half-written file. A unique name keeps
        # two concurrent uploads of one path from writing into the same temporary file.
        tmp = target.with_name(f"{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            received = 0
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as out:
                for chunk in reader:
                    received += chunk.data.nbytes
                    # The limit stops a ticket holder from filling the node's disk.
                    if grant.max_bytes and received > grant.max_bytes:
                        raise flight.FlightServerError(
                            f"upload to {grant.path!r} exceeds its limit of {grant.max_bytes} "
                            "bytes; nothing was stored"
                        )
                    out.write_batch(chunk.data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _redeem(
        self, action: str, signed_ticket: bytes, context: flight.ServerCallContext
    ) -> Grant:
        try:
            return self._issuer.redeem(action, signed_ticket)
        except TicketError as exc:
            log.warning("refused %s from %s: %s", action, context.peer(), exc)
            raise flight.FlightUnauthenticatedError(str(exc)) from exc

    def _resolve(self, grant: Grant) -> Path:
        """The absolute file a grant names, refused if it leads outside the data root.

        Issued paths never hold `..`, but a symlink inside the root could still point out of it.
        """
        target = (self._root / grant.path).resolve()
        if self._root not in target.parents:
            raise flight.FlightUnauthenticatedError(f"path outside root: {grant.path!r}")
        return target


def _file_slices(data: pa.Buffer) -> pa.Table:
    """The bytes of `data` as a one-column binary table, ~BATCH_BYTES per row and batch
    (zero-copy slices)."""
    batches = []
    for start in range(0, data.size, BATCH_BYTES):
        piece = data.slice(start, min(BATCH_BYTES, data.size - start))
        offsets = pa.py_buffer(np.array([0, piece.size], dtype=np.int32))
        values = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, piece])
        batches.append(pa.record_batch([values], schema=FILE_SCHEMA))
    return pa.Table.from_batches(batches, schema=FILE_SCHEMA)


def _rechunked(table: pa.Table) -> pa.Table:
    """`table` with batches of at most ~BATCH_BYTES (zero-copy slices)."""
    if table.num_rows == 0 or table.nbytes <= BATCH_BYTES:
        return table
    rows = max(1, BATCH_BYTES * table.num_rows // table.nbytes)
    return pa.Table.from_batches(table.to_batches(max_chunksize=rows), schema=table.schema)
