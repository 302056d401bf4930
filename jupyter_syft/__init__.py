"""jupyter-syft: remote data science from JupyterLab.

import jupyter_syft as syft
domain = syft.connect("/ip4/127.0.0.1/tcp/PORT/p2p/PEER_ID")   # as a data scientist
owner = syft.admin("path/to/domain-dir")                          # as the data owner
"""

from __future__ import annotations

from jupyter_syft.client.admin import AdminClient, ReviewRequest, open_admin
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import Dataset, DomainClient, RemoteRequest
from jupyter_syft.errors import (
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
    RequestDenied,
    RequestFailed,
    SyftError,
)
from jupyter_syft.identity import whoami


def connect(multiaddr: str) -> DomainClient:
    """Connect to a domain node as this user (identity under $JUPYTER_SYFT_HOME)."""
    return DomainClient(NodeConnection(multiaddr))


admin = open_admin

__all__ = [
    "AdminClient",
    "ConflictError",
    "Dataset",
    "DomainClient",
    "InvalidError",
    "NotAuthorisedError",
    "NotFoundError",
    "RemoteRequest",
    "RequestDenied",
    "RequestFailed",
    "ReviewRequest",
    "SyftError",
    "admin",
    "connect",
    "whoami",
]
