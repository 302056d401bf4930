"""Participant identities: one long-lived Ed25519 key per person or node.

The key's libp2p peer ID is the participant's name on the wire. Accounts, roles and requests
are bound to it, so the key file is created once, kept with mode 0600, and refused when other
users could read it (a readable key lets anyone act as its owner).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

HOME_ENV = "JUPYTER_SYFT_HOME"
USER_KEY_FILE = "identity.key"


class IdentityError(Exception):
    """A key file is missing, unreadable, malformed or exposed."""


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair and the libp2p peer ID derived from it."""

    private_key: Ed25519PrivateKey
    key_pair: KeyPair
    peer_id: str

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> Identity:
        seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        key_pair = create_new_key_pair(seed)
        return cls(private_key, key_pair, ID.from_pubkey(key_pair.public_key).to_base58())

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_private_key(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


def syft_home() -> Path:
    """The user's jupyter-syft folder: `$JUPYTER_SYFT_HOME`, else `~/.jupyter-syft`."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".jupyter-syft")


def load_or_create(path: Path) -> Identity:
    """Load the key at `path`, creating it (mode 0600) on first use."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        identity = Identity.generate()
        pem = identity.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return identity
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"key file {path} has mode {mode:o}: others can read it; run `chmod 600 {path}`"
        )
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"key file {path} is not a PEM Ed25519 private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity.from_private_key(key)


def user_identity() -> Identity:
    """This user's identity, under `syft_home()`."""
    return load_or_create(syft_home() / USER_KEY_FILE)


def whoami() -> str:
    """This user's peer ID: their name on every network and domain."""
    return user_identity().peer_id


def public_key_of(peer_id: str) -> Ed25519PublicKey:
    """The Ed25519 public key embedded in a peer ID (identity multihash)."""
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception as exc:  # base58 and multihash raise many types
        raise IdentityError(f"not a valid peer ID: {peer_id!r}") from exc
    if key is None or key.get_type().name != "Ed25519":
        raise IdentityError(f"peer ID {peer_id!r} does not embed an Ed25519 key")
    raw = key.to_bytes()
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(peer_id: str, data: bytes, signature: bytes) -> bool:
    """True when `signature` over `data` was made by the key behind `peer_id`."""
    try:
        public_key_of(peer_id).verify(signature, data)
    except Exception:
        return False
    return True


def raw_public_key(identity: Identity) -> bytes:
    return identity.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
