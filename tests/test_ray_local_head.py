"""`domain start --executor ray --ray-address local`: the node starts a Ray head of its own,
runs jobs on it, and leaves nothing of it behind when it stops.

The node runs in a `NetNS` of the test's own (Ray binds non-loopback addresses), and so do its
owner and scientist, as a script that prints one JSON line.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from netns import NetNS
from nodes import DomainProcess, person

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
TESTS = str(Path(__file__).parent)

PEOPLE = """
    import json, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from nodes import person
    from jupyter_syft.client.admin import AdminClient
    from jupyter_syft.client.connection import NodeConnection
    from jupyter_syft.client.domain import DomainClient
    root = Path({root!r})
    admin = AdminClient(NodeConnection({address!r}, person(root, "owner")[1]))
    scientist = DomainClient(NodeConnection({address!r}, person(root, "ada")[1]))
    import pandas as pd
    admin.create_dataset("numbers", private=pd.DataFrame({{"n": range(100)}}),
                         mock=pd.DataFrame({{"n": range(5)}}))
    admin.add_user(person(root, "ada")[1].peer_id, "data_scientist", "ada")
    request = scientist.submit("def total(df):\\n    return int(df['n'].sum())\\n", "total",
                               {{"df": "numbers"}})
    admin.get_request(request.id).approve()
    result = request.result(timeout=200)
    placement = request.refresh().placement
    print("RESULT " + json.dumps([result, placement.executor, placement.node]), flush=True)
"""


def test_a_local_head_runs_jobs_and_is_gone_when_the_node_stops(tmp_path: Path) -> None:
    temp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # the node's TMPDIR: its head's there
    with NetNS() as ns:
        owner_home, _ = person(tmp_path, "owner")
        person(tmp_path, "ada")
        flags = ["--executor", "ray", "--ray-address", "local", "--job-memory-mb", "512"]
        node = DomainProcess(tmp_path, "clinic", owner_home, *flags)
        node.prefix = ns.command([])
        node.environment = {
            "HOME": str(tmp_path / "home"),
            "RAY_USAGE_STATS_ENABLED": "0",
            "TMPDIR": str(temp),
        }
        node.start()
        try:
            code = textwrap.dedent(
                PEOPLE.format(tests=TESTS, root=str(tmp_path), address=node.address)
            )
            done = ns.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            assert lines, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            result, executor, where = json.loads(lines[0].removeprefix("RESULT "))
            assert (result, executor) == (4950, "ray")
            assert where.startswith("ray node ") and where.endswith("(127.0.0.1)"), where
            heads = [p for p in ns.pids() if b"gcs_server" in _command_line(p)]
            assert heads, "no Ray head (gcs_server) runs for the node"
            assert list(temp.glob("syft-ray-*")), "the head's folder is not there"
        finally:
            code_at_stop = node.stop(signal.SIGTERM)
        assert code_at_stop == 0, node.log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while ns.pids() and time.monotonic() < deadline:  # the head's processes end with it
            time.sleep(0.2)
        left = {pid: _command_line(pid)[:200] for pid in ns.pids()}
        assert left == {}, left
        assert list(temp.glob("syft-ray-*")) == []  # its folder removed
    temp.rmdir()


def _command_line(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""
