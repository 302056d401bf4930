"""The data scientist's view of a domain: datasets, mocks, requests and results."""

from __future__ import annotations

import ast
import hashlib
import html
import inspect
import linecache
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.distributed import Distributed
from jupyter_syft.client.mocks import labelled_mock
from jupyter_syft.client.progress import job_progress
from jupyter_syft.crypto.seal import ResultSeal, SealError, open_sealed
from jupyter_syft.errors import InvalidError, RequestDenied, RequestFailed, ResultWithheld
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values
from jupyter_syft.wire.receipts import AuditReceipt
from jupyter_syft.wire.resources import ResourceError, describe_placement, resources_from

if TYPE_CHECKING:
    from jupyter_syft.client.models import ModelMap
    from jupyter_syft.client.privacy import Budget, Budgets, DPQueries

FINAL_STATES = ("done", "denied", "failed", "withheld")
POLL_S = 30.0


Item = TypeVar("Item")


class Dataset:
    """Metadata of a dataset; `mock` fetches its mock once and keeps it."""

    def __init__(self, connection: NodeConnection, info: m.DatasetInfo) -> None:
        self._connection = connection
        self.info = info
        self._mock: Any = None

    name = property(lambda self: self.info.name)
    description = property(lambda self: self.info.description)
    schema = property(lambda self: dict(self.info.schema))
    rows = property(lambda self: self.info.rows)

    @property
    def dp(self) -> DPQueries:
        """The built-in DP queries on this dataset (and DP training): `ds.dp.mean(...)`."""
        from jupyter_syft.client.privacy import DPQueries  # it builds on this module

        return DPQueries(self)

    def distributed(self) -> Distributed:
        """This dataset as a ray.data Dataset over its partitions on the domain, for
        `domain.request(fn, df=ds.distributed())`: the job maps and aggregates over more rows
        than one machine holds. Only for a dataset stored as partitions (`info.partitions`);
        the domain refuses others at submission."""
        return Distributed(self)

    @property
    def mock(self) -> Any:
        if self._mock is None:
            data = self._connection.call(m.GetMock(self.name))
            decoded = values.table_to_data(self._connection.table(data))
            self._mock = labelled_mock(decoded, self.name)  # its displays say MOCK
        return self._mock

    def __repr__(self) -> str:
        stored = f", {self.info.partitions} partitions" if self.info.partitions else ""
        return (
            f"<Dataset {self.name}: {self.info.kind}, {self.rows} rows{stored}, "
            f"{self.description!r}>"
        )

    def _repr_html_(self) -> str:
        columns = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in self.info.schema.items()
        )
        return (
            f"<b>{html.escape(self.name)}</b> ({self.info.kind}, {self.rows} rows, "
            f"mock {self.info.mock_rows} rows)<br>{html.escape(self.description)}"
            f"<table><tr><th>column</th><th>type</th></tr>{columns}</table>"
        )


class NamedMap(Mapping[str, Item]):
    """A domain's datasets or models by name, as listed when read (a fresh listing each time
    the domain's attribute is read); an unknown name says which names there are."""

    kind = "item"

    def __init__(self, items: list[Item], domain_name: str) -> None:
        self._by_name = {item.name: item for item in items}  # type: ignore[attr-defined]
        self._domain_name = domain_name

    def __getitem__(self, name: str) -> Item:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name) or "none"
            raise KeyError(
                f"no {self.kind} {name!r} on domain {self._domain_name!r} ({self.kind}s: {known})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return "\n".join(repr(item) for item in self._by_name.values()) or f"<no {self.kind}s>"


class DatasetMap(NamedMap[Dataset]):
    """`domain.datasets["name"]`."""

    kind = "dataset"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(d.name)}</td><td>{d.info.kind}</td><td>{d.rows}</td>"
            f"<td>{html.escape(d.description)}</td></tr>"
            for d in self._by_name.values()
        )
        return (
            "<table><tr><th>dataset</th><th>kind</th><th>rows</th><th>description</th></tr>"
            f"{rows}</table>"
        )


class RemoteRequest:
    """A request on a domain: its live status, and its result once done."""

    def __init__(self, connection: NodeConnection, info: m.RequestInfo) -> None:
        self._connection = connection
        self.receipts: list[AuditReceipt] = []
        self.info = info
        self._result: Any = None
        self._has_result = False

    @property
    def info(self) -> m.RequestInfo:
        return self._info

    @info.setter
    def info(self, info: m.RequestInfo) -> None:
        """Replies about this request carry the node's signed receipts for its audit entries
        (submission, decisions, run): checked, kept in `receipts` and the user's receipts
        file (jupyter_syft.wire.receipts). A listing carries none and keeps those known."""
        self._info = info
        if info.receipts:
            self.receipts = self._connection.keep_receipts(info.receipts, info.request_id)

    @property
    def id(self) -> str:
        return self.info.request_id

    @property
    def status(self) -> str:
        """pending, approved, running, awaiting_release (the owner looks at the result before
        it is released), done, denied, failed or withheld."""
        return self.refresh().status

    @property
    def error(self) -> str:
        """Why the job failed: the full text if the owner released it, else the exception
        type and the lines of your code it went through."""
        return self.info.error_full if self.info.released else self.info.error

    @property
    def requirements(self) -> list[str]:
        """The packages the request declared, as the domain checked them: its job runs with
        them on top of the domain's own."""
        return list(self.info.requirements)

    @property
    def log(self) -> str:
        """The job's stdout and stderr: shown once the owner released them ("" until then)."""
        return self.info.log

    @property
    def resources(self) -> m.Resources | None:
        """What the request asked its domain's executor for (None: the domain's defaults)."""
        return self.info.resources

    @property
    def placement(self) -> m.Placement | None:
        """Where its job ran, with what, for how long and in how many attempts (None until it
        ran). The requester sees it too: it names machines and numbers, no private data, and
        its seconds are no more than the status times (decided_at, finished_at) already show;
        it tells them what their ask was given, e.g. after a cap."""
        return self.info.placement

    def refresh(self, wait_s: float = 0.0) -> m.RequestInfo:
        call = m.GetRequest(self.id, wait_s=wait_s, known_status=self.info.status)
        self.info = self._connection.call(call, timeout=wait_s + 30)
        return self.info

    def wait(self, timeout: float | None = None) -> m.RequestInfo:
        """Block until the request is done, denied or failed (or `timeout` passes), drawing the
        job's progress as a bar while it reports any."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with job_progress(f"request {self.id[:8]} ({self.info.function_name})") as show:
            while self.info.status not in FINAL_STATES:
                show(self.info.progress)
                left = POLL_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"request {self.id} is still {self.info.status} after {timeout} s"
                    )
                self.refresh(wait_s=min(left, POLL_S))
        return self.info

    def result(self, timeout: float | None = None) -> Any:
        """The value the code returned on the private data; raises if denied or failed."""
        if self._has_result:
            return self._result
        info = self.wait(timeout)
        if info.status == "denied":
            raise RequestDenied(self.id, info.reason)
        if info.status == "withheld":
            raise ResultWithheld(self.id, info.reason)
        if info.status == "failed":
            if not info.released:  # the owner may have released the full text since
                self.refresh()
            raise RequestFailed(self.id, self.error)
        me = self._connection.identity.peer_id
        if info.requester != me:
            raise SealError(
                f"the result of request {self.id} is sealed to its requester {info.requester}: "
                "only they can open it"
            )
        data = self._connection.call(m.FetchResult(self.id))
        self._result = self._open(data)
        self._has_result = True
        return self._result

    def _open(self, data: m.ResultData) -> Any:
        """Open each sealed piece with our key (which authenticates it), then decode."""
        connection = self._connection
        contexts = ResultSeal(self.id, connection.node_peer_id, self.info.requester)
        try:
            manifest = open_sealed(data.manifest, connection.identity, contexts.manifest())
            tables = [
                pa.ipc.open_file(connection.open_sealed_data(part, contexts.part(i))).read_all()
                for i, part in enumerate(data.parts)
            ]
        except SealError as exc:
            raise SealError(
                f"the result of request {self.id} from domain {connection.info.name!r} "
                f"cannot be opened: {exc}"
            ) from exc
        return values.decode_result(manifest, tables)

    def __repr__(self) -> str:
        return f"<Request {self.id[:8]} {self.info.function_name}: {self.info.status}>"

    def _repr_html_(self) -> str:
        info = self.info
        detail = info.reason or (self.error.splitlines()[-1] if self.error else "")
        extra = html.escape(detail)
        if info.placement is not None:
            extra += f"<br>ran: {html.escape(describe_placement(info.placement))}"
        return (
            f"<b>request {info.request_id[:8]}</b> <code>{html.escape(info.function_name)}"
            f"</code> on {html.escape(inputs_line(info))}: "
            f"<b>{info.status}</b> {extra}"
        )


def inputs_line(info: m.RequestInfo) -> str:
    """A request's datasets as its review surfaces show them: "diabetes (distributed), notes"."""
    return ", ".join(
        f"{dataset} (distributed)" if argument in info.distributed else dataset
        for argument, dataset in info.inputs.items()
    )


def requirement_list(requirements: Iterable[str]) -> list[str]:
    """A list of requirement strings; one string alone is one requirement, not its letters."""
    if isinstance(requirements, str):
        requirements = [requirements]
    return [str(r) for r in requirements]


def function_source(function: Callable[..., Any]) -> str:
    """The source text of a plain `def` (in a file or a notebook cell): what travels."""
    if not callable(function) or getattr(function, "__name__", "<lambda>") == "<lambda>":
        raise InvalidError("a function defined with `def` is needed here")
    try:
        return textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        name = function.__name__
        raise InvalidError(
            f"cannot read the source of {name} (defined in a REPL?): pass the source text "
            f'instead, domain.request("def {name}(df): ...", df=ds)'
        ) from exc


def as_function(function: Callable[..., Any] | str) -> Callable[..., Any]:
    """`function`, or the function that the source text `function` defines, made here.

    A plain `python` REPL keeps no source of what is typed into it, so there the text is what
    can travel. It must hold exactly one top-level `def`; the function is defined in a fresh
    namespace (as on the domain) and its text kept where `inspect.getsource` finds it, so
    that it travels like any function (and can run here on a mock).
    """
    if not isinstance(function, str):
        return function
    code = textwrap.dedent(function).strip() + "\n"
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise InvalidError(
            f"the source text is not valid Python: {exc.msg} (line {exc.lineno})"
        ) from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        lines = code.splitlines()
        found = "; ".join(f"line {n.lineno}: {lines[n.lineno - 1].strip()}" for n in tree.body)
        raise InvalidError(
            "the source text must hold exactly one top-level function definition "
            f'("def name(df): ..."), nothing else; it holds: {found or "nothing"}'
        )
    name = tree.body[0].name
    filename = f"<syft source {hashlib.sha256(code.encode()).hexdigest()[:12]}: {name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": "__syft_source__"}
    try:  # the caller's own code, in their own process (a default argument may fail)
        exec(compile(tree, filename, "exec"), namespace)
    except Exception as exc:
        raise InvalidError(f"defining {name} from the source text failed: {exc!r}") from None
    return namespace[name]


class DomainClient:
    """A connection to one domain node as this process's user."""

    request_type: type[RemoteRequest] = RemoteRequest

    def __init__(self, connection: NodeConnection) -> None:
        self._connection = connection

    @property
    def name(self) -> str:
        return self._connection.info.name

    @property
    def peer_id(self) -> str:
        return self._connection.info.peer_id

    @property
    def role(self) -> str:
        return self._connection.info.your_role

    @property
    def sandbox(self) -> str:
        """How this domain confines jobs: "on: <layers>", or "off" (its owner turned the
        sandbox off: approved code there runs with the node's files, keys and network)."""
        return self._connection.info.sandbox

    def hello(self) -> m.NodeInfo:
        """Ask the domain again who it is: its owner may have restarted it with the sandbox
        off (or added you), and `sandbox` and `role` show what it said last."""
        info = self._connection.call(m.Hello())
        assert isinstance(info, m.NodeInfo)
        self._connection.info = info
        return info

    @property
    def datasets(self) -> DatasetMap:
        listing = self._connection.call(m.ListDatasets())
        found = [Dataset(self._connection, d) for d in listing.datasets]
        return DatasetMap(found, self.name)

    @property
    def models(self) -> ModelMap:
        """Models served for homomorphic inference: `domain.models["risk"].predict_encrypted(x)`."""
        from jupyter_syft.client.models import ModelMap, RemoteModel  # TenSEAL: when asked

        listing = self._connection.call(m.ListModels())
        assert isinstance(listing, m.ModelList)
        models = [RemoteModel(self._connection, info) for info in listing.models]
        return ModelMap(models, self.name)

    def request(
        self,
        function: Callable[..., Any] | str,
        *,
        requirements: Iterable[str] = (),
        resources: m.Resources | Mapping[str, float] | None = None,
        **inputs: Dataset | Distributed | str,
    ) -> RemoteRequest:
        """Ask to run `function` on the private data of `inputs` (argument -> dataset; a
        `ds.distributed()` argument is a ray.data Dataset over its partitions on the domain).

        The function's source text travels, not a pickle: it must be a plain `def` whose
        source Python can find (in a file or a notebook cell), using only its arguments and
        the modules it imports itself; or that source text itself, one `def` in a string
        (`domain.request("def f(df): ...", df=ds)`: for a plain `python` REPL, which keeps
        no source). `requirements` ("statsmodels==0.14.4", ...) are packages it needs beyond
        the domain's own: the owner reviews them with the code, and the domain builds them
        (wheels from its package index) before the job runs. `resources` ({"cpus": 2,
        "gpus": 1, "memory_mb": 4096} or a `Resources`) is what the job asks the domain's
        executor for (a field left out: the domain's default; memory_mb is also the job's
        memory limit); the owner's policy caps it, and a domain whose machines have less
        refuses it at once, saying what they have.
        """
        function = as_function(function)
        return self.submit(
            function_source(function), function.__name__, inputs, requirements, resources
        )

    def submit(
        self,
        code: str,
        function_name: str,
        inputs: Mapping[str, Dataset | Distributed | str],
        requirements: Iterable[str] = (),
        resources: m.Resources | Mapping[str, float] | None = None,
        distributed: Iterable[str] = (),
    ) -> RemoteRequest:
        """Submit source `code` whose function `function_name` takes `inputs` as arguments;
        `resources` are checked here (unknown names, negative, NaN: InvalidError) first."""
        try:
            asked = resources_from(resources)
        except ResourceError as exc:
            raise InvalidError(str(exc)) from None
        names = {
            arg: d if isinstance(d, str) else d.name for arg, d in inputs.items()
        }  # `distributed` names the arguments taken as ray.data, as do Distributed inputs
        as_ray = [*distributed, *(a for a, d in inputs.items() if isinstance(d, Distributed))]
        call = m.SubmitRequest(
            code,
            function_name,
            names,
            requirements=requirement_list(requirements),
            resources=asked,
            distributed=list(dict.fromkeys(as_ray)),
        )
        info = self._connection.call(call)
        return self.request_type(self._connection, info)

    def requests(self, status: str = "") -> list[RemoteRequest]:
        """Your requests on this domain (all requests, for its admin)."""
        listing = self._connection.call(m.ListRequests(status))
        return [self.request_type(self._connection, r) for r in listing.requests]

    def get_request(self, request_id: str) -> RemoteRequest:
        info = self._connection.call(m.GetRequest(request_id))
        return self.request_type(self._connection, info)

    def budget(self, dataset: str | Dataset) -> Budget:
        """Your privacy budget on `dataset`: granted, spent, left (zero if none was granted)."""
        from jupyter_syft.client.privacy import Budget

        name = dataset.name if isinstance(dataset, Dataset) else dataset
        [info] = self._connection.call(m.GetBudget(name)).budgets
        return Budget(info)

    def budgets(self) -> Budgets:
        """Your privacy budgets on this domain, by dataset."""
        from jupyter_syft.client.privacy import Budgets

        return Budgets(self._connection.call(m.GetBudget()).budgets)

    def policy(self, dataset: str) -> m.PolicyInfo:
        """The owner's policy on `dataset`: DP auto-approval and the per-query epsilon cap,
        disclosure, allowed requirements, and the caps on what a request may ask for."""
        return self._connection.call(m.GetPolicy(dataset))

    def __repr__(self) -> str:
        sandbox = "sandbox OFF" if self.sandbox == "off" else f"sandbox {self.sandbox}"
        return f"<Domain {self.name} {self.peer_id} (you: {self.role or 'stranger'}; {sandbox})>"

    def _repr_html_(self) -> str:
        sandbox = (
            '<b style="color:#b91c1c">sandbox OFF</b>'
            if self.sandbox == "off"
            else html.escape(f"sandbox {self.sandbox}")
        )
        return (
            f"<b>domain {html.escape(self.name)}</b> <code>{html.escape(self.peer_id)}</code> "
            f"(you: {html.escape(self.role or 'stranger')}) &middot; {sandbox}"
        )
