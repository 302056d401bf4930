"""syft.aggregate of a function that returns a number (the common case): summed as a vector of
one across real domain processes, returned as a number; and a function given as source text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kernel_client import SyftKernel
from nodes import Approver, person, write_demo
from shared_domains import SharedDomains

import jupyter_syft as syft
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.crypto.secagg import FRAC_BITS
from jupyter_syft.errors import InvalidError

NAMES = ["north", "south", "east"]
ROWS = 120


def private_table(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(100 + seed)
    return pd.DataFrame({"x": rng.integers(0, 8, ROWS), "y": rng.normal(50.0, 10.0, ROWS)})


PRIVATE = {name: private_table(i) for i, name in enumerate(NAMES)}
MOCK = pd.DataFrame({"x": np.arange(ROWS) % 8, "y": np.full(ROWS, 50.0)})
TOLERANCE = len(NAMES) * 2.0 ** -(FRAC_BITS + 1)  # n * 2^-(f+1), the library's stated bound


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, five_domains: SharedDomains) -> Iterator[dict]:
    """Three of the shared domains (conftest.py) with this module's dataset and scientist."""
    root: Path = tmp_path_factory.mktemp("secagg-scalar")
    scientist_home, scientist = person(root, "scientist")
    nodes = five_domains.up(NAMES)
    approver = None
    try:
        admins = {}
        for name in NAMES:
            admin = five_domains.admin(name)
            admin.create_dataset("table", private=PRIVATE[name], mock=MOCK)
            admin.add_user(scientist.peer_id, "data_scientist", "scientist")
            admins[name] = admin
        approver = Approver(admins)
        clients = [DomainClient(NodeConnection(node.address, scientist)) for node in nodes.values()]
        yield {"root": root, "nodes": nodes, "scientist_home": scientist_home, "domains": clients}
    finally:
        if approver is not None:
            approver.close()


@pytest.fixture
def domains(world: dict) -> list[DomainClient]:
    return world["domains"]


def total_y(df):
    return float(df["y"].sum())


def patients(df):
    return len(df)


def any_large(df):
    return bool((df["y"] > 60).any())


def test_a_float_scalar_sums_to_a_python_float(domains: list[DomainClient]) -> None:
    result = syft.aggregate(domains, total_y, dataset="table", op="sum", timeout=60)
    expected = sum(float(PRIVATE[name]["y"].sum()) for name in NAMES)
    assert type(result.value) is float
    assert abs(result.value - expected) <= TOLERANCE
    assert sorted(result.contributors) == sorted(NAMES)
    assert f"{result.value!r}>" in repr(result)  # shown as the number, not a one-element array


def test_an_int_scalar_sums_exactly_to_a_python_int_and_its_mean_is_a_float(
    domains: list[DomainClient],
) -> None:
    total = syft.aggregate(domains, patients, dataset="table", op="sum", timeout=60)
    assert type(total.value) is int
    assert total.value == len(NAMES) * ROWS
    mean = syft.aggregate(domains, patients, dataset="table", op="mean", timeout=60)
    assert type(mean.value) is float
    assert abs(mean.value - ROWS) <= TOLERANCE


def test_the_function_may_be_given_as_source_text(domains: list[DomainClient]) -> None:
    source = "def x_total(df):\n    return int(df['x'].sum())\n"
    result = syft.aggregate(domains, source, dataset="table", timeout=60)
    assert result.value == sum(int(PRIVATE[name]["x"].sum()) for name in NAMES)
    request = domains[0].get_request(result.requests["north"])
    assert request.info.function_name == "x_total"


def test_a_bool_is_refused_before_any_request_is_sent(domains: list[DomainClient]) -> None:
    before = len(domains[0].requests())
    with pytest.raises(InvalidError, match=r"must return a number or a non-empty 1-D vector.*bool"):
        syft.aggregate(domains, any_large, dataset="table", timeout=60)
    assert len(domains[0].requests()) == before


def test_a_kernel_cell_returning_a_number_binds_the_summed_number(world: dict) -> None:
    demo = write_demo(world["nodes"], world["root"] / "kernel")  # its scientist: root/homes/
    kernel = SyftKernel(world["scientist_home"], JUPYTER_SYFT_DEMO=str(demo))
    try:
        assert kernel.execute("%syft connect demo").status == "ok"
        cell = kernel.execute("%%request */table as df --aggregate sum --out total\nlen(df)")
        assert cell.status == "ok", cell.text
        text = kernel.update(cell.display_id, "result bound to total", timeout=90)
        assert f"sum over 3 domains = {len(NAMES) * ROWS}" in text, text
        bound = kernel.execute("print(type(total).__name__, total)")
        assert bound.text.strip() == f"int {len(NAMES) * ROWS}", bound.text
    finally:
        kernel.stop()
