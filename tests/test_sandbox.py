"""The job sandbox's layers, each attacked from inside a job: what the kernel refuses.

Jobs run in the real executor (forkserver, keeper and confined job process); the attacks
across a whole domain node are in test_sandbox_attacks.py.
"""

from __future__ import annotations

import platform
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.crypto.seal import ResultSeal, open_sealed
from jupyter_syft.domain.core import WARMING_UP_NOTE
from jupyter_syft.domain.executor import Executor
from jupyter_syft.domain.jobs import InputSpec, JobSpec
from jupyter_syft.domain.sandbox import landlock, probe
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.values import data_to_table, decode_result, write_ipc_file

SCIENTIST = Identity.generate()


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    with Executor() as executor:
        executor.warm()
        yield executor


def run(executor: Executor, folder: Path, code: str) -> Any:
    """Run `attack()` in a confined job and return what it returned."""
    folder.mkdir(parents=True, exist_ok=True)
    write_ipc_file(folder / "in.arrow", data_to_table(pd.DataFrame({"a": [1.0]})))
    spec = JobSpec(
        request_id="r",
        code=textwrap.dedent(code),
        function_name="attack",
        inputs={"df": InputSpec(str(folder / "in.arrow"), "table")},
        output_dir=str(folder / "out"),
        domain_peer_id="d",
        requester=SCIENTIST.peer_id,
        seal_to=SCIENTIST.peer_id,
    )
    outcome = executor.run(spec)
    assert outcome.ok, outcome.error_full
    contexts = ResultSeal("r", "d", SCIENTIST.peer_id)
    manifest = open_sealed(
        (folder / "out" / "manifest.sealed").read_bytes(), SCIENTIST, contexts.manifest()
    )
    return decode_result(manifest, [])


def test_this_machine_has_every_layer() -> None:
    status = probe()
    assert status.missing == []
    assert status.summary.startswith("on: landlock ")
    assert landlock.abi_version() >= landlock.MIN_ABI
    assert probe("off").summary == "off"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 system call numbers")
def test_system_calls_the_filter_refuses(executor: Executor, tmp_path: Path) -> None:
    code = """
    import ctypes, errno, os

    libc = ctypes.CDLL(None, use_errno=True)
    NUMBERS = {"unshare_user": (272, 0x10000000), "ptrace_traceme": (101, 0),
               "io_uring_setup": (425, 1, 0), "bpf": (321, 0, 0, 0), "keyctl": (250, 0),
               "userfaultfd": (323, 0), "perf_event_open": (298, 0, 0, -1, -1, 0),
               "process_vm_readv": (310, 1, 0, 0, 0, 0, 0), "mount": (165, 0, 0, 0, 0, 0),
               "chroot": (161, 0), "setns": (308, 0, 0), "clone3": (435, 0, 0)}

    def attack(df):
        refused = {}
        for name, (number, *args) in NUMBERS.items():
            result = libc.syscall(number, *args)
            refused[name] = errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else "ran"
        try:
            os.setuid(0)
            refused["setuid0"] = "ran"
        except PermissionError:
            refused["setuid0"] = "EPERM"
        return refused
    """
    refused = run(executor, tmp_path, code)
    assert refused.pop("clone3") == "ENOSYS"  # so glibc falls back to clone, which is checked
    assert refused == dict.fromkeys(refused, "EPERM")


def test_files_and_devices_outside_the_view(executor: Executor, tmp_path: Path) -> None:
    (tmp_path / "beside.txt").write_text("the job's own folder on the node")
    code = f"""
    import os

    def attack(df):
        found = {{}}
        for path in ["{tmp_path}/beside.txt", "/dev/mem", "/dev/kmsg", "/proc/1/root/etc/shadow",
                     "/etc/shadow", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                     "/run/jupyter-syft", "/root"]:
            try:
                os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(1)
                found[path] = "read"
            except OSError as e:
                found[path] = type(e).__name__
        for path in ["/usr/evil", "/etc/evil", "/evil", os.__file__]:
            try:
                open(path, "a").write("x")
                found[path] = "written"
            except OSError as e:
                found[path] = type(e).__name__
        return found
    """
    found = run(executor, tmp_path, code)
    assert "read" not in found.values() and "written" not in found.values(), found


def test_warming_up_is_said(tmp_path: Path) -> None:
    """A request approved right after the node starts says the workers are warming up."""
    owner_home, owner = person(tmp_path, "owner")
    _, alice = person(tmp_path, "alice")
    node = DomainProcess(tmp_path, "fresh", owner_home)
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset(
            "t", private=pd.DataFrame({"a": [1.0]}), mock=pd.DataFrame({"a": [0.0]})
        )
        admin.add_user(alice.peer_id)
        scientist = DomainClient(NodeConnection(node.address, alice))
        request = scientist.submit("def one(df):\n    return 1\n", "one", {"df": "t"})
        admin._connection.call(m.Decide(request.id, approve=True))
        assert request.refresh().note == WARMING_UP_NOTE
        assert request.result(timeout=60) == 1
        assert request.refresh().note == ""
    finally:
        node.kill()
