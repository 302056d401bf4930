"""The main job: `jupyter-syft demo` end to end, as `make demo-headless` runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEMO = [sys.executable, "-m", "jupyter_syft.cli", "demo", "--dir"]


def test_scripted_demo_plays_both_roles(tmp_path: Path) -> None:
    wide = {**os.environ, "COLUMNS": "250"}  # rich wraps table cells at the terminal width
    done = subprocess.run(
        [*DEMO, str(tmp_path / "demo")], capture_output=True, text=True, timeout=110, env=wide
    )
    assert done.returncode == 0, done.stdout + done.stderr
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
    demo = subprocess.Popen(
        [*DEMO, str(folder), "--keep-running"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 100
        while not (folder / "demo.json").exists():
            assert demo.poll() is None and time.monotonic() < deadline, "demo did not come up"
            time.sleep(0.2)
        described = json.loads((folder / "demo.json").read_text())
        assert set(described["domains"]) == {"hospital-a", "hospital-b", "hospital-c"}
        assert described["network"].startswith("/ip4/127.0.0.1/tcp/")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        assert not (folder / "demo.json").exists()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
        demo.stderr.close()  # type: ignore[union-attr]
