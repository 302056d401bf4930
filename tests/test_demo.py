"""The main job: `jupyter-syft demo` end to end, as `make demo-headless` runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DEMO = [sys.executable, "-m", "jupyter_syft.cli", "demo", "--dir"]
MULTIADDR = r"/ip4/127\.0\.0\.1/tcp/\d+/p2p/12D3Koo\w{40,}"


def test_scripted_demo_plays_both_roles(tmp_path: Path) -> None:
    narrow = {**os.environ, "COLUMNS": "80"}  # piped output is laid out wide all the same
    done = subprocess.run(
        [*DEMO, str(tmp_path / "demo")], capture_output=True, text=True, timeout=110, env=narrow
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Piped (not a terminal), no line is wrapped or cut: a multiaddr copies as one line.
    for name in ("network demo-network", "hospital-a", "hospital-b", "hospital-c"):
        assert re.search(rf"^{name}: {MULTIADDR}$", done.stdout, re.M), done.stdout
    assert re.search(r"^\(the central reference .* no one holds it\)$", done.stdout, re.M)
    out = " ".join(done.stdout.split())
    assert "denied: returns every private row" in out
    # The pooled result of the approved requests equals the full table's mean BMI.
    pooled = out.split("│ pooled │ 442 │ ")[1].split(" ")[0]
    assert f"check against the full table: mean BMI {pooled}" in out
    assert "refused: privacy budget exhausted" in out
    assert out.count("hash chain verified") == 3
    # Federated learning: one plan approval per hospital, then as good as central training.
    assert out.count("once: a federated plan of 10 rounds x 5 epochs on diabetes") == 3
    assert "secure aggregation (no one saw a hospital's update)" in out
    line = out.split("federated MSE ")[1]
    federated = float(line.split(",")[0])
    central = float(line.split("central MSE ")[1].split(":")[0])
    ratio = float(line.split("federated / central ")[1].split(" ")[0])
    assert abs(ratio - federated / central) < 0.002, line[:100]
    assert abs(ratio - 1) <= 0.10, f"federated MSE not within 10% of central: {line[:100]}"
    assert "in a real deployment no one holds it" in out


# `demo --keep-running` (demo.json, Ctrl-C stopping each node within the bound, exit code 0)
# is tested in test_demo_day.py's Lab demo, which runs it: one demo run fewer.
