"""The bulk-data plane: TLS certificate, single-use tickets, Flight server and client.

End-to-end tests talk to a FlightDataServer in another process: this file, run as a script,
is that process. It prints its location and certificate, then issues one ticket per JSON line
read from stdin (as the node would over libp2p), and stops when stdin closes.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_syft.client.flight_client import DataTransferError, FlightDataClient
from jupyter_syft.domain.flight_server import FlightDataServer
from jupyter_syft.identity import Identity
from jupyter_syft.tls import ensure_tls_cert, fingerprint
from jupyter_syft.wire.tickets import Grant, TicketError, TicketIssuer, sign_ticket

MiB = 1 << 20


# ---- the server process ------------------------------------------------------------------


def _serve(data_root: Path, tls_dir: Path) -> None:
    issuer = TicketIssuer()
    server = FlightDataServer(data_root, ensure_tls_cert(tls_dir), issuer)
    server.start()
    cert = (tls_dir / "tls-cert.pem").read_text()
    print(json.dumps({"location": server.location, "port": server.port, "cert": cert}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        issuer.default_ttl_s = request.get("ttl", 120.0)
        try:
            token = issuer.issue(
                request["action"], request["path"], request["requester"], request["max_bytes"]
            )
            print(json.dumps({"token": token.hex()}), flush=True)
        except TicketError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
    server.stop()


class ServerProcess:
    """Handle on the server process: its location, certificate and ticket desk."""

    def __init__(self, data_root: Path, tls_dir: Path, log: Path) -> None:
        self.data_root = data_root
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(data_root), str(tls_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdin and self.process.stdout
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        line = self._stdout.readline()
        if not line:
            self.process.wait()
            pytest.fail(f"Flight server process failed to start:\n{log.read_text()}")
        hello = json.loads(line)
        self.location: str = hello["location"]
        self.port: int = hello["port"]
        self.cert_pem: bytes = hello["cert"].encode()

    def issue(
        self, action: str, path: str, requester: str, max_bytes: int = 0, ttl: float = 120.0
    ) -> bytes:
        request = {
            "action": action,
            "path": path,
            "requester": requester,
            "max_bytes": max_bytes,
            "ttl": ttl,
        }
        self._stdin.write(json.dumps(request) + "\n")
        self._stdin.flush()
        answer = json.loads(self._stdout.readline())
        if "error" in answer:
            raise TicketError(answer["error"])
        return bytes.fromhex(answer["token"])

    def stop(self) -> None:
        self._stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("flight")
    (base / "data").mkdir()
    process = ServerProcess(base / "data", base / "tls", base / "server.log")
    yield process
    process.stop()
    assert process.process.returncode == 0, (base / "server.log").read_text()


@pytest.fixture(scope="module")
def me() -> Identity:
    return Identity.generate()


@pytest.fixture
def client(server: ServerProcess, me: Identity) -> Iterator[FlightDataClient]:
    c = FlightDataClient(server.location, server.cert_pem, me)
    yield c
    c.close()


def write_ipc(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def sample_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, None, 4], pa.int64()),
            "name": ["ada", "bob", None, "éve"],
            "score": [0.5, float("inf"), -1.0, 1e300],
            "tags": [["a"], [], None, ["b", "c"]],
        }
    )


def big_table(mib: int) -> pa.Table:
    return pa.table({"x": np.random.default_rng(mib).random(mib * MiB // 8)})


def assert_still_serving(server: ServerProcess, client: FlightDataClient, me: Identity) -> None:
    write_ipc(server.data_root / "alive.arrow", sample_table())
    assert client.get(server.issue("get", "alive.arrow", me.peer_id)).equals(sample_table())


def leftovers(server: ServerProcess) -> list[str]:
    return sorted(p.name for p in server.data_root.iterdir() if p.name != "alive.arrow")


# ---- round trips ---------------------------------------------------------------------------


def test_put_then_get_round_trips_a_table(server, client, me) -> None:
    table = sample_table()
    client.put(server.issue("put", "sub/dir/sample.arrow", me.peer_id), table)
    stored = pa.ipc.open_file(pa.memory_map(str(server.data_root / "sub/dir/sample.arrow")))
    assert stored.read_all().equals(table)
    assert client.get(server.issue("get", "sub/dir/sample.arrow", me.peer_id)).equals(table)


def test_large_column_round_trips_in_batches_of_a_few_mib(server, client, me) -> None:
    table = big_table(50)
    write_ipc(server.data_root / "big.arrow", table)  # one 50 MiB batch on disk
    got = client.get(server.issue("get", "big.arrow", me.peer_id))
    assert got.equals(table)
    assert max(b.nbytes for b in got.to_batches()) <= 4 * MiB

    client.put(server.issue("put", "big-up.arrow", me.peer_id), table)
    reader = pa.ipc.open_file(pa.memory_map(str(server.data_root / "big-up.arrow")))
    assert reader.read_all().equals(table)
    assert max(reader.get_batch(i).nbytes for i in range(reader.num_record_batches)) <= 4 * MiB
    assert client.get(server.issue("get", "big-up.arrow", me.peer_id)).equals(table)


def test_put_replaces_an_existing_file_whole(server, client, me) -> None:
    client.put(server.issue("put", "replace.arrow", me.peer_id), sample_table())
    client.put(server.issue("put", "replace.arrow", me.peer_id), big_table(1))
    assert client.get(server.issue("get", "replace.arrow", me.peer_id)).equals(big_table(1))
    assert not list(server.data_root.glob("*.tmp"))


# ---- refusals: each is clear to the client, and the server keeps serving --------------------


def test_a_ticket_works_once(server, client, me) -> None:
    write_ipc(server.data_root / "once.arrow", sample_table())
    token = server.issue("get", "once.arrow", me.peer_id)
    client.get(token)
    with pytest.raises(DataTransferError, match="server said: ticket already used"):
        client.get(token)
    assert_still_serving(server, client, me)


def test_an_expired_ticket_is_refused(server, client, me) -> None:
    write_ipc(server.data_root / "old.arrow", sample_table())
    token = server.issue("get", "old.arrow", me.peer_id, ttl=0.05)
    time.sleep(0.1)
    with pytest.raises(DataTransferError, match="server said: ticket expired"):
        client.get(token)
    assert_still_serving(server, client, me)


def test_an_altered_token_is_refused_as_forged(server, client, me) -> None:
    write_ipc(server.data_root / "mine.arrow", sample_table())
    token = server.issue("get", "mine.arrow", me.peer_id)
    altered = token.replace(b"mine.arrow", b"alive.arrow"[:10])  # same length, other file
    assert altered != token
    with pytest.raises(DataTransferError, match="server said: forged ticket"):
        client.get(altered)
    with pytest.raises(DataTransferError, match="server said: forged ticket"):
        client.get(TicketIssuer().issue("get", "mine.arrow", me.peer_id))  # another node's
    assert_still_serving(server, client, me)


def test_a_ticket_signed_by_another_peer_is_refused(server, client, me) -> None:
    write_ipc(server.data_root / "theirs.arrow", sample_table())
    token = server.issue("get", "theirs.arrow", me.peer_id)  # leaked to a thief
    thief = FlightDataClient(server.location, server.cert_pem, Identity.generate())
    with pytest.raises(DataTransferError, match="server said: wrong requester"):
        thief.get(token)
    thief.close()
    assert client.get(token).equals(sample_table())  # the thief did not burn it


def test_a_get_ticket_cannot_upload(server, client, me) -> None:
    write_ipc(server.data_root / "keep.arrow", sample_table())
    token = server.issue("get", "keep.arrow", me.peer_id)
    with pytest.raises(DataTransferError, match="server said: ticket is for 'get', not 'put'"):
        client.put(token, big_table(1))
    assert client.get(token).equals(sample_table())


@pytest.mark.parametrize("path", ["../outside.arrow", "a/../../outside.arrow", "/etc/passwd", ""])
def test_a_path_outside_the_root_is_refused_at_issue(server, me, path) -> None:
    with pytest.raises(TicketError, match="path outside root"):
        server.issue("get", path, me.peer_id)


def test_a_symlink_out_of_the_root_is_refused(server, client, me, tmp_path) -> None:
    write_ipc(tmp_path / "secret.arrow", sample_table())
    (server.data_root / "escape").symlink_to(tmp_path)
    try:
        with pytest.raises(DataTransferError, match="server said: path outside root"):
            client.get(server.issue("get", "escape/secret.arrow", me.peer_id))
        with pytest.raises(DataTransferError, match="server said: path outside root"):
            client.put(server.issue("put", "escape/planted.arrow", me.peer_id), sample_table())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.arrow"]
        assert_still_serving(server, client, me)
    finally:
        (server.data_root / "escape").unlink()


@pytest.mark.parametrize("mib", [1, 20])
def test_an_upload_over_its_limit_is_refused_and_leaves_no_file(server, client, me, mib) -> None:
    before = leftovers(server)
    token = server.issue("put", f"limited-{mib}.arrow", me.peer_id, max_bytes=MiB // 2)
    with pytest.raises(DataTransferError, match=r"server said: .*exceeds its limit of 524288"):
        client.put(token, big_table(mib))
    assert leftovers(server) == before
    assert_still_serving(server, client, me)


def test_an_upload_within_its_limit_is_stored(server, client, me) -> None:
    client.put(server.issue("put", "fits.arrow", me.peer_id, max_bytes=2 * MiB), big_table(1))
    assert (server.data_root / "fits.arrow").exists()


def test_missing_or_unreadable_data_is_reported(server, client, me) -> None:
    with pytest.raises(DataTransferError, match=r"server said: no data at 'nothing\.arrow'"):
        client.get(server.issue("get", "nothing.arrow", me.peer_id))
    (server.data_root / "junk.arrow").write_bytes(b"not arrow")
    with pytest.raises(DataTransferError, match=r"'junk\.arrow' is not a readable Arrow IPC file"):
        client.get(server.issue("get", "junk.arrow", me.peer_id))
    (server.data_root / "junk.arrow").unlink()
    assert_still_serving(server, client, me)


# ---- TLS: only the pinned certificate, never plaintext -------------------------------------


def test_a_client_pinned_to_another_certificate_cannot_connect(
    server, client, me, tmp_path
) -> None:
    write_ipc(server.data_root / "pinned.arrow", sample_table())
    token = server.issue("get", "pinned.arrow", me.peer_id)
    other = ensure_tls_cert(tmp_path / "other")
    impostor_pin = FlightDataClient(server.location, other.cert_pem, me)
    with pytest.raises(DataTransferError, match=r"could not connect: .*certificate verify failed"):
        impostor_pin.get(token)
    impostor_pin.close()
    assert client.get(token).equals(sample_table())  # the ticket never reached the server


def test_plaintext_and_unpinned_clients_cannot_connect(server, me) -> None:
    with pytest.raises(DataTransferError, match="must use grpc\\+tls"):
        FlightDataClient(f"grpc://127.0.0.1:{server.port}", server.cert_pem, me)
    options = flight.FlightCallOptions(timeout=10)
    for location in (f"grpc://127.0.0.1:{server.port}", server.location):  # no pin: system CAs
        raw = flight.FlightClient(location)
        with pytest.raises(flight.FlightUnavailableError):
            raw.do_get(flight.Ticket(b"x"), options).read_all()
        raw.close()


# ---- tickets, in process -------------------------------------------------------------------

ALICE = Identity.generate()


def signed(issuer: TicketIssuer, action: str = "get", path: str = "d/t.arrow", **kw: Any) -> bytes:
    return sign_ticket(issuer.issue(action, path, ALICE.peer_id, **kw), ALICE)


def test_redeem_returns_the_grant_once() -> None:
    issuer = TicketIssuer()
    ticket = signed(issuer, "put", max_bytes=123)
    assert issuer.redeem("put", ticket) == Grant("d/t.arrow", ALICE.peer_id, 123)
    with pytest.raises(TicketError, match="already used"):
        issuer.redeem("put", ticket)


def test_redeem_refuses_with_the_reason() -> None:
    issuer = TicketIssuer()
    with pytest.raises(TicketError, match="ticket is for 'get', not 'put'"):
        issuer.redeem("put", signed(issuer))
    stale = TicketIssuer(default_ttl_s=-1)
    with pytest.raises(TicketError, match="expired"):
        stale.redeem("get", signed(stale))
    with pytest.raises(TicketError, match="forged"):
        issuer.redeem("get", signed(TicketIssuer()))
    with pytest.raises(TicketError, match="wrong requester"):
        issuer.redeem(
            "get", sign_ticket(issuer.issue("get", "t", ALICE.peer_id), Identity.generate())
        )
    with pytest.raises(TicketError, match="wrong requester"):
        issuer.redeem("get", sign_ticket(issuer.issue("get", "t", "not-a-peer-id"), ALICE))
    with pytest.raises(TicketError, match="malformed"):
        issuer.redeem("get", b"\x00garbage")
    with pytest.raises(TicketError, match="forged"):
        issuer.redeem("get", msgspec.msgpack.encode([b"short", b"sig"]))
    with pytest.raises(TicketError, match="malformed"):
        issuer.issue("delete", "t", ALICE.peer_id)


def test_a_ticket_redeemed_from_many_threads_succeeds_once() -> None:
    issuer = TicketIssuer()
    ticket = signed(issuer)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def redeem() -> None:
        barrier.wait()
        try:
            issuer.redeem("get", ticket)
            outcomes.append("ok")
        except TicketError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["ticket already used"] * 7


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_to_a_signed_ticket_is_refused(data: st.DataObject) -> None:
    issuer = TicketIssuer()
    ticket = signed(issuer, "put", max_bytes=1000)
    index = data.draw(st.integers(0, len(ticket) - 1))
    delta = data.draw(st.integers(1, 255))
    changed = bytearray(ticket)
    changed[index] ^= delta
    with pytest.raises(TicketError):
        issuer.redeem("put", bytes(changed))
    issuer.redeem("put", ticket)  # the original was not burned by the attempt


# ---- TLS certificate -----------------------------------------------------------------------


def test_tls_cert_is_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    first = ensure_tls_cert(tmp_path / "tls")
    assert stat.S_IMODE((tmp_path / "tls/tls-key.pem").stat().st_mode) == 0o600
    assert ensure_tls_cert(tmp_path / "tls") == first
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    der = cert.public_bytes(Encoding.DER)
    assert first.fingerprint == fingerprint(first.cert_pem) == hashlib.sha256(der).hexdigest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ensure_tls_cert(tmp_path / "other").fingerprint != first.fingerprint


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), Path(sys.argv[2]))
