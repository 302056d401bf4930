"""The node's self-signed TLS certificate for the Flight data plane.

No CA is involved: the node sends its certificate to clients over the authenticated libp2p
channel and clients pin exactly that certificate, so a man in the middle on the bulk-data
connection cannot present one of its own. The key file is kept at mode 0600 (a readable key
lets anyone impersonate the node's data plane).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class TlsCert:
    cert_pem: bytes
    key_pem: bytes
    fingerprint: str  # sha256 hex of the DER certificate


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 hex of the DER encoding: what a human compares to check a pinned cert."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def ensure_tls_cert(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TlsCert:
    """Load `directory`/tls-cert.pem and tls-key.pem, creating them on first use.

    ECDSA P-256: pyarrow 26's gRPC also accepts Ed25519, but every TLS stack accepts P-256.
    `hosts` become the subject alternative names (IP addresses or DNS names) the client checks;
    they only matter on creation, an existing pair is reused as it is.
    """
    directory = Path(directory)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = _self_signed(hosts)
        key_path.unlink(missing_ok=True)  # O_EXCL below: never reuse a file with a looser mode
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        cert_path.write_bytes(cert_pem)
    cert_pem = cert_path.read_bytes()
    return TlsCert(cert_pem, key_path.read_bytes(), fingerprint(cert_pem))


def _self_signed(hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jupyter-syft domain node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return cert.public_bytes(Encoding.PEM), key_pem
