"""Packaging by role: the bare install is a network operator's, and the network node's code
needs nothing more (no torch, pandas, Arrow or Jupyter), so `pip install jupyter-syft` runs
`jupyter-syft network start` (checked in a fresh venv when the extras were drawn up)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "pandas", "numpy", "pyarrow", "opendp", "opacus", "tenseal", "sklearn"}
HEAVY |= {"IPython", "ipykernel", "jupyter_server", "jupyterlab", "uv", "safetensors"}


def test_the_bare_install_depends_on_no_compute_or_jupyter_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]}
    forbidden = {h.lower() for h in HEAVY} | {"scikit_learn"}
    assert not {n.replace("-", "_").lower() for n in names} & forbidden
    extras = project["optional-dependencies"]
    assert {"domain", "lab", "demo", "test"} <= set(extras)
    assert any(dep.startswith("torch") for dep in extras["domain"])


def test_the_network_node_and_the_command_line_import_nothing_heavy() -> None:
    script = (
        "import json, sys\n"
        "import jupyter_syft.cli, jupyter_syft.network.node, jupyter_syft.network.cli\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not set(json.loads(out.stdout)) & HEAVY
