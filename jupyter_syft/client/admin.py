"""The data owner's API: upload datasets, manage users, review requests, read the audit log.

It talks to the running node like any client, signed with the owner's identity; the node
checks that identity is an admin, so these calls work from any process on any machine the
owner's key is on, and the node stays the single writer of its store.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, RemoteRequest
from jupyter_syft.client.progress import transfer_progress
from jupyter_syft.domain.store import read_node_info
from jupyter_syft.errors import InvalidError, NotAuthorisedError
from jupyter_syft.identity import whoami
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values


class ReviewRequest(RemoteRequest):
    """A request as its reviewer sees it: the code, who asked, and approve / deny."""

    @property
    def code(self) -> str:
        return self.info.code

    @property
    def requester(self) -> str:
        return self.info.requester

    @property
    def datasets(self) -> dict[str, str]:
        return dict(self.info.inputs)

    def approve(self) -> None:
        self.info = self._connection.call(m.Decide(self.id, approve=True))  # type: ignore[assignment]

    def deny(self, reason: str) -> None:
        self.info = self._connection.call(m.Decide(self.id, approve=False, reason=reason))  # type: ignore[assignment]

    def _repr_html_(self) -> str:
        return (
            super()._repr_html_()
            + f"<br>from <code>{html.escape(self.requester)}</code>"
            + f"<pre>{html.escape(self.code)}</pre>"
        )


class AdminClient(DomainClient):
    """A domain as its owner sees it."""

    request_type = ReviewRequest

    def create_dataset(
        self,
        name: str,
        private: Any,
        mock: Any,
        description: str = "",
        public: bool = False,
    ) -> m.DatasetInfo:
        """Upload `private` and its `mock` (DataFrame, Arrow table, numpy array or tensor).

        The mock must have the private data's schema (for tensors: dtype and shape but for
        the row count); this is checked here, before anything is sent, and again by the node.
        `public` lets strangers see the dataset's metadata and mock (never the private data).
        """
        private_table = values.data_to_table(private)
        mock_table = values.data_to_table(mock)
        try:
            values.check_mock_schema(private_table.schema, mock_table.schema)
        except values.SchemaMismatchError as exc:
            raise InvalidError(f"mock does not match the private data: {exc}") from exc
        tickets = self._connection.call(m.BeginUpload(name, description, public))
        assert isinstance(tickets, m.UploadTickets)
        flight = self._connection.flight
        with transfer_progress(f"uploading {name}", private_table.nbytes) as bar:
            flight.put(tickets.private_ticket, private_table, bar)
        flight.put(tickets.mock_ticket, mock_table)
        return self._connection.call(m.CommitUpload(tickets.upload_id))  # type: ignore[return-value]

    def add_user(self, peer_id: str, role: str = "data_scientist", name: str = "") -> None:
        if role not in ("admin", "data_scientist"):
            raise InvalidError(f"role must be 'admin' or 'data_scientist', not {role!r}")
        self._connection.call(m.AddUser(peer_id, role, name))  # type: ignore[arg-type]

    def users(self) -> list[m.UserInfo]:
        return self._connection.call(m.ListUsers()).users  # type: ignore[union-attr]

    def audit_log(self, limit: int = 100) -> m.AuditLog:
        """The latest entries and whether the whole hash chain verifies."""
        return self._connection.call(m.ReadAudit(limit))  # type: ignore[return-value]


def open_admin(target: str | Path) -> AdminClient:
    """`target` is the node's data dir (on this machine, while it runs) or its multiaddr."""
    if Path(target).is_dir():
        target = read_node_info(Path(target))["multiaddr"]
    client = AdminClient(NodeConnection(str(target)))
    if client.role != "admin":
        raise NotAuthorisedError(
            f"this identity ({whoami()}) is not an admin of domain {client.name!r}"
        )
    return client
