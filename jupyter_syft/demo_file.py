"""Where a running demo describes itself (`demo.json`: its network, domains and scientist),
read by the demo's notebooks and by the kernel's `%syft connect demo`."""

from __future__ import annotations

import os
from pathlib import Path

DEMO_ENV = "JUPYTER_SYFT_DEMO"
DEMO_FILE = Path("demo-data") / "demo.json"


def demo_path() -> Path:
    """Where the running demo is described: $JUPYTER_SYFT_DEMO, else ./demo-data/demo.json."""
    return Path(os.environ.get(DEMO_ENV) or DEMO_FILE)
