"""Declared environments across a real domain process: built by uv from a local folder of
wheels (no network), cached by lock hash, refused when not wheels-only or not allowed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from nodes import DomainProcess, person
from wheels import wheel_bytes, wheel_name, write_sdist

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.errors import InvalidError, RequestFailed
from jupyter_syft.federated.weights import to_safetensors
from jupyter_syft.kernel.cells import CellError, parse_line
from jupyter_syft.wire import messages as m

PRIVATE = pd.DataFrame({"age": np.arange(100) % 80 + 18, "score": np.linspace(0.0, 1.0, 100)})
MOCK = pd.DataFrame({"age": np.full(10, 40), "score": np.full(10, 0.5)})


def uses_syfttestpkg(df):
    import syfttestpkg

    return syfttestpkg.VALUE + len(df)


def plain(df):
    return len(df)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("environments")
    index = root / "wheels"
    index.mkdir()
    (index / wheel_name("syfttestpkg", "1.0.0")).write_bytes(
        wheel_bytes("syfttestpkg", "1.0.0", "VALUE = 42\n")
    )
    (index / wheel_name("twinpkg", "2.0")).write_bytes(wheel_bytes("twinpkg", "2.0", "VALUE = 2\n"))
    write_sdist(index, "sdistonly", "1.0")
    for blocking in ("gatepkg", "killpkg"):  # FIFOs: a build waits on them until a test writes
        os.mkfifo(index / wheel_name(blocking, "1.0"))
    owner_home, owner = person(root, "owner")
    alice_home, alice = person(root, "alice")
    node = DomainProcess(root, "lab", owner_home, "--package-index", str(index))
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PRIVATE, mock=MOCK)
        admin.create_dataset("restricted", private=PRIVATE, mock=MOCK)
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        yield {
            "node": node,
            "index": index,
            "alice_home": alice_home,
            "admin": admin,
            "alice": DomainClient(NodeConnection(node.address, alice)),
        }
    finally:
        node.kill()
        for pid in uv_processes(node.data_dir):  # one left waiting on a FIFO by a failed test
            os.kill(pid, signal.SIGKILL)


def approve(admin: AdminClient, request_id: str) -> None:
    admin.get_request(request_id).approve()  # type: ignore[attr-defined]


def builds(admin: AdminClient) -> list[m.AuditEntry]:
    return [e for e in admin.audit_log(limit=10_000).entries if e.action == "environment_built"]


def test_a_requirement_is_built_and_imported_then_cached(world: dict) -> None:
    alice, admin = world["alice"], world["admin"]
    request = alice.request(uses_syfttestpkg, df="patients", requirements=["syfttestpkg==1.0.0"])
    assert request.requirements == ["syfttestpkg==1.0.0"]
    review = admin.get_request(request.id)
    assert review.requirements == ["syfttestpkg==1.0.0"]
    assert "syfttestpkg==1.0.0" in review._repr_html_()
    review.approve()  # type: ignore[attr-defined]
    assert request.result(timeout=60) == 142
    [built] = builds(admin)
    folder = world["node"].data_dir / "environments" / built.subject
    assert (folder / "site-packages" / "syfttestpkg" / "__init__.py").is_file()
    assert "--hash=sha256:" in (folder / "requirements.lock").read_text()
    actions = [(e.action, e.subject) for e in admin.audit_log(limit=10_000).entries]
    assert ("build_started", request.id) in actions

    # The same requirements again, and ones that resolve to the same lock: no new build.
    again = alice.request(uses_syfttestpkg, df="patients", requirements=["syfttestpkg==1.0.0"])
    approve(admin, again.id)
    assert again.result(timeout=60) == 142
    unpinned = alice.request(uses_syfttestpkg, df="patients", requirements=["SyftTestPkg"])
    assert unpinned.requirements == ["syfttestpkg"]  # names in canonical form
    approve(admin, unpinned.id)
    assert unpinned.result(timeout=60) == 142
    assert len(builds(admin)) == 1
    actions = [(e.action, e.subject) for e in admin.audit_log(limit=10_000).entries]
    assert ("build_started", again.id) not in actions  # a cache hit goes straight to running
    folders = [p.name for p in (world["node"].data_dir / "environments").iterdir()]
    assert sorted(f for f in folders if not f.startswith(".") and f != "resolved") == [
        built.subject
    ]

    # A job without requirements does not see the environment.
    other = alice.request(uses_syfttestpkg, df="patients")
    approve(admin, other.id)
    with pytest.raises(RequestFailed, match="ModuleNotFoundError"):
        other.result(timeout=60)


@pytest.mark.parametrize(
    ("requirement", "match"),
    [
        ("syfttestpkg>=2", "only syfttestpkg==1.0.0 is available"),
        ("nosuchpkg", "nosuchpkg was not found"),
        ("sdistonly", "no usable wheels"),  # an sdist only: building it would run its code
    ],
)
def test_what_does_not_resolve_fails_with_the_resolvers_message(
    world: dict, requirement: str, match: str
) -> None:
    request = world["alice"].request(plain, df="patients", requirements=[requirement])
    approve(world["admin"], request.id)
    with pytest.raises(RequestFailed, match="could not resolve the requirements") as failed:
        request.result(timeout=60)
    assert match in str(failed.value)
    assert request.status == "failed"
    assert str(world["node"].data_dir) not in str(failed.value)


@pytest.mark.parametrize(
    ("requirement", "match"),
    [
        ("git+https://github.com/psf/requests", "URL, VCS or local path is not allowed"),
        ("requests @ https://example.org/requests.whl", "URL, VCS or local path"),
        ("requests @ git+https://github.com/psf/requests", "URL, VCS or local path"),
        ("./syfttestpkg", "URL, VCS or local path"),
        ("/tmp/syfttestpkg-1.0.0-py3-none-any.whl", "URL, VCS or local path"),
        ("syfttestpkg-1.0.0.tar.gz", "URL, VCS or local path"),
        ("--index-url=https://evil.example/simple", "options are not allowed"),
        ("syfttestpkg; os.system('x')", "is not valid"),
        ("", "1 to 200 characters"),
        ("numpy==1.0.0", "would replace numpy"),  # preloaded by every job worker
        ("torch<1", "would replace torch"),
    ],
)
def test_requirements_outside_the_index_are_refused_at_submission(
    world: dict, requirement: str, match: str
) -> None:
    before = len(world["admin"].requests())
    with pytest.raises(InvalidError, match=match):
        world["alice"].request(plain, df="patients", requirements=[requirement])
    assert len(world["admin"].requests()) == before


def test_a_requirement_the_installed_version_satisfies_is_accepted(world: dict) -> None:
    request = world["alice"].request(plain, df="patients", requirements=["numpy>=1"])
    approve(world["admin"], request.id)
    assert request.result(timeout=60) == 100  # nothing to install: numpy is the node's


def test_the_owners_policy_restricts_requirements(world: dict) -> None:
    alice, admin = world["alice"], world["admin"]
    assert alice.policy("restricted").requirements == "any"
    assert admin.set_policy("restricted", requirements="none").requirements == "none"
    with pytest.raises(InvalidError, match="policy on dataset 'restricted' allows no requirements"):
        alice.request(plain, df="restricted", requirements=["syfttestpkg"])
    with pytest.raises(InvalidError, match="allows no requirements"):  # DP training too
        alice.datasets["restricted"].dp.train(
            model, features=["age"], label="score", epsilon=1.0, delta=1e-5, loss="mse",
            requirements=["syfttestpkg"],
        )  # fmt: skip
    policy = admin.set_policy("restricted", requirements=["Other_Package"])
    assert policy.requirements == ["other-package"]
    assert policy.auto_approve is False  # what was not given stays as it was
    with pytest.raises(InvalidError, match=r"does not allow syfttestpkg \(allowed: other-pack"):
        alice.request(plain, df="restricted", requirements=["syfttestpkg==1.0.0"])
    with pytest.raises(InvalidError, match="a list of package names"):
        admin.set_policy("restricted", requirements="some")
    with pytest.raises(InvalidError, match="is not a package name"):
        admin.set_policy("restricted", requirements=["bad name!"])
    admin.set_policy("restricted", requirements=["syfttestpkg"])
    # A request reading two datasets meets both policies.
    with pytest.raises(InvalidError, match="'restricted' does not allow twinpkg"):
        alice.request(uses_two, df="patients", other="restricted", requirements=["twinpkg"])
    request = alice.request(
        uses_two, df="patients", other="restricted", requirements=["syfttestpkg"]
    )
    approve(admin, request.id)
    assert request.result(timeout=60) == 242
    assert any(
        e.action == "set_policy" and e.subject == "restricted" for e in admin.audit_log().entries
    )


def uses_two(df, other):
    import syfttestpkg

    return syfttestpkg.VALUE + len(df) + len(other)


def model():
    import torch

    return torch.nn.Linear(1, 1)


def test_dp_training_and_federated_plans_carry_requirements(world: dict) -> None:
    alice, admin = world["alice"], world["admin"]
    admin.set_budget(alice._connection.identity.peer_id, "patients", epsilon=10.0, delta=1e-3)
    training = alice.datasets["patients"].dp.train(
        model, features=["age"], label="score", epsilon=1.0, delta=1e-5, loss="mse",
        requirements=["syfttestpkg==1.0.0"],
    )  # fmt: skip
    assert admin.get_request(training.id).requirements == ["syfttestpkg==1.0.0"]
    admin.get_request(training.id).deny("not today")  # type: ignore[attr-defined]
    plan = m.FederatedPlan(
        code="def model():\n    import torch\n    return torch.nn.Linear(1, 1)\n",
        function_name="model",
        features=["age"],
        label="score",
        rounds=2,
        secure_aggregation=False,
    )
    call = m.SubmitFederatedPlan("patients", plan, ["syfttestpkg"])
    info = alice._connection.call(call)
    assert isinstance(info, m.RequestInfo)
    assert info.requirements == ["syfttestpkg"]
    plan_review = admin.get_request(info.request_id)
    assert plan_review.requirements == ["syfttestpkg"]
    plan_review.approve()  # type: ignore[attr-defined]
    weights = to_safetensors(torch.nn.Linear(1, 1).state_dict())
    round_info = alice._connection.call(m.FederatedRound(info.request_id, 0, weights))
    assert isinstance(round_info, m.RequestInfo)
    assert round_info.requirements == ["syfttestpkg"]  # each round runs in its plan's environment
    assert alice.get_request(round_info.request_id).wait(timeout=60).status == "done"


# ---- a build killed halfway ----------------------------------------------------------------


def uv_processes(data_dir: Path) -> list[int]:
    """uv processes working on this data dir (their command lines name it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"uv") and str(data_dir).encode() in b" ".join(command):
            found.append(int(entry.name))
    return found


def test_a_build_killed_halfway_leaves_the_cache_consistent(tmp_path: Path) -> None:
    index = tmp_path / "wheels"
    index.mkdir()
    # A wheel that is a FIFO: the resolver blocks reading it until the test writes it, so the
    # node is killed while the build is under way, deterministically.
    pending = index / wheel_name("slowpkg", "1.0")
    os.mkfifo(pending)
    owner_home, owner = person(tmp_path, "owner")
    _, alice = person(tmp_path, "alice")
    node = DomainProcess(tmp_path, "lab", owner_home, "--package-index", str(index))
    node.start()
    environments = node.data_dir / "environments"
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PRIVATE, mock=MOCK)
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        scientist = DomainClient(NodeConnection(node.address, alice))
        source = "def uses(df):\n    import slowpkg\n    return slowpkg.VALUE\n"
        request = scientist.submit(source, "uses", {"df": "patients"}, ["slowpkg"])
        approve(admin, request.id)
        deadline = time.monotonic() + 30
        while not (list(environments.glob(".build-*")) and uv_processes(node.data_dir)):
            assert time.monotonic() < deadline, "the build did not start"
            time.sleep(0.02)
        assert request.refresh().status == "building"
        node.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        node.kill()
        for pid in uv_processes(node.data_dir):  # the node's uv, left blocked on the FIFO
            os.kill(pid, signal.SIGKILL)
        left = sorted(p.name for p in environments.iterdir() if p.name != ".uv-cache")
        assert left[0].startswith(".build-") and left[1:] == ["resolved"]
        assert not list((environments / "resolved").iterdir())

        pending.unlink()
        pending.write_bytes(wheel_bytes("slowpkg", "1.0", "VALUE = 7\n"))
        node.start()  # the interrupted request runs again, and builds from scratch
        scientist = DomainClient(NodeConnection(node.address, alice))
        assert scientist.get_request(request.id).result(timeout=60) == 7
        left = sorted(p.name for p in environments.iterdir() if p.name != ".uv-cache")
        assert len(left) == 2 and left[1] == "resolved" and not left[0].startswith(".")
        admin = AdminClient(NodeConnection(node.address, owner))
        assert len(builds(admin)) == 1
        assert admin.audit_log().chain_ok
    finally:
        node.kill()
        for pid in uv_processes(node.data_dir):
            os.kill(pid, signal.SIGKILL)


def uses_twinpkg(df):
    import twinpkg

    return twinpkg.VALUE


def test_a_killed_uv_fails_the_request_and_a_later_one_builds(world: dict) -> None:
    alice, admin, node = world["alice"], world["admin"], world["node"]
    environments = node.data_dir / "environments"
    before = sorted(p.name for p in environments.iterdir() if p.name != ".uv-cache")
    source = "def uses(df):\n    import killpkg\n    return killpkg.VALUE\n"
    request = alice.submit(source, "uses", {"df": "patients"}, ["killpkg"])
    approve(admin, request.id)
    deadline = time.monotonic() + 30
    while not uv_processes(node.data_dir):
        assert time.monotonic() < deadline, "the build did not start"
        time.sleep(0.02)
    for pid in uv_processes(node.data_dir):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(RequestFailed, match="uv was killed by signal 9"):
        request.result(timeout=60)
    after = sorted(p.name for p in environments.iterdir() if p.name != ".uv-cache")
    assert after == before  # nothing half-built is left, nothing is cached
    fifo = world["index"] / wheel_name("killpkg", "1.0")
    fifo.unlink()
    fifo.write_bytes(wheel_bytes("killpkg", "1.0", "VALUE = 9\n"))
    again = alice.submit(source, "uses", {"df": "patients"}, ["killpkg"])
    approve(admin, again.id)
    assert again.result(timeout=60) == 9


def test_one_build_at_a_time_per_environment(world: dict) -> None:
    """Requests for the same new environment at once: one build, and every job gets it."""
    alice, admin = world["alice"], world["admin"]
    before = len(builds(admin))
    requests = [alice.request(uses_twinpkg, df="patients", requirements=["twinpkg"])]
    requests.append(alice.request(uses_twinpkg, df="patients", requirements=["twinpkg"]))
    threads = [threading.Thread(target=approve, args=(admin, r.id)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.result(timeout=60) for r in requests] == [2, 2]
    assert len(builds(admin)) == before + 1


def test_request_cells_declare_requirements() -> None:
    line = parse_line('h/patients as df --requirements "statsmodels==0.14.4  humanize" --out r')
    assert (line.requirements, line.out) == (("statsmodels==0.14.4", "humanize"), "r")
    assert parse_line("h/patients as df --requirements humanize").requirements == ("humanize",)
    assert parse_line("h/patients as df").requirements == ()
    for text, message in [
        ('h/p as df --requirements ""', "needs packages"),
        ('h/p as df --requirements "humanize', "cannot read the line"),
        ("h/p as df --requirements humanize --dp-epsilon 1", "DP query runs the domain's own"),
        ("*/p as df --aggregate sum --requirements humanize", "no --requirements"),
    ]:
        with pytest.raises(CellError, match=message):
            parse_line(text)


def test_review_surfaces_show_requirements(world: dict) -> None:
    from jupyter_syft.server.backend import request_json, review_json
    from jupyter_syft.widgets.approval import ApprovalPanel

    alice, admin = world["alice"], world["admin"]
    request = alice.request(plain, df="patients", requirements=["twinpkg==2.0", "syfttestpkg"])
    assert request.requirements == ["syfttestpkg", "twinpkg==2.0"]  # canonical, sorted
    panel = ApprovalPanel(admin, poll_s=None)
    try:
        card = panel.cards[request.id].children[0].value
        assert "<code>syfttestpkg</code>, <code>twinpkg==2.0</code>" in card
    finally:
        panel.close()
    info = admin.get_request(request.id).info
    assert review_json("lab", info, {})["requirements"] == ["syfttestpkg", "twinpkg==2.0"]
    assert request_json("lab", request.info)["requirements"] == ["syfttestpkg", "twinpkg==2.0"]
    admin.get_request(request.id).deny("not needed")  # type: ignore[attr-defined]


def test_request_cell_with_requirements_shows_the_build(world: dict) -> None:
    """`%%request ... --requirements`: the cell shows the build's stage while the domain builds
    (held here resolving, on a wheel that is a FIFO), then the result."""
    from kernel_client import SyftKernel

    kernel = SyftKernel(world["alice_home"])
    try:
        assert kernel.execute(f"%syft connect {world['node'].address}").status == "ok"
        cell = kernel.execute(
            '%%request lab/patients as df --requirements "gatepkg" --out gated\n'
            "import gatepkg\n"
            "gatepkg.VALUE + len(df)"
        )
        assert cell.status == "ok", cell.text
        pending = world["admin"].requests("pending")
        [review] = [r for r in pending if r.requirements == ["gatepkg"]]
        review.approve()  # type: ignore[attr-defined]
        # the node's words on the build's stage (held resolving, on the FIFO)
        shown = kernel.update(cell.display_id, "building environment: resolving 1 requirement")
        assert shown.count("building environment") == 1, shown
        with (world["index"] / wheel_name("gatepkg", "1.0")).open("wb") as fifo:
            fifo.write(wheel_bytes("gatepkg", "1.0", "VALUE = 1000\n"))
        kernel.update(cell.display_id, "result bound to gated", timeout=60)
        shown = kernel.execute("print(gated)")
        assert shown.text.strip() == "1100"
    finally:
        kernel.stop()
