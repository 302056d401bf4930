"""The main job: `jupyter-syft demo` end to end, as `make demo-headless` runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from jupyter_syft.demo import STOP_S

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


def test_keep_running_describes_the_nodes_and_stops_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    output = tmp_path / "demo.out"
    with output.open("w") as stdout:
        demo = subprocess.Popen(
            [*DEMO, str(folder), "--keep-running"], stdout=stdout, stderr=subprocess.PIPE
        )
    try:
        deadline = time.monotonic() + 100
        while not (folder / "demo.json").exists():
            assert demo.poll() is None and time.monotonic() < deadline, "demo did not come up"
            time.sleep(0.2)
        described = json.loads((folder / "demo.json").read_text())
        assert set(described["domains"]) == {"hospital-a", "hospital-b", "hospital-c"}
        assert described["network"].startswith("/ip4/127.0.0.1/tcp/")
        started = time.monotonic()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        seconds = time.monotonic() - started
        assert not (folder / "demo.json").exists()
        # Each node is named as it stops; all stop at once, within the kill bound.
        stop = output.read_text().split("Ctrl-C stops them.")[1]
        assert "stopping the network node, hospital-a, hospital-b, hospital-c…" in stop, stop
        for node in ("the network node", "hospital-a", "hospital-b", "hospital-c"):
            assert re.search(rf"^  stopped {node} \((\d+\.\d) s\)$", stop, re.M), stop
        assert seconds < STOP_S + 10, stop
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
        demo.stderr.close()  # type: ignore[union-attr]
