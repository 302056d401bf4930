"""The Syft magics: `%syft ...`, `%%mock` and `%%request`.

Bad input of any kind (an unknown domain or dataset, an offline domain, a syntax error) is
raised as IPython's UsageError: the cell shows one clear line and no traceback, and fails, so
"run all" stops there as it would on any other error.
"""

from __future__ import annotations

import ast
import contextlib
from typing import Any

from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

from jupyter_syft.errors import NotAuthorisedError, SyftError, Unreachable
from jupyter_syft.kernel import display as show
from jupyter_syft.kernel import dp
from jupyter_syft.kernel.aggregate import AggregateCell
from jupyter_syft.kernel.cells import (
    FUNCTION_NAME,
    CellError,
    CellLine,
    Source,
    cell_to_function,
    parse_line,
    parse_options,
    split_last_expression,
)
from jupyter_syft.kernel.commands import COMMANDS, command, usage
from jupyter_syft.kernel.session import SyftSession, reason
from jupyter_syft.kernel.watch import RequestBook, Submission, Target

WAIT_TIMEOUT_S = 300.0


@magics_class
class SyftMagics(Magics):
    def __init__(self, shell: Any, session: SyftSession, book: RequestBook) -> None:
        super().__init__(shell)
        self.session = session
        self.book = book

    @property
    def kernel_shell(self) -> ZMQInteractiveShell:
        """`self.shell`, which SyftKernel always sets: ipykernel's shell."""
        assert isinstance(self.shell, ZMQInteractiveShell)
        return self.shell

    # ---- %syft -----------------------------------------------------------------------------

    @line_magic
    def syft(self, line: str) -> None:
        """Connect, look around and keep track of requests; `%syft` alone lists the commands."""
        name, _, rest = line.strip().partition(" ")
        found = COMMANDS.get(name)
        if not name:
            print(usage())
        elif found is None:
            raise UsageError(f"unknown command {name!r}\n{usage()}")
        else:
            getattr(self, found.method)(rest.strip())

    @command("budget", "your privacy budgets: epsilon spent and left per dataset and domain")
    def _budget(self, _: str) -> None:
        if not self.session.domains:
            raise UsageError("not connected to any domain yet: %syft connect ADDR (or demo)")
        rows, offline = [], []
        for name, client in sorted(self.session.domains.items()):
            try:
                found = client.budgets()
            except Unreachable:
                offline.append(name)
                continue
            except SyftError as exc:
                raise UsageError(f"domain {name!r} cannot show your budgets: {exc}") from None
            rows += [(name, found[dataset]) for dataset in sorted(found)]
        bundle: dict[str, Any] = show.budgets(rows, offline)
        if rows:  # the gauge widgets where widgets render; the HTML table elsewhere
            bundle = {**_gauges(rows)._repr_mimebundle_(), **bundle}
        display(bundle, raw=True)

    @command(
        "connect", "connect to a domain or network node (multiaddr), or the local demo", "ADDR|demo"
    )
    def _connect(self, address: str) -> None:
        if not address:
            raise UsageError("usage: %syft connect ADDR (a domain or network multiaddr) or demo")
        clients = (
            self.session.connect_demo() if address == "demo" else [self.session.connect(address)]
        )
        for client in clients:
            colour = show.COLOURS["done"]
            if client is self.session.network:
                count = len(self.session.network_domains())
                text = f"connected to network {client.name} ({_count(count, 'domain')})"
            else:
                datasets = _count(len(self.session.listing(client.name)), "dataset")
                role = client.role or "stranger: ask the owner to add you (%syft whoami)"
                text = f"connected to domain {client.name} ({datasets}; you: {role})"
                if client.sandbox == "off":  # approved code there runs unconfined
                    text, colour = text + "; sandbox OFF", show.COLOURS["error"]
            display(show.note(text, colour), raw=True)

    @command("domains", "the domains you can reach, and their datasets")
    def _domains(self, _: str) -> None:
        rows = []
        for name, client in sorted(self.session.domains.items()):
            try:
                found, state = sorted(self.session.listing(name, fresh=True)), "online"
                client.hello()  # its sandbox level now: the owner may have restarted it
            except (UsageError, Unreachable):
                found, state = [], "offline"
            sandbox = show.sandbox_cell(client.sandbox)
            role = client.role or "stranger"
            rows.append([name, client.peer_id, state, role, sandbox, ", ".join(found)])
        if self.session.network is not None:
            for domain in self.session.network_domains():
                if domain.name not in self.session.domains:
                    state = "online" if domain.online else "offline"
                    count = _count(domain.dataset_count, "dataset")
                    unknown = "(connect to see)"
                    rows.append([domain.name, domain.peer_id, state, "(via the network)", unknown,
                                 count])  # fmt: skip
        if not rows:
            raise UsageError("not connected to any domain yet: %syft connect ADDR (or demo)")
        headers = ["domain", "peer id", "status", "you", "sandbox", "datasets"]
        display(show.table(headers, rows), raw=True)

    @command("search", "datasets whose name or description mentions TEXT", "TEXT")
    def _search(self, text: str) -> None:
        needle = text.lower()
        rows = {}
        for name in sorted(self.session.domains):
            try:
                listing = self.session.listing(name, fresh=True)
            except UsageError:
                continue
            for dataset in listing.values():
                if needle in f"{dataset.name} {dataset.description}".lower():
                    rows[name, dataset.name] = [
                        f"{name}/{dataset.name}", dataset.description, dataset.rows,
                        ", ".join(dataset.schema), "online",
                    ]  # fmt: skip
        if self.session.network is not None:
            for hit in self.session.network_search(text):
                rows.setdefault((hit.domain, hit.dataset), [
                    f"{hit.domain}/{hit.dataset}", hit.description, hit.rows,
                    ", ".join(hit.schema), "online" if hit.online else "offline",
                ])  # fmt: skip
        if not rows:
            display(show.note(f"no dataset matches {text!r}"), raw=True)
            return
        headers = ["dataset", "description", "rows", "columns", "domain"]
        display(show.table(headers, list(rows.values())), raw=True)

    @command("requests", "your requests on the connected domains")
    def _requests(self, _: str) -> None:
        bound = {
            t.request.id: s.line.out
            for s in self.book.submissions
            for t in s.targets
            if t.request is not None and s.bound
        }
        rows = []
        for name, client in sorted(self.session.domains.items()):
            try:
                found = client.requests()
            except Unreachable:
                rows.append(["-", name, "", "offline", "", ""])
                continue
            for request in sorted(found, key=lambda r: r.info.submitted_at, reverse=True):
                info = request.info
                detail = info.reason or (info.error.strip().splitlines() or [""])[-1]
                datasets = ", ".join(info.inputs.values())
                rows.append(
                    [info.request_id, name, datasets, info.status, detail,
                     bound.get(info.request_id, "")]
                )  # fmt: skip
        if not rows:
            display(show.note("no requests yet"), raw=True)
            return
        headers = ["request", "domain", "datasets", "status", "detail", "bound to"]
        display(show.table(headers, rows), raw=True)

    @command(
        "fetch", "follow one of them (e.g. after a restart); bind its result", "ID [--out VAR]"
    )
    def _fetch(self, rest: str) -> None:
        words = rest.split()
        if not words or words[0].startswith("-"):
            raise UsageError("usage: %syft fetch REQUEST_ID [--out VAR] [--timeout S]")
        options = _options(words[1:])
        if "dp_epsilon" in options or "aggregate" in options:
            raise UsageError("usage: %syft fetch REQUEST_ID [--out VAR] [--timeout S]")
        name, request = self.session.find_request(words[0])
        request = dp.as_dp(request)
        inputs = dict(request.info.inputs)
        sources = tuple(Source(name, dataset, arg) for arg, dataset in inputs.items())
        target = Target(name, inputs, request)
        self.book.watch(Submission(self.kernel_shell, CellLine(sources, **options), [target]))

    @command(
        "wait",
        "block until this kernel's requests end (for notebooks run headless)",
        "[--timeout S]",
    )
    def _wait(self, rest: str) -> None:
        options = _options(rest.split())
        if "out" in options or "dp_epsilon" in options or "aggregate" in options:
            raise UsageError("usage: %syft wait [--timeout S]")
        timeout = options.get("timeout", WAIT_TIMEOUT_S)
        unfinished = self.book.wait(timeout)
        if unfinished:
            raise UsageError(
                f"{len(unfinished)} request(s) still running after {timeout:g} s; they carry on"
            )
        ended = len(self.book.submissions)
        display(show.note(f"all {ended} request cell(s) of this kernel have ended"), raw=True)

    @command("whoami", "your peer ID (give it to a data owner to be added)")
    def _whoami(self, _: str) -> None:
        from jupyter_syft.identity import syft_home

        rows = [
            ["peer id", self.session.node()],
            ["identity", str(syft_home())],
            ["domains", ", ".join(sorted(self.session.domains)) or "none"],
            ["network", self.session.network_address or "none"],
        ]
        display(show.table(["you", ""], rows), raw=True)

    # ---- cells -----------------------------------------------------------------------------

    @cell_magic
    def mock(self, line: str, cell: str) -> None:
        """Run the cell here and now with each NAME bound to its dataset's mock."""
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        parsed = self._parse(line)
        if parsed.aggregate is not None:
            raise UsageError("--aggregate is for %%request cells (a secure sum across domains)")
        if parsed.dp_epsilon is not None:
            raise UsageError("--dp-epsilon is for %%request cells (a DP query on the private data)")
        plans, _ = self.session.resolve(parsed.sources, fresh=False)
        plan = plans[0]
        try:
            tree = ast.parse(cell)
        except SyntaxError as exc:
            raise UsageError(_syntax_error(exc)) from None
        ast.increment_lineno(tree, 1)  # number lines as the editor does: the magic is line 1
        mocks = {n: self.session.mock(plan.domain.name, d) for n, d in plan.inputs.items()}
        shell = self.kernel_shell
        filename = shell.compile.cache(f"%%mock {line}\n{cell}", shell.execution_count)
        body, last = split_last_expression(tree)
        namespace = shell.user_ns
        namespace.update(mocks)
        exec(compile(body, filename, "exec"), namespace)
        value = eval(compile(last, filename, "eval"), namespace) if last is not None else None
        label = ", ".join(
            f"{plan.domain.name}/{d.name} as {n} ({d.info.mock_rows} mock rows)"
            for n, d in plan.inputs.items()
        )
        display(show.mock_result(label, value), raw=True)

    @cell_magic
    def request(self, line: str, cell: str) -> None:
        """Send the cell to run on the private data; returns at once, the status updates live."""
        parsed = self._parse(line)
        if parsed.dp_epsilon is not None:
            self._dp_request(line, parsed, cell)
            return
        if parsed.aggregate is not None:
            self._aggregate_request(line, parsed, cell)
            return
        try:
            code = cell_to_function(cell, [s.name for s in parsed.sources])
        except SyntaxError as exc:
            raise UsageError(_syntax_error(exc, " (nothing was sent)")) from None
        plans, skipped = self.session.resolve(parsed.sources, fresh=True)
        targets = []
        for plan in plans:
            datasets = {name: d.name for name, d in plan.inputs.items()}
            try:
                request = plan.domain.submit(code, FUNCTION_NAME, datasets, parsed.requirements)
                targets.append(Target(plan.domain.name, datasets, request))
            except SyftError as exc:
                if len(plans) == 1:
                    raise UsageError(_submit_error(plan.domain.name, exc)) from None
                error = _submit_error(plan.domain.name, exc)
                targets.append(Target(plan.domain.name, datasets, None, error=error))
        self.book.watch(Submission(self.kernel_shell, parsed, targets, skipped))

    def _dp_request(self, line: str, parsed: CellLine, cell: str) -> None:
        """Run the cell here with NAME bound to the dataset's DP queries at the cell's epsilon;
        its last expression sends the one query, which is then watched like any request."""
        __tracebackhide__ = True
        try:
            tree = ast.parse(cell)
            dp.check_cell(tree, parsed.sources[0].name)
        except SyntaxError as exc:
            raise UsageError(_syntax_error(exc, " (nothing was sent)")) from None
        except CellError as exc:
            raise UsageError(f"{exc} (nothing was sent)") from None
        plans, _ = self.session.resolve(parsed.sources, fresh=True)
        domain = plans[0].domain.name
        [(name, dataset)] = plans[0].inputs.items()
        ast.increment_lineno(tree, 1)
        shell = self.kernel_shell
        filename = shell.compile.cache(f"%%request {line}\n{cell}", shell.execution_count)
        body, last = split_last_expression(tree)
        assert last is not None  # check_cell: the cell ends with the query
        assert parsed.dp_epsilon is not None  # request(): only --dp-epsilon cells come here
        namespace = shell.user_ns
        namespace[name] = dp.DPTable(dataset, parsed.dp_epsilon)
        exec(compile(body, filename, "exec"), namespace)
        try:
            request = eval(compile(last, filename, "eval"), namespace)
        except SyftError as exc:
            raise UsageError(_dp_error(domain, exc)) from None
        target = Target(domain, {name: dataset.name}, request)
        if request.info.status == "done":  # auto-approved and answered: show it right here
            with contextlib.suppress(SyftError):  # the watcher tries again and says what failed
                target.value, target.fetched = request.result(), True
        self.book.watch(Submission(self.kernel_shell, parsed, [target]))

    def _aggregate_request(self, line: str, parsed: CellLine, cell: str) -> None:
        """Run the cell as one function on each domain and securely sum its vectors; returns at
        once, a thread waits for the owners and runs the rounds."""
        source = parsed.sources[0]
        try:
            code = cell_to_function(cell, [source.name])
        except SyntaxError as exc:
            raise UsageError(_syntax_error(exc, " (nothing was sent)")) from None
        if parsed.every_domain:
            plans, skipped = self.session.resolve(parsed.sources, fresh=True)
        else:
            plans, skipped = [], []
            for one in parsed.sources:
                plans += self.session.resolve((one,), fresh=True)[0]
        names = [plan.domain.name for plan in plans]
        if len(plans) < 3:
            raise UsageError(
                f"--aggregate needs {source.dataset!r} on at least 3 domains for secure "
                f"aggregation; found {len(plans)}: {', '.join(names) or 'none'} (nothing was sent)"
            )
        shell = self.kernel_shell
        filename = shell.compile.cache(code, shell.execution_count)
        namespace: dict[str, Any] = {}
        exec(compile(code, filename, "exec"), namespace)
        run = AggregateCell(
            shell, parsed, [plan.domain for plan in plans], namespace[FUNCTION_NAME],
            source.dataset, skipped,
        )  # fmt: skip
        run.start()

    def _parse(self, line: str) -> CellLine:
        try:
            return parse_line(line)
        except CellError as exc:
            raise UsageError(str(exc)) from None


def _options(words: list[str]) -> dict:
    try:
        return parse_options(words)
    except CellError as exc:
        raise UsageError(str(exc)) from None


def _gauges(rows: list[tuple[str, Any]]) -> Any:
    """A BudgetGauge widget per (domain, Budget), in one box."""
    import ipywidgets

    from jupyter_syft.widgets.budget import BudgetGauge

    gauges = [
        BudgetGauge(b.epsilon_spent, b.epsilon_left, heading=f"{domain}/{b.dataset} epsilon")
        for domain, b in rows
    ]
    return ipywidgets.VBox(gauges)


def _dp_error(domain: str, exc: Exception) -> str:
    """Why a DP query was refused; a refused query charges nothing."""
    from jupyter_syft.errors import BudgetExhausted

    if isinstance(exc, Unreachable):
        return f"domain {domain!r} is offline or unreachable ({reason(exc)}); nothing was charged"
    if isinstance(exc, BudgetExhausted):
        return (
            f"domain {domain!r} refused the DP query, budget exhausted: {exc} "
            "(nothing was charged; `%syft budget` shows what is left)"
        )
    return f"domain {domain!r} refused the DP query: {exc} (nothing was charged)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _syntax_error(exc: SyntaxError, outcome: str = "") -> str:
    """Where the cell fails to parse, counting the magic's line as line 1 like the editor."""
    where = f"line {(exc.lineno or 0) + 1}"
    text = (exc.text or "").rstrip("\n")
    caret = " " * max((exc.offset or 1) - 1, 0) + "^"
    return f"SyntaxError in the cell, {where}: {exc.msg}{outcome}\n    {text}\n    {caret}"


def _submit_error(domain: str, exc: Exception) -> str:
    if isinstance(exc, Unreachable):
        return f"domain {domain!r} is offline or unreachable ({reason(exc)})"
    if isinstance(exc, NotAuthorisedError):
        return f"domain {domain!r} refused the request: {exc} (give the owner your `%syft whoami`)"
    return f"domain {domain!r} refused the request: {exc}"
