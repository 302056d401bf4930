"""The Syft magics: `%syft ...`, `%%mock` and `%%request`.

Bad input of any kind (an unknown domain or dataset, an offline domain, a syntax error) is
raised as IPython's UsageError: the cell shows one clear line and no traceback, and fails, so
"run all" stops there as it would on any other error.
"""

from __future__ import annotations

import ast
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

from jupyter_syft.client.distributed import mock_dataset
from jupyter_syft.client.mocks import plain_mock
from jupyter_syft.errors import NotAuthorisedError, SyftError, Unreachable
from jupyter_syft.kernel import display as show
from jupyter_syft.kernel import dp, inputs
from jupyter_syft.kernel.aggregate import AggregateCell
from jupyter_syft.kernel.cells import (
    CellError,
    CellLine,
    Source,
    cell_to_function,
    parse_line,
    parse_options,
    request_name,
    split_last_expression,
)
from jupyter_syft.kernel.commands import COMMANDS, command, usage
from jupyter_syft.kernel.session import SyftSession, reason
from jupyter_syft.kernel.watch import RequestBook, Submission, Target
from jupyter_syft.wire.resources import resources_line
from jupyter_syft.words import counted

if TYPE_CHECKING:
    from jupyter_syft.wire.messages import RequestInfo

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
        self._check_connected()
        answers = self.session.ask_every_domain(lambda domain: domain.budgets())
        rows = [
            (name, found[dataset])
            for name, found in sorted(answers.by_domain.items())
            for dataset in sorted(found)
        ]
        bundle: dict[str, Any] = show.budgets(rows, answers.unanswered_line())
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
                text = f"connected to network {client.name} ({counted(count, 'domain')})"
            else:
                datasets = counted(len(self.session.listing(client.name)), "dataset")
                role = client.role or "stranger: ask the owner to add you (%syft whoami)"
                text = f"connected to domain {client.name} ({datasets}; you: {role})"
                if client.sandbox == "off":  # approved code there runs unconfined
                    text, colour = text + "; sandbox OFF", show.COLOURS["error"]
            display(show.note(text, colour), raw=True)

    @command("domains", "the domains you can reach, and their datasets")
    def _domains(self, _: str) -> None:
        rows, peer_ids = [], []
        for name, client in sorted(self.session.domains.items()):
            try:
                found, state = sorted(self.session.listing(name, fresh=True)), "online"
                client.hello()  # its sandbox level now: the owner may have restarted it
            except (UsageError, Unreachable):
                found, state = [], "offline"
            sandbox = show.sandbox_cell(client.sandbox)
            role = client.role or "stranger"
            rows.append([show.whole(name), state, role, sandbox, ", ".join(found)])
            peer_ids.append(f"peer id {client.peer_id}")
        if self.session.network is not None:
            for domain in self.session.network_domains():
                if domain.name not in self.session.domains:
                    state = "online" if domain.online else "offline"
                    count = counted(domain.dataset_count, "dataset")
                    rows.append(
                        [show.whole(domain.name), state, "(via the network)", "(connect to see)",
                         count]
                    )  # fmt: skip
                    peer_ids.append(f"peer id {domain.peer_id}")
        if not rows:
            raise UsageError("not connected to any domain yet: %syft connect ADDR (or demo)")
        headers = ["domain", "status", "you", "sandbox", "datasets"]
        display(show.table(headers, rows, below=peer_ids), raw=True)

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
                        show.whole(f"{name}/{dataset.name}"), "online", dataset.rows,
                        ", ".join(dataset.schema), dataset.description,
                    ]  # fmt: skip
        if self.session.network is not None:
            for hit in self.session.network_search(text):
                state = "online" if hit.online else "offline"
                rows.setdefault((hit.domain, hit.dataset), [
                    show.whole(f"{hit.domain}/{hit.dataset}"), state, hit.rows,
                    ", ".join(hit.schema), hit.description,
                ])  # fmt: skip
        if not rows:
            display(show.note(f"no dataset matches {text!r}"), raw=True)
            return
        headers = ["dataset", "domain status", "rows", "columns", "description"]
        display(show.table(headers, list(rows.values())), raw=True)

    @command("requests", "your requests on every domain you can reach, oldest first")
    def _requests(self, _: str) -> None:
        self._check_connected()
        bound = {
            t.request.id: s.line.out
            for s in self.book.submissions
            for t in s.targets
            if t.request is not None and s.bound
        }
        answers = self.session.ask_every_domain(lambda domain: domain.requests())
        found = [(name, r.info) for name, listed in answers.by_domain.items() for r in listed]
        missed = answers.unanswered_line()
        if not found:
            asked = counted(len(answers.by_domain), "domain")
            display(show.note(f"no requests of yours on the {asked} asked"), raw=True)
        else:
            headers = [
                "submitted", "request", "data", "function", "status", "detail", "resources",
                "bound to",
            ]  # fmt: skip
            rows = _request_rows(found, bound)
            title = f"your requests, oldest first (newest last): {counted(len(rows), 'request')}"
            display(show.table(headers, rows, title), raw=True)
        if missed:
            display(show.note(missed, show.COLOURS["lost"]), raw=True)

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
                f"{counted(len(unfinished), 'request cell')} still running after {timeout:g} s; "
                "they carry on"
            )
        ended = counted(len(self.book.submissions), "request cell")
        display(show.note(f"every request cell of this kernel has ended ({ended})"), raw=True)

    @command("whoami", "your peer ID (give it to a data owner to be added)")
    def _whoami(self, _: str) -> None:
        from jupyter_syft.identity import syft_home

        names = set(self.session.domains)
        network = "none"
        if self.session.network is not None:
            network = f"{self.session.network.name} at {self.session.network_address}"
            try:
                names.update(d.name for d in self.session.network_domains())
            except UsageError:
                network += " (unreachable now)"
        domains = "none"
        if names:
            domains = f"{counted(len(names), 'domain')}: {', '.join(sorted(names))}"
        rows = [
            ("peer id", self.session.node()),
            ("identity", str(syft_home())),
            ("domains", domains),
            ("network", network),
        ]
        display(show.fields(rows), raw=True)

    @command("help", "this list of commands and cell magics")
    def _help(self, _: str) -> None:
        print(usage())

    def _check_connected(self) -> None:
        if not self.session.domains and self.session.network is None:
            raise UsageError("not connected yet: %syft connect ADDR (a domain or network) or demo")

    # ---- cells -----------------------------------------------------------------------------

    @cell_magic
    def mock(self, line: str, cell: str) -> None:
        """Run the cell now on the mocks, as the function %%request sends (same kernel inputs).

        The function gets the values and imports from this kernel that the request would
        carry, and nothing else, so a name that would fail on the domain fails here too.
        With --dp-epsilon the DP query is answered here on the mock: free, nothing sent."""
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        parsed = self._parse(line)
        if parsed.aggregate is not None:
            raise UsageError("--aggregate is for %%request cells (a secure sum across domains)")
        plans, _ = self.session.resolve(parsed.sources, fresh=False)
        plan = plans[0]
        mocks = {
            n: plain_mock(self.session.mock(plan.domain.name, d)) for n, d in plan.inputs.items()
        }
        label = ", ".join(
            f"{plan.domain.name}/{d.name} as {n} ({d.info.mock_rows} mock rows)"
            for n, d in plan.inputs.items()
        )
        if parsed.distributed:  # the same code on a small local ray.data Dataset
            mocks = {n: mock_dataset(mock, _say) for n, mock in mocks.items()}
            label += " as local ray.data"
        if parsed.dp_epsilon is not None:
            [(name, dataset)] = plan.inputs.items()  # parse_line: one dataset with --dp-epsilon
            table = dp.MockDPTable(dataset, mocks[name], parsed.dp_epsilon)
            self._dp_mock(line, cell, name, table, label)
            return
        code, name, taken = self._cell_function(parsed, cell, list(mocks))
        shell = self.kernel_shell
        filename = shell.compile.cache(code, shell.execution_count)
        namespace: dict[str, Any] = {"__name__": "__main__"}  # as the domain's job has it
        exec(compile(code, filename, "exec"), namespace)
        shell.user_ns.update(mocks)  # the mocks stay here to explore
        if taken:
            label += f"; from this kernel: {', '.join(taken)}"
        figures, value = show.open_figures(), None
        try:
            value = namespace[name](**mocks)
        finally:  # what it drew, stamped MOCK, even if it then failed
            for drawn in show.drawn_mock_figures(label, figures, value):
                display(drawn, raw=True)
        display(show.mock_result(label, value), raw=True)

    def _dp_mock(self, line: str, cell: str, name: str, table: dp.MockDPTable, label: str) -> None:
        """A `--dp-epsilon` cell on the mock: run here with NAME bound to the DP queries on
        the mock, which answer at once (nothing sent, nothing charged)."""
        __tracebackhide__ = True
        try:
            tree = ast.parse(cell)
            dp.check_cell(tree, name)
        except SyntaxError as exc:
            raise UsageError(_syntax_error(exc)) from None
        except CellError as exc:
            raise UsageError(str(exc)) from None
        ast.increment_lineno(tree, 1)
        shell = self.kernel_shell
        filename = shell.compile.cache(f"%%mock {line}\n{cell}", shell.execution_count)
        body, last = split_last_expression(tree)
        assert last is not None  # check_cell: the cell ends with the query
        namespace = shell.user_ns
        namespace[name] = table
        exec(compile(body, filename, "exec"), namespace)
        try:
            value = eval(compile(last, filename, "eval"), namespace)
        except SyftError as exc:
            refused = f"the DP query was refused: {exc} (on the mock: nothing was sent)"
            raise UsageError(refused) from None
        display(show.mock_result(label, value), raw=True)

    @cell_magic
    def request(self, line: str, cell: str) -> None:
        """Send the cell to run on the private data, with the kernel values it uses; live status.

        The cell's free names go with it as its first lines, which the owner reviews: values
        (`threshold = 30`) as literals, modules and installed functions (`np`, `sqrt`)
        imported again; anything else is refused before sending. The request is named by
        --name or the cell's first line; the call returns at once."""
        parsed = self._parse(line)
        if parsed.dp_epsilon is not None:
            self._dp_request(line, parsed, cell)
            return
        if parsed.aggregate is not None:
            self._aggregate_request(line, parsed, cell)
            return
        params = [s.name for s in parsed.sources]
        code, function_name, _ = self._cell_function(parsed, cell, params, " (nothing was sent)")
        plans, skipped = self.session.resolve(parsed.sources, fresh=True)
        targets = []
        for plan in plans:
            datasets = {name: d.name for name, d in plan.inputs.items()}
            try:
                as_ray = list(datasets) if parsed.distributed else []
                request = plan.domain.submit(
                    code,
                    function_name,
                    datasets,
                    parsed.requirements,
                    dict(parsed.resources),
                    as_ray,
                )
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
        outcome = " (nothing was sent)"
        code, function_name, _ = self._cell_function(parsed, cell, [source.name], outcome)
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
            shell, parsed, [plan.domain for plan in plans], namespace[function_name],
            source.dataset, skipped,
        )  # fmt: skip
        run.start()

    def _cell_function(
        self, parsed: CellLine, cell: str, params: list[str], outcome: str = ""
    ) -> tuple[str, str, list[str]]:
        """The cell as the function a request sends and `%%mock` runs: its source, its name
        (`--name`, else the cell's first line) and the kernel values and imports it takes
        (jupyter_syft.kernel.inputs), shown to the owner as its first lines."""
        name = parsed.name or request_name(cell)
        try:
            bare = cell_to_function(cell, params, name)
            taken = inputs.capture(inputs.free_names(bare), self.kernel_shell.user_ns)
        except SyntaxError as exc:
            raise UsageError(_syntax_error(exc, outcome)) from None
        except CellError as exc:
            raise UsageError(f"{exc}{outcome}") from None
        code = cell_to_function(cell, params, name, inputs.preamble(taken))
        return code, name, [i.line for i in taken]

    def _parse(self, line: str) -> CellLine:
        try:
            return parse_line(line)
        except CellError as exc:
            raise UsageError(str(exc)) from None


def _say(text: str) -> None:
    print(text, flush=True)  # the cell's output, while Ray starts


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


def _request_rows(found: list[tuple[str, RequestInfo]], bound: dict[str, str]) -> list[list]:
    """One row per request, oldest first; a federated plan's rounds are counted in its row."""
    rounds: dict[tuple[str, str], list[RequestInfo]] = {
        (domain, info.request_id): [] for domain, info in found if info.plan is not None
    }
    shown = []
    for domain, info in found:
        plan = (domain, info.plan_round[0]) if info.plan_round is not None else None
        if plan is not None and plan in rounds:
            rounds[plan].append(info)
        else:
            shown.append((domain, info))
    rows = []
    for domain, info in sorted(shown, key=lambda pair: pair[1].submitted_at):
        detail = info.reason or (info.error.strip().splitlines() or [""])[-1]
        if info.plan is not None:
            its_rounds = _rounds_summary(rounds[domain, info.request_id], info.plan.rounds)
            detail = f"{its_rounds}; {detail}" if detail else its_rounds
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.submitted_at))
        data = [
            show.whole(f"{domain}/{dataset}" + (" (distributed)" * (arg in info.distributed)))
            for arg, dataset in info.inputs.items()
        ]
        datasets = show.Marked(", ".join(d.markup for d in data), ", ".join(d.text for d in data))
        rows.append(
            [show.whole(submitted), info.request_id[:8], datasets, info.function_name,
             show.status_cell(info.status), detail, resources_line(info),
             bound.get(info.request_id, "")]
        )  # fmt: skip
    return rows


def _rounds_summary(rounds: list[RequestInfo], planned: int) -> str:
    """A federated plan's rounds in a few words: how many ran, and in which status."""
    statuses = Counter(info.status for info in rounds)
    by_status = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    return f"rounds: {len(rounds)} of {planned}" + (f" ({by_status})" if by_status else "")


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
