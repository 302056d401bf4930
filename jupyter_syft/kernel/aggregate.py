"""`%%request ... --aggregate sum|mean`: the cell's vector summed (or averaged) across domains
by secure aggregation (`jupyter_syft.client.aggregate`), so no single domain's value is seen.

The aggregation runs in a thread: the cell returns at once and its status line is updated in
place until the sum arrives, which is then bound to `--out` and shown with its provenance.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from IPython.display import display

from jupyter_syft.kernel import display as show
from jupyter_syft.words import counted

if TYPE_CHECKING:
    from collections.abc import Callable

    from ipykernel.zmqshell import ZMQInteractiveShell

    from jupyter_syft.client.domain import DomainClient
    from jupyter_syft.kernel.cells import CellLine

POLICY = "aggregate: secure sum, no single domain's value was revealed"
DEFAULT_TIMEOUT_S = 600.0


class AggregateCell:
    """One `%%request --aggregate` cell: its status display, run and result."""

    def __init__(
        self,
        shell: ZMQInteractiveShell,
        line: CellLine,
        domains: list[DomainClient],
        fn: Callable[..., Any],
        dataset: str,
        skipped: list[str],
    ) -> None:
        self.shell, self.line, self.domains, self.fn, self.dataset = (
            shell, line, domains, fn, dataset,
        )  # fmt: skip
        self.skipped = skipped
        self.parent = shell.get_parent()
        self.display_id = uuid.uuid4().hex
        self.started = time.monotonic()
        self.done = threading.Event()
        self.stage = f"waiting for {len(domains)} owners' approval…"
        self.result: Any = None
        self.error = ""
        self._lock = threading.Lock()

    def start(self) -> None:
        self.show()
        threading.Thread(
            target=self._run, name=f"syft-aggregate-{self.display_id[:8]}", daemon=True
        ).start()

    def _run(self) -> None:
        from jupyter_syft.client.aggregate import aggregate

        tokens = self.shell.set_thread_parent(self.parent)
        try:
            timeout = self.line.timeout or DEFAULT_TIMEOUT_S
            self.result = aggregate(
                self.domains, self.fn, self.dataset, op=self.line.aggregate,  # type: ignore[arg-type]
                timeout=timeout, on_round=self._on_round,
            )  # fmt: skip
            self.shell.user_ns[self.line.out] = self.result.value
        except Exception as exc:  # shown in the cell, in place of the status
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()
            self.show(update=True)
            self.shell.reset_thread_parent(tokens)

    def _on_round(self, round_number: int) -> None:
        self.stage = f"approved; secure aggregation round {round_number}…"
        self.show(update=True)

    def show(self, update: bool = False) -> None:
        with self._lock:
            display(render(self), raw=True, display_id=self.display_id, update=update)


def render(cell: AggregateCell) -> show.Bundle:
    elapsed = f"{time.monotonic() - cell.started:.1f} s"
    source = ", ".join(f"{s} as {s.name}" for s in cell.line.sources)
    where = f"{source} --aggregate {cell.line.aggregate}"
    names = ", ".join(d.name for d in cell.domains)
    if cell.result is not None:
        outcome = f"result bound to {cell.line.out}"
    elif cell.done.is_set():
        outcome = f"{cell.line.out} not set"
    else:
        outcome = "other cells can run meanwhile"
    header = f"%%request {where} ({elapsed}; {outcome})"
    status = show.small(show.esc(f"{elapsed}; {outcome}"))
    markup = f"<div><b>%%request</b> {show.esc(where)} {status}</div>"
    lines = [header]
    if cell.result is not None:
        result = cell.result
        value_html, value_text = show.render(result.value)
        label = f"{result.op} over {counted(len(result.contributors), 'domain')}"
        origin = (
            f"contributed: {', '.join(sorted(result.contributors))}; dataset {cell.dataset}; "
            f"policy: {POLICY}"
        )
        dropped = [f"{name}: {why}" for name, why in result.dropped.items()]
        dropped += [f"{name}: offline" for name in cell.skipped]
        body = f"<div><b>{show.esc(label)}</b> = {value_html}</div>" + show.small(show.esc(origin))
        if dropped:
            body += show.small(show.esc("dropped: " + "; ".join(dropped)))
        markup += show.frame(show.COLOURS["done"], body)
        lines += [f"{label} = {value_text}", f"[{origin}]"]
        if dropped:
            lines.append("dropped: " + "; ".join(dropped))
    elif cell.error:
        markup += f"<div>{show.badge(show.COLOURS['error'], 'error')} {show.esc(cell.error)}</div>"
        lines.append(f"error: {cell.error}")
    else:
        pending = show.badge(show.COLOURS["pending"], "pending")
        markup += f"<div>{pending} {show.esc(cell.stage)}</div>"
        lines.append(f"{cell.stage} ({names})")
    return show.bundle(markup, "\n".join(lines))
