"""The data owner's API: upload datasets, manage users, review requests, read the audit log,
grant privacy budgets and set the DP policy.

It talks to the running node like any client, signed with the owner's identity; the node
checks that identity is an admin, so these calls work from any process on any machine the
owner's key is on, and the node stays the single writer of its store.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import Dataset, DomainClient, RemoteRequest
from jupyter_syft.client.privacy import Budget, Budgets
from jupyter_syft.client.progress import transfer_progress
from jupyter_syft.errors import InvalidError, NotAuthorisedError, SyftError
from jupyter_syft.federated.plan import describe_plan
from jupyter_syft.identity import whoami
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values
from jupyter_syft.wire.node_info import read_node_info
from jupyter_syft.wire.resources import ResourceError, check_resources, resources_line


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
        self.info = self._connection.call(m.Decide(self.id, approve=True))

    def deny(self, reason: str) -> None:
        self.info = self._connection.call(m.Decide(self.id, approve=False, reason=reason))

    @property
    def error(self) -> str:
        """The whole error text of a failed job (the owner always sees it)."""
        return self.info.error_full or self.info.error

    @property
    def scientist_error(self) -> str:
        """What the scientist sees of the failure until you release it."""
        return self.info.error

    def release_error(self) -> None:
        """Let the scientist read this failed job's full error and its log (audited)."""
        self.info = self._connection.call(m.ReleaseError(self.id))

    def result_preview(self) -> Any:
        """The result of a request awaiting your release, opened here with your key; the
        scientist gets it only once you `release_result()`."""
        data = self._connection.call(m.PreviewResult(self.id))
        return self._open(data)

    def release_result(self) -> None:
        """Send the held result to the scientist (re-sealed to their key by the domain)."""
        self.info = self._connection.call(m.DecideResult(self.id, release=True))

    def withhold_result(self, reason: str) -> None:
        """Keep the held result from the scientist for good; they see `reason`."""
        call = m.DecideResult(self.id, release=False, reason=reason)
        self.info = self._connection.call(call)

    def _repr_html_(self) -> str:
        cost = ""
        if self.info.epsilon is not None:
            cost = f"<br>privacy cost: &epsilon; {self.info.epsilon:g}, &delta; {self.info.delta:g}"
        if self.info.plan is not None:
            cost += f"<br>{html.escape(describe_plan(self.info.plan))}"
        if self.info.requirements:
            needs = html.escape(", ".join(self.info.requirements))
            cost += f"<br>requirements (built from the package index): <code>{needs}</code>"
        cost += f"<br>{html.escape(resources_line(self.info))}"
        said = ""
        if self.info.error_full:
            said += f"<br>error (full):<pre>{html.escape(self.info.error_full)}</pre>"
        if self.info.log:
            said += f"<br>log:<pre>{html.escape(self.info.log)}</pre>"
        return (
            super()._repr_html_()
            + f"<br>from <code>{html.escape(self.requester)}</code>"
            + cost
            + f"<pre>{html.escape(self.code)}</pre>"
            + said
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
        location: str = "",
        partition_rows: int = 0,
    ) -> m.DatasetInfo:
        """Upload `private` and its `mock` (DataFrame, Arrow table, numpy array or tensor).

        The mock must have the private data's schema (for tensors: dtype and shape but for
        the row count); this is checked here, before anything is sent, and again by the node.
        `public` lets strangers see the dataset's metadata and mock (never the private data).
        `location`: a folder the domain's cluster shares (a path or `file://` URI; an
        S3-compatible `s3://` URI goes through the same pyarrow.fs code, untested here), where
        the domain writes a table as partitioned Parquet files of at most `partition_rows`
        rows (0: about 64 MiB each) in a folder named after the dataset, so requests may take
        it as a ray.data Dataset (`ds.distributed()`). Default: the domain's `--storage`, else
        its data dir. The upload itself still goes to the domain; the mock stays there.
        """
        private_table = values.data_to_table(private)
        mock_table = values.data_to_table(mock)
        try:
            values.check_mock_schema(private_table.schema, mock_table.schema)
        except values.SchemaMismatchError as exc:
            raise InvalidError(f"mock does not match the private data: {exc}") from exc
        if location and values.table_kind(private_table.schema) != "table":
            raise InvalidError(
                "only tables are stored as partitions at a location: give a tensor no location"
            )
        call = m.BeginUpload(name, description, public, location, partition_rows)
        tickets = self._connection.call(call)
        assert isinstance(tickets, m.UploadTickets)
        flight = self._connection.flight
        with transfer_progress(f"uploading {name}", private_table.nbytes) as bar:
            flight.put(tickets.private_ticket, private_table, bar)
        flight.put(tickets.mock_ticket, mock_table)
        return self._connection.call(m.CommitUpload(tickets.upload_id))

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
        from jupyter_syft.crypto.he_formats import encode_weights  # loads TenSEAL: when asked

        try:
            weights, checked = encode_weights(model)
        except SyftError as exc:
            raise InvalidError(str(exc)) from exc
        if hasattr(model, "forward"):
            _check_square_activation(model, checked)
        call = m.CreateModel(name, weights, description, max_samples)
        return self._connection.call(call)

    def model_usage(self, name: str) -> list[m.ModelUsage]:
        """Predictions made with model `name`, per scientist: calls, samples, last time."""
        return self._connection.call(m.GetModelUsage(name)).usage

    def add_user(self, peer_id: str, role: m.Role = "data_scientist", name: str = "") -> None:
        if role not in ("admin", "data_scientist"):
            raise InvalidError(f"role must be 'admin' or 'data_scientist', not {role!r}")
        self._connection.call(m.AddUser(peer_id, role, name))

    def remove_user(self, peer_id: str) -> None:
        """Take `peer_id`'s access away; their requests and audit entries stay."""
        self._connection.call(m.RemoveUser(peer_id))

    def users(self) -> list[m.UserInfo]:
        return self._connection.call(m.ListUsers()).users

    def set_budget(self, peer_id: str, dataset: str, epsilon: float, delta: float = 0.0) -> Budget:
        """Set (not add to) `peer_id`'s total privacy budget on `dataset`.

        ε is spent by every DP query and DP training, δ only by DP training; how they add up
        is in jupyter_syft.privacy.budget. A budget cannot go below what is already spent.
        """
        info = self._connection.call(m.SetBudget(peer_id, dataset, epsilon, delta))
        return Budget(info)

    def budget(self, dataset: str | Dataset, peer_id: str = "") -> Budget:
        """A user's budget on `dataset` with every charge (yours if `peer_id` is empty)."""
        name = dataset.name if isinstance(dataset, Dataset) else dataset
        [info] = self._connection.call(m.GetBudget(name, peer_id)).budgets
        return Budget(info)

    def budgets(self, peer_id: str = "") -> Budgets:
        """A user's budgets, by dataset (yours if `peer_id` is empty)."""
        return Budgets(self._connection.call(m.GetBudget("", peer_id)).budgets)

    def set_policy(
        self,
        dataset: str | Dataset,
        auto_approve: bool | None = None,
        max_query_epsilon: float | None = None,
        errors: m.ErrorPolicy | None = None,
        release: m.ReleasePolicy | None = None,
        requirements: Literal["any", "none"] | Iterable[str] | None = None,
        max_cpus: float | None = None,
        max_gpus: int | None = None,
        max_memory_mb: int | None = None,
    ) -> m.PolicyInfo:
        """Change `dataset`'s policy; what you leave out stays as it is.

        `auto_approve`: built-in DP queries that fit the scientist's budget run without
        review; `max_query_epsilon`: the most ε one may ask for (larger ones are refused).
        `errors="full"`: scientists see failed jobs' full errors and every job's log without
        your release (default "redacted": exception type and their code's lines only).
        `release="after_review"`: each result waits for you to look at it and release or
        withhold it (default "on_approval"). A request reading several datasets gets the
        strictest of their policies.
        `requirements`: which packages requests may declare, "any" (the default), "none", or
        a list of package names (any version); others are refused at submission.
        `max_cpus`, `max_gpus`, `max_memory_mb`: the most one request may ask for (0: no cap
        beyond the executor's largest machine); a request asking for more is refused.
        """
        name = dataset.name if isinstance(dataset, Dataset) else dataset
        if errors not in (None, "redacted", "full"):
            raise InvalidError(f"errors must be 'redacted' or 'full', not {errors!r}")
        if release not in (None, "on_approval", "after_review"):
            raise InvalidError(f"release must be 'on_approval' or 'after_review', not {release!r}")
        if isinstance(requirements, str) and requirements not in ("any", "none"):
            raise InvalidError(
                f"requirements must be 'any', 'none' or a list of package names, not "
                f"{requirements!r}"
            )
        allowed: m.RequirementsPolicy | None = None
        if isinstance(requirements, str):
            allowed = "any" if requirements == "any" else "none"
        elif requirements is not None:
            allowed = [str(package) for package in requirements]
        caps = (max_cpus, max_gpus, max_memory_mb)
        try:
            check_resources(m.Resources(*(cap or 0 for cap in caps)), "the caps")  # type: ignore[arg-type]
        except ResourceError as exc:
            raise InvalidError(str(exc)) from None
        call = m.SetPolicy(name, auto_approve, max_query_epsilon, errors, release, allowed, *caps)
        return self._connection.call(call)

    def review(self) -> Any:
        """The approval panel (an ipywidget) for this domain's requests; updates itself."""
        from jupyter_syft.widgets import review

        return review(self)

    def audit_log(self, limit: int = 100) -> m.AuditLog:
        """The latest entries and whether the whole hash chain verifies; its signed head is
        kept with your receipts (`jupyter-syft domain verify-audit` checks the log against
        them later)."""
        log = self._connection.call(m.ReadAudit(limit))
        if log.head is not None:
            self._connection.keep_receipts([log.head], "")
        return log


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
        target = read_node_info(Path(target), "domain")["multiaddr"]
    client = AdminClient(NodeConnection(str(target)))
    if client.role != "admin":
        raise NotAuthorisedError(
            f"this identity ({whoami()}) is not an admin of domain {client.name!r}"
        )
    return client
