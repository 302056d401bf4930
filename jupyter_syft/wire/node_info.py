"""`node.json` in a node's data dir: how a running node (domain or network) tells local tools
on the same machine its name and address. Written when the node listens, removed at exit."""

from __future__ import annotations

import json
import os
from pathlib import Path

NODE_INFO_FILE = "node.json"


def write_node_info(data_dir: Path, name: str, address: str) -> None:
    path = Path(data_dir) / NODE_INFO_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": name, "multiaddr": address, "pid": os.getpid()}))
    os.replace(tmp, path)


def remove_node_info(data_dir: Path) -> None:
    (Path(data_dir) / NODE_INFO_FILE).unlink(missing_ok=True)


def read_node_info(data_dir: Path, kind: str) -> dict[str, str]:
    """The running node's name and address; `kind` ("domain", "network") names it in the
    error when none runs there."""
    path = Path(data_dir) / NODE_INFO_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no {kind} node is running on {data_dir} (start one: jupyter-syft {kind} start)"
        )
    return json.loads(path.read_text())
