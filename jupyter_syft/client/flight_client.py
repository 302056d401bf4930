"""The data scientist's side of the bulk-data plane: Arrow Flight over pinned TLS.

The node's certificate arrives over the authenticated libp2p channel and is the only one
trusted here, so no CA (and no man in the middle with a CA-signed certificate) can stand in for
the node. Tokens come from the node over libp2p too; they are signed with our key just before
use, binding them to us.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from jupyter_syft.errors import SyftError, Unreachable
from jupyter_syft.identity import Identity
from jupyter_syft.wire.tickets import sign_ticket

# Batches of a few MiB stream fastest; one huge batch is slower and holds more memory at once.
BATCH_BYTES = 4 << 20


Progress = Callable[[int], None]


class DataTransferError(SyftError):
    """A download or upload failed or was refused; the message carries the server's reason."""


def _failed(what: str, location: str, exc: flight.FlightError) -> SyftError:
    """An unreachable data plane is `Unreachable` (offline); any other failure says why. A
    certificate that is not the pinned one is not "offline": it is someone else's server."""
    message = f"{what} {location} failed; {_reason(exc)}"
    untrusted = "certificate verify failed" in str(exc)
    if isinstance(exc, flight.FlightUnavailableError) and not untrusted:
        return Unreachable(message)
    return DataTransferError(message)


class FlightDataClient:
    """One cached Flight connection to a domain node's data plane."""

    def __init__(self, location: str, cert_pem: bytes, identity: Identity) -> None:
        # Refuse plaintext: the pinned certificate would be silently ignored, and the data and
        # tickets sent in the clear.
        if not location.startswith("grpc+tls://"):
            raise DataTransferError(f"refusing {location!r}: the data plane must use grpc+tls://")
        self._location = location
        self._identity = identity
        self._client = flight.FlightClient(location, tls_root_certs=cert_pem)

    def get(self, token: bytes, progress: Progress | None = None) -> pa.Table:
        """Download the table a `get` token grants; `progress(nbytes)` after each batch."""
        ticket = flight.Ticket(sign_ticket(token, self._identity))
        try:
            reader = self._client.do_get(ticket)
            if progress is None:
                return reader.read_all()
            batches = []
            for chunk in reader:
                batches.append(chunk.data)
                progress(chunk.data.nbytes)
            return pa.Table.from_batches(batches, schema=reader.schema)
        except flight.FlightError as exc:
            raise _failed("download from", self._location, exc) from exc

    def get_file(
        self, token: bytes, write: Callable[[memoryview], object], progress: Progress | None = None
    ) -> None:
        """Download the raw file a `get` token grants (it arrives as a one-column binary table
        of consecutive slices), passing each slice to `write` as it arrives, without a copy."""
        ticket = flight.Ticket(sign_ticket(token, self._identity))
        try:
            reader = self._client.do_get(ticket)
            if reader.schema.types != [pa.binary()]:
                raise DataTransferError(f"{self._location} sent a table, not a file")
            for chunk in reader:
                column = chunk.data.column(0)
                if column.null_count:
                    raise DataTransferError(f"{self._location} sent a file with gaps")
                _, offsets, data = column.buffers()
                bounds = np.frombuffer(offsets, np.int32)
                first, last = bounds[column.offset], bounds[column.offset + len(column)]
                write(memoryview(data)[first:last])
                if progress is not None:
                    progress(int(last - first))
        except flight.FlightError as exc:
            raise _failed("download from", self._location, exc) from exc

    def put(self, token: bytes, table: pa.Table, progress: Progress | None = None) -> None:
        """Upload `table` to the path a `put` token grants, in batches of ~BATCH_BYTES."""
        descriptor = flight.FlightDescriptor.for_command(sign_ticket(token, self._identity))
        rows = max(1, BATCH_BYTES * table.num_rows // table.nbytes) if table.nbytes else None
        try:
            writer, _ = self._client.do_put(descriptor, table.schema)
            with writer:
                for batch in table.to_batches(max_chunksize=rows):
                    writer.write_batch(batch)
                    if progress is not None:
                        progress(batch.nbytes)
        except flight.FlightError as exc:
            raise _failed("upload to", self._location, exc) from exc

    def close(self) -> None:
        self._client.close()


def _reason(exc: flight.FlightError) -> str:
    """The server's message (or why no server was reached), without gRPC's debug context."""
    message = str(exc).split(". Detail:")[0].split(". gRPC client debug")[0]
    if isinstance(exc, flight.FlightUnavailableError):
        prefix = "Flight returned unavailable error, with message: "
        return "could not connect: " + message.removeprefix(prefix)
    return "server said: " + message
