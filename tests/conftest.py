"""Shared test settings."""

from __future__ import annotations

import multiprocessing.process
import subprocess
from collections.abc import Iterator

import pytest
from nodes import DomainProcess, person
from shared_domains import SharedDomain, SharedDomains, wait_until_warm

from jupyter_syft.client.connection import close_shared_peers


@pytest.fixture(autouse=True, scope="module")
def _stop_client_peers() -> Iterator[None]:
    """Each test module starts with no libp2p client peers left running by the one before."""
    yield
    close_shared_peers()


KINDS = ("unit", "multiprocess", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is one kind (pyproject's markers): browser tests by their folder, the
    unmarked as multiprocess. `make test-fast` runs `-m unit`."""
    for item in items:
        marked = [kind for kind in KINDS if item.get_closest_marker(kind) is not None]
        if len(marked) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {marked}: one kind only")
        if not marked:
            browser = "browser" in item.path.parts
            item.add_marker(pytest.mark.browser if browser else pytest.mark.multiprocess)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked unit that starts a process is mis-marked: it fails at once."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test started a process: mark it multiprocess")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        patch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
        yield


@pytest.fixture(scope="session")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDomain]:
    """One plain domain "clinic" (default flags) for the modules that need no more: started
    and warmed up once per run instead of once per module. Each module adds datasets of its
    own names and scientists in its own folder, so the modules stay independent."""
    root = tmp_path_factory.mktemp("clinic")
    owner_home, owner = person(root, "owner")
    node = DomainProcess(root, "clinic", owner_home)
    try:
        node.start()
        shared = SharedDomain(node, owner)
        wait_until_warm([shared.admin()])
        yield shared
    finally:
        node.kill()


FIVE = ("north", "south", "east", "west", "centre")


@pytest.fixture(scope="session")
def five_domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDomains]:
    """Five plain domains (jobs time out after 30 s) for the modules that aggregate and train
    across several, each started once per run when a module first asks for it (up()). Each
    module adds datasets of its own names and scientists in its own folder."""
    root = tmp_path_factory.mktemp("five")
    nodes, owners = {}, {}
    for name in FIVE:
        home, owners[name] = person(root, f"owner-{name}")
        nodes[name] = DomainProcess(root, name, home, "--job-timeout", "30")
    try:
        yield SharedDomains(nodes, owners)
    finally:
        for node in nodes.values():
            node.kill()
