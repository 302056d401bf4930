"""Turning mocks, results, statuses and listings into rich output that is safe to show.

Much of what the kernel shows was written by other people: dataset names, descriptions, column
names and cell values of mocks, the owner's reasons, remote tracebacks. Every text is escaped
where it is put into HTML, and every HTML bundle passes an allow-list sanitiser (nh3) last, so
no markup from a peer can run script or restyle the notebook.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nh3

if TYPE_CHECKING:
    from jupyter_syft.kernel.watch import Submission, Target

MAX_ROWS = 20
MAX_COLUMNS = 20
MAX_DEPTH = 4
MAX_TEXT = 5000  # characters of a repr shown

Bundle = dict[str, str]

_TAGS = {
    "b", "br", "code", "div", "details", "em", "i", "p", "pre", "small", "span", "strong",
    "summary", "table", "tbody", "td", "th", "thead", "tr",
}  # fmt: skip
_ATTRIBUTES = {"div": {"style"}, "span": {"style", "title"}, "td": {"colspan"}, "th": {"colspan"}}
_STYLES = {
    "background-color", "border", "border-left", "border-radius", "color", "font-family",
    "font-size", "font-weight", "margin", "margin-top", "padding", "white-space",
}  # fmt: skip

COLOURS = {
    "mock": "#b45309",
    "pending": "#6b7280",
    "approved": "#2563eb",
    "building": "#2563eb",
    "running": "#2563eb",
    "done": "#15803d",
    "denied": "#b91c1c",
    "failed": "#b91c1c",
    "awaiting_release": "#b45309",
    "withheld": "#b91c1c",
    "lost": "#b45309",
    "error": "#b91c1c",
}


def sanitise(markup: str) -> str:
    """Keep only plain formatting: tables, text styles, a few style properties; no scripts,
    links, images, forms or event handlers."""
    return nh3.clean(markup, tags=_TAGS, attributes=_ATTRIBUTES, filter_style_properties=_STYLES)


def bundle(markup: str, text: str) -> Bundle:
    return {"text/html": sanitise(markup), "text/plain": text}


def esc(value: Any) -> str:
    return html.escape(str(value))


def frame(colour: str, markup: str) -> str:
    return (
        f'<div style="border-left: 4px solid {colour}; padding: 2px 8px; margin: 2px 0">'
        f"{markup}</div>"
    )


def badge(colour: str, label: str) -> str:
    return (
        f'<span style="background-color: {colour}; color: #ffffff; padding: 0 6px; '
        f'border-radius: 3px; font-weight: bold">{esc(label)}</span>'
    )


def small(text: str) -> str:
    return f'<div style="color: #6b7280; font-size: 85%">{text}</div>'


# ---- values -------------------------------------------------------------------------------


def render(value: Any, depth: int = 0) -> tuple[str, str]:
    """HTML and plain text of a value a request can return (or a mock cell computes):
    tables as tables, arrays and tensors with their shape and dtype, containers itemwise."""
    if _is(value, "pandas", "DataFrame", "Series"):
        frame_ = value.to_frame() if _is(value, "pandas", "Series") else value
        table = frame_.to_html(max_rows=MAX_ROWS, max_cols=MAX_COLUMNS, border=0)
        kind = type(value).__name__
        header = f"pandas {kind}, {len(frame_)} rows x {frame_.shape[1]} columns"
        return f"<small>{esc(header)}</small>{table}", f"{header}\n{value!r}"
    if _is(value, "pyarrow", "Table"):
        header = f"pyarrow Table, {value.num_rows} rows x {value.num_columns} columns"
        preview = value.slice(0, MAX_ROWS).to_pandas().to_html(max_cols=MAX_COLUMNS, border=0)
        return f"<small>{esc(header)}</small>{preview}", f"{header}\n{value.schema}"
    if _is(value, "numpy", "ndarray") or _is(value, "torch", "Tensor"):
        library = "numpy array" if _is(value, "numpy", "ndarray") else "torch tensor"
        dtype = str(value.dtype).removeprefix("torch.")
        header = f"{library}, shape {_shape(tuple(value.shape))}, dtype {dtype}"
        return f"<small>{esc(header)}</small><pre>{esc(value)}</pre>", f"{header}\n{value!r}"
    if isinstance(value, dict | list | tuple) and value and depth < MAX_DEPTH:
        return _render_container(value, depth)
    if _is(value, "numpy", "generic"):
        text = f"{value.item()!r} (numpy {value.dtype})"
        return f"<code>{esc(text)}</code>", text
    text = _clip(repr(value))
    return f"<code>{esc(text)}</code>", text


def _render_container(value: dict | list | tuple, depth: int) -> tuple[str, str]:
    """A key/value table of the first MAX_ROWS items; in text, the repr when it holds only
    scalars, else a line each."""
    items = list(value.items() if isinstance(value, dict) else enumerate(value))
    rows, lines = [], []
    for key, item in items[:MAX_ROWS]:
        item_html, item_text = render(item, depth + 1)
        rows.append(f"<tr><th>{esc(_clip(repr(key)))}</th><td>{item_html}</td></tr>")
        lines.append(f"{_clip(repr(key))}: {item_text}")
    if len(items) > MAX_ROWS:
        more = f"... and {len(items) - MAX_ROWS} more"
        rows.append(f"<tr><td colspan=2>{more}</td></tr>")
        lines.append(more)
    if all(_is_scalar(item) for _, item in items):
        return f"<table>{''.join(rows)}</table>", _clip(repr(value))
    return f"<table>{''.join(rows)}</table>", "\n".join(lines)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text)} characters)"


def _is_scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, bool | int | float | str)
        or _is(value, "numpy", "generic")
    )


def _is(value: Any, library: str, *types: str) -> bool:
    """isinstance against a library's types without importing it (the kernel starts faster):
    while a library is not loaded, no value can be of its types."""
    module = sys.modules.get(library)
    return module is not None and isinstance(value, tuple(getattr(module, t) for t in types))


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


# ---- listings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Marked:
    """A table cell with markup of its own (built from escaped parts) beside its plain text."""

    markup: str
    text: str

    def __str__(self) -> str:
        return self.text


def sandbox_cell(level: str) -> Marked:
    """A domain's sandbox level; "off" in red, as approved code there runs unconfined."""
    if level == "off":
        return Marked(badge(COLOURS["error"], "sandbox OFF"), "sandbox OFF")
    return Marked(esc(level), level)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> Bundle:
    """A plain table of texts (all escaped, bar `Marked` cells): for domains, search hits and
    requests."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c.markup if isinstance(c, Marked) else esc(c)}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]  # fmt: skip
    if title:
        markup = f"<b>{esc(title)}</b>{markup}"
        lines.insert(0, title)
    return bundle(markup, "\n".join(lines))


def mock_result(label: str, value: Any) -> Bundle:
    """A mock cell's value, framed and labelled so it cannot pass for a real result."""
    banner = f"{badge(COLOURS['mock'], 'MOCK')} computed on mock data, not the private data: "
    markup = f"<div>{banner}{esc(label)}</div>"
    text = f"[MOCK data, not the private data: {label}]"
    if value is not None:
        value_html, value_text = render(value)
        markup += value_html
        text += "\n" + value_text
    return bundle(frame(COLOURS["mock"], markup), text)


def note(text: str, colour: str = COLOURS["pending"]) -> Bundle:
    """A one-line message (a connection made, nothing found...)."""
    return bundle(frame(colour, esc(text)), text)


# ---- requests -----------------------------------------------------------------------------

STATUS_TEXT = {
    "pending": "pending: waiting for the owner's review",
    "approved": "approved: queued to run on the private data",
    "building": "approved: building environment (its declared requirements)",
    "running": "running on the private data",
    "done": "done: fetching the result",
    "denied": "denied by the owner",
    "failed": "failed on the domain",
    "awaiting_release": "ran: awaiting the owner's release of the result",
    "withheld": "the owner withheld the result",
    "lost": "connection lost, reconnecting (the request stays on the domain)",
    "error": "error",
}
POLICY_TEXT = {
    "raw": "raw result, released after the owner's review",
    "dp": "dp (differential privacy: OpenDP noise, epsilon charged to your budget)",
}


def submission(sub: Submission) -> Bundle:
    """The live status of a `%%request` cell, or its result with provenance once done."""
    elapsed = f"{time.monotonic() - sub.started:.1f} s"
    where = ", ".join(f"{s} as {s.name}" for s in sub.line.sources)
    parts, lines = [], []
    for target in sub.targets:
        part, line = _target(target, sub)
        parts.append(part)
        lines.append(line)
    if sub.skipped:
        skipped = f"skipped, offline: {', '.join(sub.skipped)}"
        parts.append(small(esc(skipped)))
        lines.append(skipped)
    if sub.superseded:
        outcome = f"{sub.line.out} left to a later cell"
    elif sub.done.is_set():
        outcome = f"result bound to {sub.line.out}" if sub.bound else f"{sub.line.out} not set"
    else:
        outcome = "other cells can run meanwhile"
    if sub.line.dp_epsilon is not None:
        where += f" --dp-epsilon {sub.line.dp_epsilon:g}"
    header = f"%%request {where} ({elapsed}; {outcome})"
    markup = f"<div><b>%%request</b> {esc(where)} {small(esc(f'{elapsed}; {outcome}'))}</div>"
    return bundle(markup + "".join(parts), "\n".join([header, *lines]))


def _target(target: Target, sub: Submission) -> tuple[str, str]:
    if target.fetched:
        origin = provenance(target)
        if _is(target.value, "jupyter_syft.client.privacy", "DPResult"):
            return _dp_result(target.value, target.domain, origin)
        value_html, value_text = render(target.value)
        markup = frame(COLOURS["done"], value_html + small(esc(origin)))
        return markup, f"{target.domain}: {value_text}\n[{origin}]"
    state, status, detail = _status(target, sub)
    short = target.request.id[:8] if target.request is not None else "-"
    text = f"{target.domain}: request {short} {status}" + (f": {detail}" if detail else "")
    markup = f"{badge(COLOURS[state], state)} <b>{esc(target.domain)}</b> request {esc(short)}: "
    markup += esc(status)
    if "\n" in detail:  # a remote traceback: its last line, the rest a click away
        summary = detail.strip().splitlines()[-1]
        markup += f"<details><summary>{esc(summary)}</summary><pre>{esc(detail)}</pre></details>"
    elif detail:
        markup += f": {esc(detail)}"
    return f"<div>{markup}</div>", text


def _dp_result(result: Any, domain: str, origin: str) -> tuple[str, str]:
    """A DP answer: what was asked, the noisy value, and what it cost and left."""
    value_html, value_text = render(result.value)
    summary = result.summary()
    markup = f"<div><code>{esc(result.label)}</code> = {value_html}</div>"
    markup += f"<div><b>{esc(summary)}</b></div>" + small(esc(origin))
    text = f"{domain}: {result.label} = {value_text}\n{summary}\n[{origin}]"
    return frame(COLOURS["done"], markup), text


def _status(target: Target, sub: Submission) -> tuple[str, str, str]:
    """The state to show (a request status, "lost" or "error"), its words, and details."""
    state = target.state
    if target.stopped:
        watched = f"stopped watching after {sub.line.timeout:g} s ({STATUS_TEXT[state]})"
        return state, f"{watched}; the request stays on the domain: `%syft requests` lists it", ""
    if state == "error":
        return state, STATUS_TEXT[state], target.error
    assert target.request is not None
    if state in ("denied", "withheld"):
        return state, STATUS_TEXT[state], target.request.info.reason or "(no reason given)"
    if state == "failed":
        return state, STATUS_TEXT[state], target.request.error
    return state, STATUS_TEXT[state], target.problem or target.request.info.note


def provenance(target: Target) -> str:
    """Where a result comes from: domain, datasets, request and the policy that released it."""
    assert target.request is not None
    info = target.request.info
    datasets = ", ".join(f"{d} as {n}" for n, d in target.datasets.items())
    policy = POLICY_TEXT.get(info.policy, info.policy)
    return (
        f"computed on the private data of domain {target.domain}, dataset {datasets}; "
        f"request {info.request_id}; policy: {policy}"
    )


# ---- privacy budgets ----------------------------------------------------------------------

GAUGE_WIDTH = 20  # characters of a budget gauge


def gauge(spent: float, left: float) -> tuple[str, str]:
    """A bar of the budget spent (filled) and left (empty), in HTML and in text."""
    total = spent + left
    filled = round(GAUGE_WIDTH * spent / total) if total else GAUGE_WIDTH
    share_left = left / total if total else 0.0
    colour = COLOURS["error"] if share_left == 0 else "#b45309" if share_left < 0.2 else "#15803d"
    bar_spent, bar_left = "\u2588" * filled, "\u2591" * (GAUGE_WIDTH - filled)
    markup = (
        f'<span style="font-family: monospace; color: {colour}">{bar_spent}</span>'
        f'<span style="font-family: monospace; color: #9ca3af">{bar_left}</span>'
    )
    return markup, bar_spent + bar_left


def budgets(rows: Sequence[tuple[str, Any]], offline: Sequence[str]) -> Bundle:
    """`%syft budget`: per domain and dataset, epsilon spent and left with a gauge.

    `rows` are (domain, Budget); `offline` the domains that could not be asked.
    """
    headers = ["domain", "dataset", "epsilon spent", "left", "of", "gauge", "delta spent / of"]
    cells, lines = [], []
    for domain, budget in rows:
        bar_html, bar_text = gauge(budget.epsilon_spent, budget.epsilon_left)
        numbers = [f"{budget.epsilon_spent:g}", f"{budget.epsilon_left:g}", f"{budget.epsilon:g}"]
        delta = f"{budget.delta_spent:g} / {budget.delta:g}" if budget.delta else "-"
        row = [domain, budget.dataset, *numbers]
        cells.append(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row)
            + f"<td>{bar_html}</td><td>{esc(delta)}</td></tr>"
        )  # fmt: skip
        lines.append([*row, bar_text, delta])
    markup = (
        "<b>your privacy budgets</b><table><thead><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in headers)
        + f"</tr></thead><tbody>{''.join(cells)}</tbody></table>"
    )  # fmt: skip
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *lines, strict=True)]
    text = ["your privacy budgets"] + [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *lines]
    ]
    if not rows:
        markup = text[0] = "no privacy budget granted to you on the connected domains"
        text = text[:1]
    if offline:
        skipped = f"not asked, offline: {', '.join(offline)}"
        markup += small(esc(skipped))
        text.append(skipped)
    return bundle(markup, "\n".join(text))
