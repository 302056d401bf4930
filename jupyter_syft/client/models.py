"""Models a domain serves for homomorphic inference: `domain.models["risk"].predict_encrypted(x)`.

The scientist's CKKS keys (jupyter_syft.crypto.he.HEKeys) are made here, one set per identity
and depth, and the secret key never leaves this process. The public half (35-53 MB) goes to
each domain once, over Flight; after that a prediction is one call: ciphertexts out,
ciphertexts back, decrypted here.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import numpy as np

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import NamedMap
from jupyter_syft.client.progress import transfer_progress
from jupyter_syft.crypto.he import SLOTS, HEKeys, ModelSpec, row_slots
from jupyter_syft.crypto.he_formats import context_table
from jupyter_syft.errors import InvalidError, NotFoundError
from jupyter_syft.p2p.framing import MAX_FRAME_BYTES
from jupyter_syft.wire import messages as m

# What a call may carry besides the query: envelope, signature, model name.
CALL_OVERHEAD_BYTES = 2**16

_keys: dict[tuple[str, int], HEKeys] = {}
_uploaded: set[tuple[str, str]] = set()  # (node peer id, context digest)
_lock = threading.Lock()


def he_keys(peer_id: str, depth: int) -> HEKeys:
    """This identity's keys for models of `depth`, made on first use (~1 s) and kept."""
    with _lock:
        keys = _keys.get((peer_id, depth))
        if keys is None:
            keys = _keys[(peer_id, depth)] = HEKeys(depth)
        return keys


def upload_context(connection: NodeConnection, keys: HEKeys) -> None:
    """Send the public context to the node unless it already holds it."""
    if (connection.node_peer_id, keys.digest) in _uploaded:
        return
    public = keys.public_context()
    ticket = connection.call(m.BeginContextUpload(keys.digest, len(public)))
    assert isinstance(ticket, m.ContextTicket)
    if ticket.ticket:
        with transfer_progress("uploading your public HE context", len(public)) as bar:
            connection.flight.put(ticket.ticket, context_table(public), bar)
        connection.call(m.CommitContextUpload(ticket.upload_id))
    _uploaded.add((connection.node_peer_id, keys.digest))


def as_matrix(x: Any) -> np.ndarray:
    """numpy, torch or pandas data as float64: shape (features,) or (samples, features)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "to_numpy"):  # a DataFrame or Series
        x = x.to_numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidError(f"inputs must be numeric: {exc}") from exc


class RemoteModel:
    """A model on a domain: its public shape, and encrypted predictions with your keys."""

    def __init__(self, connection: NodeConnection, info: m.ModelInfo) -> None:
        self._connection = connection
        self.info = info

    name = property(lambda self: self.info.name)
    description = property(lambda self: self.info.description)

    @property
    def spec(self) -> ModelSpec:
        info = self.info
        return ModelSpec(info.features, info.rows, info.outputs, info.depth)

    def predict_encrypted(self, x: Any) -> np.ndarray:
        """The model's outputs on `x`, computed by the domain on ciphertexts it cannot read.

        `x` of shape (features,) gives (outputs,); (samples, features) gives (samples,
        outputs). The first call per domain uploads your public context (a second or so).
        """
        spec = self.spec
        values = as_matrix(x)
        # A sample too wide for the one-ciphertext layout goes as a batch of one.
        single = values.ndim == 1 and row_slots(spec.features, spec.rows) > SLOTS
        keys = he_keys(self._connection.identity.peer_id, spec.depth)
        query = keys.encrypt(values[None, :] if single else values, spec)
        if len(query) + CALL_OVERHEAD_BYTES > MAX_FRAME_BYTES:
            raise InvalidError(
                f"the encrypted query is {len(query) / 2**20:.1f} MiB, over the "
                f"{MAX_FRAME_BYTES // 2**20} MiB frame cap (its size grows with the features)"
            )
        upload_context(self._connection, keys)
        try:
            reply = self._connection.call(m.PredictEncrypted(self.name, query))
        except NotFoundError as exc:
            if keys.digest not in str(exc):
                raise
            # The node dropped the context (restart, eviction): send it again, once.
            _uploaded.discard((self._connection.node_peer_id, keys.digest))
            upload_context(self._connection, keys)
            reply = self._connection.call(m.PredictEncrypted(self.name, query))
        assert isinstance(reply, m.EncryptedPrediction)
        outputs = keys.decrypt(reply.reply)
        return outputs[0] if single else outputs

    def __repr__(self) -> str:
        spec = self.spec
        return (
            f"<Model {self.name}: {spec.features} features -> {spec.outputs} outputs, "
            f"depth {spec.depth}, {self.description!r}>"
        )

    def _repr_html_(self) -> str:
        spec = self.spec
        return (
            f"<b>{html.escape(self.name)}</b> (HE inference: {spec.features} features &rarr; "
            f"{spec.outputs} outputs, depth {spec.depth})<br>{html.escape(self.description)}"
        )


class ModelMap(NamedMap[RemoteModel]):
    """`domain.models["name"]`."""

    kind = "model"
