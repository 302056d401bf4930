"""Domains that several test modules share (started by conftest.py's session fixtures)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from nodes import DomainProcess, start_all

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m

WARM_UP = "def warmed_up(df):\n    return 1\n"


@dataclass
class SharedDomain:
    """A running domain that several modules share; `owner` is its admin."""

    node: DomainProcess
    owner: Identity

    def admin(self) -> AdminClient:
        """The owner's client, made per module (each module's client peers stop at its end)."""
        return AdminClient(NodeConnection(self.node.address, self.owner))


@dataclass
class SharedDomains:
    """Domains several modules share, by name. A test may kill one: the next module's
    fixture calls revive()."""

    nodes: dict[str, DomainProcess]
    owners: dict[str, Identity]

    def revive(self) -> None:
        """Restart, side by side, the domains an earlier test killed (same data dirs)."""
        dead = [name for name, node in self.nodes.items() if not running(node)]
        start_all(self.nodes[name] for name in dead)
        for name in dead:
            assert running(self.nodes[name]), f"domain {name} did not restart"
        wait_until_warm([self.admin(name) for name in dead])

    def admin(self, name: str) -> AdminClient:
        """The owner's client, made per module (each module's client peers stop at its end)."""
        return AdminClient(NodeConnection(self.nodes[name].address, self.owners[name]))


def running(node: DomainProcess) -> bool:
    return node.process is not None and node.process.poll() is None


def wait_until_warm(admins: list[AdminClient]) -> None:
    """One trivial job per node, run by its owner: it waits out the workers' warm-up (~4 s of
    imports each), so no module sharing the nodes spends its own tests' time limits on it."""
    requests = []
    for admin in admins:
        if "warm-up" not in admin.datasets:  # a restarted node has it already
            frame = pd.DataFrame({"x": [0.0]})
            admin.create_dataset("warm-up", private=frame, mock=frame)
        info = admin._connection.call(m.SubmitRequest(WARM_UP, "warmed_up", {"df": "warm-up"}))
        admin._connection.call(m.Decide(info.request_id, approve=True))
        requests.append(admin.get_request(info.request_id))
    for request in requests:
        assert request.wait(timeout=90).status == "done", request.info
