"""`%%request DOMAIN/DATASET as NAME --dp-epsilon E`: a cell whose value is one DP query
(`%%mock` with the same line answers it on the mock, here and for free).

In such a cell NAME is bound, here in the kernel, to a `DPTable`: its methods are the domain's
built-in DP queries with `epsilon=E` filled in, so the cell reads as plain analysis
(`df.mean("bmi", bounds=(15, 50))`). No code travels: the call sends the query itself, which
the domain checks, charges to your budget and answers with noise (at once when the owner's
policy auto-approves it, after review otherwise).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

from jupyter_syft.kernel.cells import CellError

if TYPE_CHECKING:
    from jupyter_syft.client.domain import Dataset, RemoteRequest
    from jupyter_syft.client.privacy import DPQueryRequest, DPResult

QUICK_S = 2.0  # how long the cell waits for an auto-approved answer before the watcher takes over


class DPTable:
    """One dataset's DP queries at the cell's epsilon; an explicit `epsilon=` overrides it.
    Its methods are the registered query kinds (client.privacy.query_kinds)."""

    def __init__(self, dataset: Dataset, epsilon: float) -> None:
        self._dataset = dataset
        self._epsilon = epsilon

    def __getattr__(self, kind: str) -> Any:
        if kind.startswith("_") or kind not in kinds():
            raise AttributeError(
                f"in a --dp-epsilon cell the dataset offers only the DP queries "
                f"{', '.join(kinds())} (not {kind!r}); use %%mock to explore, or a %%request "
                "cell without --dp-epsilon"
            )

        def query(column: str = "", **options: Any) -> Any:
            options.setdefault("epsilon", self._epsilon)
            return self._ask(kind, column, options)

        from jupyter_syft.client.privacy import QUERY_OPTIONS, query_kinds

        query.__doc__ = f"{query_kinds()[kind]}\n\n{QUERY_OPTIONS}"
        return query

    def _ask(self, kind: str, column: str, options: dict[str, Any]) -> DPQueryRequest | DPResult:
        options.setdefault("timeout", QUICK_S)
        return self._dataset.dp.ask(kind, column, **options)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *kinds()]

    def __repr__(self) -> str:
        return f"<DP queries on {self._dataset.name}, epsilon {self._epsilon:g} each>"


class MockDPTable(DPTable):
    """`%%mock ... --dp-epsilon E`: the same queries answered here on the dataset's mock
    (public data) by the domain's own check and mechanism, to try a query for free: nothing
    is sent, no budget charged, and the answer says MOCK."""

    def __init__(self, dataset: Dataset, mock: Any, epsilon: float) -> None:
        super().__init__(dataset, epsilon)
        self._mock = mock

    def _ask(self, kind: str, column: str, options: dict[str, Any]) -> DPResult:
        from jupyter_syft.client.privacy import mock_answer

        return mock_answer(self._dataset, self._mock, kind, column, **options)

    def __repr__(self) -> str:
        return f"<DP queries on the mock of {self._dataset.name}, epsilon {self._epsilon:g} each>"


def kinds() -> tuple[str, ...]:
    from jupyter_syft.client.privacy import query_kinds

    return tuple(query_kinds())


def check_cell(tree: ast.Module, name: str) -> None:
    """Refuse, before anything is sent, a cell that is not "... then one `NAME.<kind>(...)`":
    the cell's value is that one query, and no other query may spend budget on the side."""
    usage = (
        f"a --dp-epsilon cell ends with one DP query on {name}, e.g. "
        f'{name}.mean("bmi", bounds=(15, 50)); queries: {", ".join(kinds())}'
    )
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == name
        and node.func.attr in kinds()
    ]
    last = tree.body[-1] if tree.body else None
    if not (isinstance(last, ast.Expr) and len(calls) == 1 and last.value is calls[0]):
        raise CellError(usage)


def as_dp(request: RemoteRequest) -> RemoteRequest:
    """A DP query's request as a DPQueryRequest (whose result is a DPResult), whatever call
    found it: listings and `get_request` give plain requests."""
    from jupyter_syft.client.privacy import DPQueryRequest
    from jupyter_syft.wire import messages as m

    if isinstance(request.info.privacy, m.DPQuery) and not isinstance(request, DPQueryRequest):
        return DPQueryRequest(request._connection, request.info)
    return request
