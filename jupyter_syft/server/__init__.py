"""The jupyter-server extension behind the Syft sidebar (enabled by `pip install`).

Configure it like any Jupyter setting, e.g. `jupyter lab --SyftServer.network=MULTIADDR`:
`network` (a network node), `domains` (domain multiaddrs), `homes` (the JUPYTER_SYFT_HOME
folders whose identities it acts as; default: yours), or `demo` (a demo.json written by
`jupyter-syft demo --keep-running`, for its network and domains).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlets import List, Unicode
from traitlets.config import Configurable

from jupyter_syft.identity import syft_home
from jupyter_syft.server.backend import Backend, Sources
from jupyter_syft.server.handlers import routes


class SyftServer(Configurable):
    """Where the sidebar looks and as whom."""

    network = Unicode("", help="multiaddr of a network node to list and search").tag(config=True)
    domains = List(Unicode(), help="multiaddrs of domains to show directly").tag(config=True)
    homes = List(
        Unicode(), help="JUPYTER_SYFT_HOME folders whose identities to act as (default: yours)"
    ).tag(config=True)
    demo = Unicode("", help="a demo.json: use its network and domains").tag(config=True)

    def sources(self) -> Sources:
        network, domains = self.network, list(self.domains)
        if self.demo:
            demo = json.loads(Path(self.demo).read_text())
            network = network or demo.get("network", "")
            domains += list(demo.get("domains", {}).values())
        homes = [Path(h).expanduser() for h in self.homes] or [syft_home()]
        return Sources(network, domains, homes)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_syft.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    settings = SyftServer(config=serverapp.config)
    backend = Backend(settings.sources())
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", routes(base_url, backend))
    names = ", ".join(i.peer_id for i in backend.identities)
    serverapp.log.info("jupyter-syft sidebar API at %sjupyter-syft/api as %s", base_url, names)
