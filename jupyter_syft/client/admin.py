"""The data owner's API: upload datasets, manage users, review requests, read the audit log,
grant privacy budgets and set the DP policy.

It talks to the running node like any client, signed with the owner's identity; the node
checks that identity is an admin, so these calls work from any process on any machine the
owner's key is on, and the node stays the single writer of its store.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import Dataset, DomainClient, RemoteRequest
from jupyter_syft.client.privacy import Budget, Budgets
from jupyter_syft.client.progress import transfer_progress
from jupyter_syft.domain.store import read_node_info
from jupyter_syft.errors import InvalidError, NotAuthorisedError, SyftError
from jupyter_syft.federated.plan import describe_plan
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
        cost = ""
        if self.info.epsilon is not None:
            cost = f"<br>privacy cost: &epsilon; {self.info.epsilon:g}, &delta; {self.info.delta:g}"
        if self.info.plan is not None:
            cost += f"<br>{html.escape(describe_plan(self.info.plan))}"
        return (
            super()._repr_html_()
            + f"<br>from <code>{html.escape(self.requester)}</code>"
            + cost
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

    def create_model(
        self, name: str, model: Any, description: str = "", max_samples: int = 0
    ) -> m.ModelInfo:
        """Serve `model` for homomorphic inference: members send encrypted inputs, the domain
        answers with encrypted outputs, and the weights never leave it.

        `model`: a torch nn.Linear, an nn.Sequential(Linear, square, Linear) or their state
        dict (see jupyter_syft.crypto.he). Publishing is the approval: predictions need no
        review but are audited and counted; `max_samples` caps each scientist's samples in
        all (0 = no limit; outputs reveal a linear model after features + 1 samples).
        """
        from jupyter_syft.domain.models import encode_weights  # loads TenSEAL: only when asked

        try:
            weights, checked = encode_weights(model)
        except SyftError as exc:
            raise InvalidError(str(exc)) from exc
        if hasattr(model, "forward"):
            _check_square_activation(model, checked)
        call = m.CreateModel(name, weights, description, max_samples)
        return self._connection.call(call)  # type: ignore[return-value]

    def model_usage(self, name: str) -> list[m.ModelUsage]:
        """Predictions made with model `name`, per scientist: calls, samples, last time."""
        return self._connection.call(m.GetModelUsage(name)).usage  # type: ignore[union-attr]

    def add_user(self, peer_id: str, role: str = "data_scientist", name: str = "") -> None:
        if role not in ("admin", "data_scientist"):
            raise InvalidError(f"role must be 'admin' or 'data_scientist', not {role!r}")
        self._connection.call(m.AddUser(peer_id, role, name))  # type: ignore[arg-type]

    def users(self) -> list[m.UserInfo]:
        return self._connection.call(m.ListUsers()).users  # type: ignore[union-attr]

    def set_budget(self, peer_id: str, dataset: str, epsilon: float, delta: float = 0.0) -> Budget:
        """Set (not add to) `peer_id`'s total privacy budget on `dataset`.

        ε is spent by every DP query and DP training, δ only by DP training; how they add up
        is in jupyter_syft.privacy.budget. A budget cannot go below what is already spent.
        """
        info = self._connection.call(m.SetBudget(peer_id, dataset, epsilon, delta))
        return Budget(info)  # type: ignore[arg-type]

    def budget(self, dataset: str | Dataset, peer_id: str = "") -> Budget:
        """A user's budget on `dataset` with every charge (yours if `peer_id` is empty)."""
        name = dataset.name if isinstance(dataset, Dataset) else dataset
        [info] = self._connection.call(m.GetBudget(name, peer_id)).budgets  # type: ignore[union-attr]
        return Budget(info)

    def budgets(self, peer_id: str = "") -> Budgets:
        """A user's budgets, by dataset (yours if `peer_id` is empty)."""
        return Budgets(self._connection.call(m.GetBudget("", peer_id)).budgets)  # type: ignore[union-attr]

    def set_policy(
        self, dataset: str, auto_approve: bool = False, max_query_epsilon: float = 1.0
    ) -> m.PolicyInfo:
        """Whether built-in DP queries on `dataset` that fit the scientist's budget run without
        review, and the most ε any one of them may ask for (larger ones are refused)."""
        call = m.SetPolicy(dataset, auto_approve, max_query_epsilon)
        return self._connection.call(call)  # type: ignore[return-value]

    def review(self) -> Any:
        """The approval panel (an ipywidget) for this domain's requests; updates itself."""
        from jupyter_syft.widgets import review

        return review(self)

    def audit_log(self, limit: int = 100) -> m.AuditLog:
        """The latest entries and whether the whole hash chain verifies."""
        return self._connection.call(m.ReadAudit(limit))  # type: ignore[return-value]


def _check_square_activation(module: Any, checked: Any) -> None:
    """The weights alone do not say what sits between two layers: run the module on random
    inputs and refuse it unless it computes what will be served (Linear, x ** 2, Linear)."""
    import numpy as np
    import torch

    x = np.random.default_rng(0).normal(size=(4, checked.spec.features))
    expected = x
    for i, (weight, bias) in enumerate(checked.layers):
        expected = (expected**2 if i else expected) @ weight.T + bias
    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        got = module(torch.as_tensor(x, dtype=dtype)).double().cpu().numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
        raise InvalidError(
            "the model must be a Linear layer, or Linear, x ** 2, Linear: the only activation "
            "served under encryption is the square"
        )


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
