"""jupyter-syft: remote data science from JupyterLab.

import jupyter_syft as syft
net = syft.connect(NETWORK_MULTIADDR)                            # a network: search it
domain = net.domain("hospital-a")                                # or a domain, directly:
domain = syft.connect("/ip4/127.0.0.1/tcp/PORT/p2p/PEER_ID")   # as a data scientist
total = syft.aggregate([d1, d2, d3], fn, dataset="diabetes")    # a sum, by secure aggregation
model, history = syft.federated.train(make_model, [d1, d2, d3], "diabetes", "target")
syft.progress(i, n)                        # in a request's code: the scientist sees a bar
owner = syft.admin("path/to/domain-dir")                          # as the data owner
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jupyter_syft.errors import (
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
    RequestDenied,
    RequestFailed,
    ResultWithheld,
    SyftError,
)

if TYPE_CHECKING:
    from jupyter_syft.client.admin import AdminClient, ReviewRequest
    from jupyter_syft.client.aggregate import aggregate
    from jupyter_syft.client.domain import Dataset, DomainClient, RemoteRequest
    from jupyter_syft.client.network import NetworkClient

# Imported on first use: libp2p, pyarrow and pandas cost ~1 s, and a kernel or a CLI command
# should not pay for what it does not touch.
_LAZY = {
    "aggregate": ("jupyter_syft.client.aggregate", "aggregate"),
    "AdminClient": ("jupyter_syft.client.admin", "AdminClient"),
    "ReviewRequest": ("jupyter_syft.client.admin", "ReviewRequest"),
    "admin": ("jupyter_syft.client.admin", "open_admin"),
    "Dataset": ("jupyter_syft.client.domain", "Dataset"),
    "DomainClient": ("jupyter_syft.client.domain", "DomainClient"),
    "RemoteRequest": ("jupyter_syft.client.domain", "RemoteRequest"),
    "NetworkClient": ("jupyter_syft.client.network", "NetworkClient"),
    "whoami": ("jupyter_syft.identity", "whoami"),
    "federated": ("jupyter_syft.federated", ""),  # the module itself: syft.federated.train
    "progress": ("jupyter_syft.domain.jobs", "progress"),  # in a request's code: a bar
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'jupyter_syft' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def connect(multiaddr: str) -> NetworkClient | DomainClient:
    """Connect as this user (identity under $JUPYTER_SYFT_HOME) to a network or a domain node.

    A network node serves the network protocol; any other node is taken for a domain.
    """
    from jupyter_syft.client.connection import NodeConnection
    from jupyter_syft.client.domain import DomainClient
    from jupyter_syft.client.network import NetworkClient, NetworkConnection
    from jupyter_syft.p2p import ProtocolNotSupported

    try:
        return NetworkClient(NetworkConnection(multiaddr))
    except ProtocolNotSupported:
        return DomainClient(NodeConnection(multiaddr))


__all__ = [
    "AdminClient",
    "ConflictError",
    "Dataset",
    "DomainClient",
    "InvalidError",
    "NetworkClient",
    "NotAuthorisedError",
    "NotFoundError",
    "RemoteRequest",
    "RequestDenied",
    "RequestFailed",
    "ResultWithheld",
    "ReviewRequest",
    "SyftError",
    "admin",
    "aggregate",
    "connect",
    "federated",
    "progress",
    "whoami",
]
