"""The extension points' registries: each DP query kind, `%syft` command and executor backend
is one entry, and what users see (methods, help, completion, cell syntax) comes from it."""

from __future__ import annotations

import ast

import pytest

from jupyter_syft.client.privacy import DPQueries, query_kinds
from jupyter_syft.domain import executor
from jupyter_syft.domain.jobs import BACKENDS
from jupyter_syft.kernel import dp
from jupyter_syft.kernel.cells import CellError
from jupyter_syft.kernel.commands import registered, usage
from jupyter_syft.kernel.completion import complete
from jupyter_syft.kernel.magics import SyftMagics
from jupyter_syft.privacy.queries import QUERY_KINDS

pytestmark = pytest.mark.unit


def test_every_dp_query_kind_is_a_method_with_its_help() -> None:
    queries = DPQueries(None)  # type: ignore[arg-type]  # no call is made
    assert set(query_kinds()) == set(QUERY_KINDS) == {
        "count", "sum", "mean", "variance", "histogram", "quantile",
    }  # fmt: skip
    for name, kind in QUERY_KINDS.items():
        assert kind.summary
        method = getattr(queries, name)
        assert method.__doc__.startswith(kind.summary) and name in dir(queries)
    with pytest.raises(AttributeError, match="no DP query 'median': the queries are count"):
        queries.median  # noqa: B018


def test_the_kernels_dp_cells_take_every_registered_kind() -> None:
    table = dp.DPTable(None, 0.1)  # type: ignore[arg-type]
    for name in QUERY_KINDS:
        assert name in dir(table) and callable(getattr(table, name))
        dp.check_cell(ast.parse(f"df.{name}('x')"), "df")
    with pytest.raises(CellError, match="queries: count, sum, mean"):
        dp.check_cell(ast.parse("df.median('x')"), "df")
    with pytest.raises(AttributeError, match="offers only the DP queries count"):
        table.head  # noqa: B018


def test_every_syft_command_has_a_method_a_help_line_and_completion() -> None:
    commands = registered()
    assert set(commands) >= {"budget", "connect", "fetch", "requests", "wait", "whoami"}
    lines = usage().split("\n\n")[0].splitlines()  # the commands; the cell magics follow
    assert len(lines) == len(commands)
    for line, found in zip(lines, commands.values(), strict=True):
        assert line.startswith(f"%syft {found.name}") and found.summary in line
        assert callable(getattr(SyftMagics, found.method))
    reply = complete("%syft ", 6, {})
    assert reply is not None
    assert reply["matches"] == sorted(commands)


def test_the_local_pool_is_the_first_executor_backend() -> None:
    assert next(iter(BACKENDS)) == executor.BACKEND == "local"
