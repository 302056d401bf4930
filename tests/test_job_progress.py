"""What a running job reports back, and how a remote error looks to the scientist: a real
domain process, the scientist's client and Syft kernel, the owner as a script.

- `syft.progress(i, n)` inside a job reaches the client's status, the kernel cell's bar and,
  in a plain `python` on a terminal, a bar drawn while `result()` waits;
- a job calling it a million times leaves the node responsive and the store no bigger;
- an unfinished cell's elapsed time ticks;
- a traceback through pandas shows the scientist their line and "… N frames in pandas",
  never one of the owner's paths (redacted, and released in full).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kernel_client import SyftKernel
from nodes import person
from shared_domains import SharedDomain

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.errors import RequestFailed

TABLE = pd.DataFrame({"bmi": np.linspace(18.0, 40.0, 60), "age": np.arange(60)})
STEPS = """
import time
import jupyter_syft as syft

def steps(df):
    for i in range(10):
        syft.progress(i, 10)
        time.sleep(0.4)
    return float(df["bmi"].mean())
"""
FLOOD = """
import jupyter_syft as syft

def flood(df):
    for i in range(1_000_000):
        syft.progress(i, 1_000_000)
    return 1
"""
THROUGH_PANDAS = """
def broken(df):
    grouped = df.groupby("no such column")
    return grouped.sum()
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clinic: SharedDomain) -> dict:
    """The shared clinic domain (conftest.py) with this module's dataset and scientist."""
    scientist_home, scientist = person(tmp_path_factory.mktemp("progress"), "scientist")
    node = clinic.node
    admin = clinic.admin()
    admin.create_dataset("patients", private=TABLE, mock=TABLE.head(5))
    admin.add_user(scientist.peer_id)
    domain = DomainClient(NodeConnection(node.address, scientist))
    return {"node": node, "admin": admin, "domain": domain, "home": scientist_home}


def approve_all(admin: AdminClient) -> None:
    for review in admin.requests("pending"):
        review.approve()


def test_progress_reaches_the_client_status(world: dict) -> None:
    request = world["domain"].submit(STEPS, "steps", {"df": "patients"})
    approve_all(world["admin"])
    seen = set()
    deadline = time.monotonic() + 60
    while request.info.status != "done" and time.monotonic() < deadline:
        request.refresh(wait_s=5)
        if request.info.progress is not None:
            assert request.info.progress.total == 10
            seen.add(request.info.progress.done)
    assert request.info.status == "done"
    assert len(seen) >= 3, seen  # several intermediate values, not only the end
    assert request.info.progress is None  # gone once the job ended
    assert request.result() == pytest.approx(TABLE["bmi"].mean())


STEPS_AS_TEXT = """
def steps(df):
    import time
    import jupyter_syft as syft

    for i in range(10):
        syft.progress(i, 10)
        time.sleep(0.4)
    return float(df["bmi"].mean())
"""
WAIT_IN_A_TERMINAL = """
import sys
import jupyter_syft as syft
domain = syft.connect(sys.argv[1])
request = domain.request(sys.argv[2], df=domain.datasets["patients"])
print("submitted", request.id, flush=True)
print("mean", request.result(timeout=60), flush=True)
"""


def test_result_draws_the_jobs_progress_in_a_terminal(world: dict) -> None:
    """A scientist in a plain python on a terminal sees the bar move while result() waits."""
    leader, follower = pty.openpty()
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(world["home"]), "COLUMNS": "120"}
    script = [sys.executable, "-c", WAIT_IN_A_TERMINAL, world["node"].address, STEPS_AS_TEXT]
    with subprocess.Popen(script, stdout=follower, stderr=follower, env=env) as python:
        os.close(follower)
        seen = b""
        deadline = time.monotonic() + 90
        try:
            while b"mean " not in seen and time.monotonic() < deadline:
                if b"submitted" in seen:
                    approve_all(world["admin"])
                try:
                    seen += os.read(leader, 65536)
                except OSError:  # the python ended and closed its side
                    break
        finally:
            python.kill()
            os.close(leader)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen).decode(errors="replace")
    assert f"mean {TABLE['bmi'].mean()}" in text, text
    counts = set(re.findall(r"(\d+)/10", text))
    assert len(counts) >= 3, text  # the bar moved: several of the job's steps drawn


def test_progress_flood_leaves_the_node_responsive_and_the_store_bounded(world: dict) -> None:
    store = world["node"].data_dir / "domain.sqlite"
    before = _rows(store)
    request = world["domain"].submit(FLOOD, "flood", {"df": "patients"})
    approve_all(world["admin"])
    slowest = 0.0
    while request.refresh(wait_s=0).status in ("approved", "running"):
        started = time.monotonic()
        world["domain"].get_request(request.id)  # another call, while the job floods
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.1)
    assert request.wait(60).status == "done"
    assert slowest < 2.0
    grown = {table: _rows(store)[table] - count for table, count in before.items()}
    assert sum(grown.values()) < 20, grown  # a few rows for the request, none per update


def _rows(store: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_kernel_cell_ticks_and_shows_a_progress_bar(world: dict) -> None:
    kernel = SyftKernel(world["home"])
    try:
        connect = kernel.execute(f"%syft connect {world['node'].address}")
        assert connect.status == "ok", connect.text
        cell = kernel.execute(
            "%%request clinic/patients as df --out average\n"
            "import time\n"
            "import jupyter_syft as syft\n"
            "for i in range(10):\n"
            "    syft.progress(i, 10)\n"
            "    time.sleep(0.4)\n"
            "float(df['bmi'].mean())"
        )
        assert cell.status == "ok", cell.text
        time.sleep(2.5)  # pending: the elapsed time must move meanwhile
        pending = _updates(kernel, cell.display_id)
        elapsed = {re.search(r"\(([\d.]+) s;", text).group(1) for text in pending}  # type: ignore[union-attr]
        assert len(elapsed) >= 3, pending
        assert all("pending" in text for text in pending)
        approve_all(world["admin"])
        kernel.update(cell.display_id, "result bound to average", timeout=60)
        bars = {
            found.group(1)
            for text in _updates(kernel, cell.display_id)
            if (found := re.search(r"█*░* (\d+)/10 \(", text))
        }
        assert len(bars) >= 3, bars
    finally:
        kernel.stop()


def _updates(kernel: SyftKernel, display_id: str) -> list[str]:
    """Every update of `display_id` so far (the kernel's messages read for a second more)."""
    end = time.monotonic() + 1
    with contextlib.suppress(TimeoutError):
        while True:
            kernel._pump(end)
    return [
        m["content"]["data"]["text/plain"]
        for m in kernel.messages
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == display_id
    ]


def test_traceback_through_pandas_shows_the_scientists_line_and_no_owner_path(
    world: dict,
) -> None:
    owner_paths = [str(world["node"].data_dir), sys.prefix, "site-packages", "/lib/python3"]
    request = world["domain"].submit(THROUGH_PANDAS, "broken", {"df": "patients"})
    approve_all(world["admin"])
    with pytest.raises(RequestFailed):
        request.result(timeout=60)
    redacted = request.error
    assert "KeyError" in redacted
    assert 'line 3: grouped = df.groupby("no such column")' in redacted
    assert re.search(r"… \d+ frames? in pandas", redacted), redacted
    assert not [p for p in owner_paths if p in redacted], redacted

    [review] = [r for r in world["admin"].requests("failed") if r.id == request.id]
    assert "site-packages/pandas" in review.error  # the owner's copy is whole
    review.release_error()
    request.refresh()
    released = request.error
    assert released != redacted and "no such column" in released  # the message, now released
    assert 'File "<request' in released and 'grouped = df.groupby("no such column")' in released
    assert re.search(r"… \d+ frames? in pandas", released), released
    assert not [p for p in owner_paths if p in released], released
