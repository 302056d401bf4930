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
    """Domains several modules share, by name, each started when a module first needs it. A
    test may kill one: the next module's up() starts it again."""

    nodes: dict[str, DomainProcess]
    owners: dict[str, Identity]

    def up(self, names: list[str]) -> dict[str, DomainProcess]:
        """These domains, running and warmed up: started side by side if not yet started or
        killed by an earlier test (same data dirs)."""
        down = [name for name in names if not running(self.nodes[name])]
        start_all(self.nodes[name] for name in down)
        for name in down:
            assert running(self.nodes[name]), f"domain {name} did not start"
        wait_until_warm([self.admin(name) for name in down])
        return {name: self.nodes[name] for name in names}

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
