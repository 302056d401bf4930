"""The Ray executor on a real two-node Ray cluster (tests/ray_cluster.py): a domain node started
with `--executor ray` inside the cluster's namespace, and its owner and scientists as scripts
in there too. Jobs land on both Ray nodes; 50 requests from 3 scientists complete; a Ray node
killed mid-job loses no job and finishes none twice; stopping or killing the domain node
leaves no job running and runs the interrupted ones again once; the sandbox attacks pass on
Ray as well; bad flags are refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import DomainProcess, person
from ray_cluster import ADDRESS, RayCluster
from test_sandbox_attacks import job_processes as all_job_processes

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
SCIENTISTS = ("ada", "grace", "alan")

# What every people-script starts with: the domain, its owner and the scientists.
PEOPLE = """
    import threading, time
    from nodes import Approver, person
    from pathlib import Path
    from jupyter_syft.client.admin import AdminClient
    from jupyter_syft.client.connection import NodeConnection
    from jupyter_syft.client.domain import DomainClient
    root = Path({root!r})
    address = {address!r}
    admin = AdminClient(NodeConnection(address, person(root, "owner")[1]))
    scientists = {{
        name: DomainClient(NodeConnection(address, person(root, name)[1]))
        for name in {scientists!r}
    }}
"""
SLEEPER = (
    "def nap(df, seconds={seconds}):\n"
    "    import time\n"
    "    time.sleep(seconds)\n"
    "    return int(df['n'].sum())\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    cluster = RayCluster(tmp_path_factory.mktemp("r"))
    print(f"ray cluster of 2 nodes started in {cluster.start_seconds:.1f} s")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def domain(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("domain")
    DATA_ROOT[0] = str(root)
    owner_home, _ = person(root, "owner")
    for name in SCIENTISTS:
        person(root, name)
    flags = ["--executor", "ray", "--ray-address", ADDRESS, "--workers", "8"]
    node = DomainProcess(root, "clinic", owner_home, *flags, "--job-memory-mb", "512")
    node.prefix = cluster.ns.command([])
    node.environment = {"HOME": str(cluster.home), "RAY_USAGE_STATS_ENABLED": "0"}
    node.start()
    world = {"root": str(root), "address": node.address, "scientists": list(SCIENTISTS)}
    try:
        peers = people(
            cluster,
            world,
            """
            import pandas as pd
            admin.create_dataset("numbers", private=pd.DataFrame({"n": range(100)}),
                                 mock=pd.DataFrame({"n": range(5)}))
            for name in scientists:
                admin.add_user(person(root, name)[1].peer_id, "data_scientist", name)
            emit(sorted(u.role for u in admin.users()))
            """,
        )
        assert peers == ["admin", "data_scientist", "data_scientist", "data_scientist"]
        yield {**world, "node": node}
    finally:
        node.kill()


def people(cluster: RayCluster, world: dict, code: str, timeout: float = 240) -> Any:
    """Run `code` as the domain's people, inside the cluster's namespace."""
    setup = textwrap.dedent(PEOPLE.format(**world))
    return cluster.script(setup + textwrap.dedent(code), timeout=timeout)


def audit_counts(cluster: RayCluster, world: dict, request_ids: list[str]) -> dict[str, dict]:
    """Per request, how many run_started / run_done / run_failed / run_requeued entries."""
    code = f"""
        counts = {{r: {{}} for r in {request_ids!r}}}
        for entry in admin.audit_log(limit=5000).entries:
            if entry.subject in counts and entry.action.startswith("run_"):
                counts[entry.subject][entry.action] = counts[entry.subject].get(entry.action, 0) + 1
        emit(counts)
    """
    counts: dict[str, dict] = people(cluster, world, code)
    return counts


def job_processes() -> list[int]:
    """Job processes of this module's domain (others' tests may run jobs on this machine):
    those holding a file of a data dir under this module's folder (their inputs)."""
    ours = []
    for pid in all_job_processes():
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            links.append(Path(f"/proc/{pid}/maps").read_text())
        except OSError:
            continue
        if any(DATA_ROOT[0] and DATA_ROOT[0] in link for link in links):
            ours.append(pid)
    return ours


DATA_ROOT = [""]  # the domain fixture's folder


def wait_for_job_processes(count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(job_processes()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} jobs started running"
        time.sleep(0.1)


def no_job_processes_within(seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while job_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return job_processes()


def test_fifty_requests_from_three_scientists_run_on_both_ray_nodes(
    cluster: RayCluster, domain: dict
) -> None:
    code = """
        approver = Approver({"clinic": admin})
        results, placements, errors = {}, {}, []

        def ask(name, index):
            try:
                source = f"def total(df):\\n    return int(df['n'].sum()) + {index}\\n"
                request = scientists[name].submit(source, "total", {"df": "numbers"})
                results[index] = request.result(timeout=500)
                placement = request.refresh().placement
                placements[index] = [placement.executor, placement.node, placement.attempts]
            except Exception as e:
                errors.append(repr(e))

        started = time.monotonic()
        threads = [threading.Thread(target=ask, args=(SCIENTISTS[i % 3], i)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        approver.close()
        emit({"results": results, "placements": placements, "errors": errors,
              "seconds": time.monotonic() - started})
    """.replace("SCIENTISTS", repr(SCIENTISTS))
    outcome = people(cluster, domain, code)
    assert outcome["errors"] == []
    assert outcome["results"] == {str(i): 4950 + i for i in range(50)}
    placements = outcome["placements"].values()
    assert {executor for executor, _, _ in placements} == {"ray"}
    nodes = {node for _, node, _ in placements}
    expected = {f"ray node {node_id[:8]} (127.0.0.1)" for node_id in cluster.node_ids}
    assert nodes == expected, nodes  # both Ray nodes ran jobs
    assert {attempts for _, _, attempts in placements} == {1}
    print(f"50 requests from 3 scientists on 2 Ray nodes: {outcome['seconds']:.1f} s")


def test_a_job_that_asked_for_no_gpu_sees_none(cluster: RayCluster, domain: dict) -> None:
    code = """
        source = (
            "def devices(df):\\n"
            "    import os, torch\\n"
            "    return [os.environ.get('CUDA_VISIBLE_DEVICES'), torch.cuda.device_count()]\\n"
        )
        request = scientists["ada"].submit(source, "devices", {"df": "numbers"})
        admin.get_request(request.id).approve()
        emit(request.result(timeout=120))
    """
    # Ray sets nothing for a task without GPUs: the task says "" itself, and the job sees it.
    assert people(cluster, domain, code) == ["", 0]


def test_the_sandbox_attacks_pass_on_ray(cluster: RayCluster, domain: dict) -> None:
    """tests/test_sandbox_attacks.py again, its domain on this cluster, inside the namespace."""
    tests = Path(__file__).parent
    done = cluster.ns.run(
        [sys.executable, "-m", "pytest", str(tests / "test_sandbox_attacks.py"), "-q", "-x"],
        env={**cluster.env, "SYFT_TEST_RAY_ADDRESS": ADDRESS, "PYTHONPATH": str(tests)},
        cwd=tests.parent,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout.splitlines()[-1] and "skipped" not in done.stdout


def submit_sleepers(cluster: RayCluster, world: dict, count: int, seconds: float) -> list[str]:
    code = f"""
        ids = []
        for index in range({count}):
            request = scientists[SCIENTISTS[index % 3]].submit(
                {SLEEPER.format(seconds=seconds)!r}, "nap", {{"df": "numbers"}}
            )
            admin.get_request(request.id).approve()
            ids.append(request.id)
        emit(ids)
    """.replace("SCIENTISTS", repr(SCIENTISTS))
    ids: list[str] = people(cluster, world, code)
    return ids


def finished(cluster: RayCluster, world: dict, request_ids: list[str]) -> dict[str, list]:
    """Each request's final status, result or error, and placement, once all have ended."""
    code = f"""
        ended = {{}}
        for request_id in {request_ids!r}:
            request = admin.get_request(request_id)
            info = request.wait(timeout=400)
            placement = info.placement
            ended[request_id] = [
                info.status, info.error,
                [placement.node, placement.attempts] if placement else None,
            ]
        emit(ended)
    """
    ended: dict[str, list] = people(cluster, world, code)
    return ended


def test_stopping_the_node_kills_its_ray_tasks_and_a_restart_runs_them_once(
    cluster: RayCluster, domain: dict
) -> None:
    node: DomainProcess = domain["node"]
    ids = submit_sleepers(cluster, domain, 2, 30)
    wait_for_job_processes(2)  # a job on each Ray node
    assert node.stop(signal.SIGTERM) == 0  # close(): ray.cancel(force=True) of both tasks
    assert no_job_processes_within(10) == []
    node.start()
    # Killed outright this time (no close): Ray ends the dead driver's tasks itself.
    wait_for_job_processes(2)
    node.kill()
    assert no_job_processes_within(20) == []
    node.start()
    domain["address"] = node.address
    ended = finished(cluster, domain, ids)
    assert [status for status, _, _ in ended.values()] == ["done", "done"], ended
    counts = audit_counts(cluster, domain, ids)
    for request_id in ids:  # run twice cut off, finished once
        assert counts[request_id] == {"run_started": 3, "run_requeued": 2, "run_done": 1}


def test_a_ray_node_killed_mid_job_loses_no_job_and_finishes_none_twice(
    cluster: RayCluster, domain: dict
) -> None:
    """Last: it leaves the cluster with one node."""
    ids = submit_sleepers(cluster, domain, 2, 8)
    wait_for_job_processes(2)  # one on each Ray node
    cluster.kill_node("worker")
    ended = finished(cluster, domain, ids)
    # The job on the killed node, and only it, was retried (or failed saying why).
    hit = [e for e in ended.values() if e[2][1] == 2 or e[0] == "failed"]
    assert len(hit) == 1, ended
    for status, error, _ in ended.values():
        if status == "done":
            assert error == ""
        else:
            assert status == "failed" and error.startswith("the Ray node running the job died")
    head = f"ray node {cluster.node_ids[0][:8]}"
    assert any(node.startswith(head) for _, _, (node, _) in ended.values())
    counts = audit_counts(cluster, domain, ids)
    for request_id in ids:
        assert counts[request_id].get("run_done", 0) + counts[request_id].get("run_failed", 0) == 1
        assert counts[request_id]["run_started"] == 1  # Ray retried it: one run for the node


def start_domain(*flags: str, root: Path) -> subprocess.CompletedProcess[str]:
    home, _ = person(root, "owner")
    command = [sys.executable, "-m", "jupyter_syft.cli", "domain", "start", "--name", "x"]
    return subprocess.run(
        [*command, "--data-dir", str(root / "x"), *flags],
        env={**os.environ, "JUPYTER_SYFT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_executor_flags_are_refused_saying_what_is_wrong(tmp_path: Path) -> None:
    no_address = start_domain("--executor", "ray", root=tmp_path)
    assert no_address.returncode == 2
    assert "--executor ray needs --ray-address" in no_address.stderr
    alone = start_domain("--ray-address", "local", root=tmp_path)
    assert alone.returncode == 2 and "--ray-address goes with --executor ray" in alone.stderr
    unknown = start_domain("--executor", "spark", root=tmp_path)
    assert unknown.returncode == 2 and "no executor 'spark'; known: local, ray" in unknown.stderr
    assert not (tmp_path / "x").exists()  # nothing was created
