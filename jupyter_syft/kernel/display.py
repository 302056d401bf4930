"""The kernel's rich output: mocks, results, statuses and listings, built from the safe-HTML
module (`jupyter_syft.safe_html`: escaping, the sanitiser, value rendering)."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jupyter_syft.safe_html import (
    COLOURS,
    Bundle,
    badge,
    bundle,
    esc,
    frame,
    is_a,
    render,
    small,
)
from jupyter_syft.words import REQUEST_STATUS

if TYPE_CHECKING:
    from jupyter_syft.kernel.watch import Submission, Target

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


def whole(text: str, markup: str = "") -> Marked:
    """A table cell kept on one line (a time, a domain/dataset): a browser would otherwise
    break it at its spaces and hyphens to squeeze the column."""
    return Marked(f'<span style="white-space: nowrap">{markup or esc(text)}</span>', text)


def status_cell(status: str) -> Marked:
    """A request's status as a coloured badge, its word whole (never wrapped or cut)."""
    return whole(status, badge(COLOURS.get(status, COLOURS["pending"]), status))


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str = "",
    below: Sequence[str] = (),
) -> Bundle:
    """A plain table of texts (all escaped, bar `Marked` cells): for domains, search hits and
    requests. `below[i]` (if given) is shown whole on its own line under row i: for peer
    IDs and addresses, which a table column would squeeze or cut."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    notes = [*below, *[""] * (len(rows) - len(below))]
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c.markup if isinstance(c, Marked) else esc(c)}</td>" for c in row)
        + "</tr>"
        + (f'<tr><td colspan="{len(headers)}"><code>{esc(note)}</code></td></tr>' if note else "")
        for row, note in zip(rows, notes, strict=True)
    )
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row, note in zip([headers, *rows], ["", *notes], strict=True):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if note:
            lines.append(f"    {note}")
    if title:
        markup = f"<b>{esc(title)}</b>{markup}"
        lines.insert(0, title)
    return bundle(markup, "\n".join(lines))


def fields(rows: Sequence[tuple[str, str]]) -> Bundle:
    """Labelled values one per line, each value whole (peer IDs, paths, multiaddrs wrap as
    one word instead of being squeezed into a table column)."""
    markup = "".join(f"<div><b>{esc(label)}</b> <code>{esc(v)}</code></div>" for label, v in rows)
    width = max(len(label) for label, _ in rows)
    return bundle(markup, "\n".join(f"{label:<{width}}  {v}" for label, v in rows))


def mock_result(label: str, value: Any) -> Bundle:
    """A mock cell's value, framed and labelled so it cannot pass for a real result; a figure
    (Figure or Axes) as a PNG with the MOCK banner drawn into the image itself."""
    from jupyter_syft.wire.values import figure_of

    figure = figure_of(value)
    if figure is not None:
        return mock_figure(label, figure)
    banner = f"{badge(COLOURS['mock'], 'MOCK')} computed on mock data, not the private data: "
    markup = f"<div>{banner}{esc(label)}</div>"
    text = f"[MOCK data, not the private data: {label}]"
    if value is not None:
        value_html, value_text = render(value)
        markup += value_html
        text += "\n" + value_text
    return bundle(frame(COLOURS["mock"], markup), text)


MOCK_STAMP = "MOCK: computed on mock data, not the private data"


def open_figures() -> set[int]:
    """The numbers of matplotlib's open figures (none while pyplot was never imported)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    return set() if pyplot is None else set(pyplot.get_fignums())


def drawn_mock_figures(label: str, before: set[int], returned: Any) -> list[Bundle]:
    """The figures a mock cell drew but did not return (`before`: those open when it began),
    each with the MOCK banner and closed, so the inline backend never shows one bare."""
    from jupyter_syft.wire.values import figure_of

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    kept = figure_of(returned)
    drawn = [pyplot.figure(n) for n in sorted(open_figures() - before)]
    return [mock_figure(label, figure) for figure in drawn if figure is not kept]


def mock_figure(label: str, figure: Any) -> Bundle:
    """A figure drawn on mocks: the MOCK banner is part of the image (it stays on the picture
    when copied), and the figure is closed so the inline backend does not show it again
    without it."""
    from matplotlib import pyplot

    from jupyter_syft.wire.values import figure_png

    stamp = figure.text(
        0.0, 1.0, f" {MOCK_STAMP} ", ha="left", va="bottom", color="white",
        fontweight="bold", backgroundcolor=COLOURS["mock"], transform=figure.transFigure,
    )  # fmt: skip
    try:
        data = figure_png(figure)
    finally:
        stamp.remove()
        pyplot.close(figure)
    return image(data, f"[MOCK data, not the private data: {label}] a figure")


def image(data: bytes, text: str) -> Bundle:
    """A PNG image output (checked again here: only a real, capped PNG is displayed)."""
    from jupyter_syft.wire.values import check_png

    width, height = check_png(data)
    return {
        "image/png": base64.b64encode(data).decode(),
        "text/plain": f"{text} ({width}x{height})",
    }


def note(text: str, colour: str = COLOURS["pending"]) -> Bundle:
    """A one-line message (a connection made, nothing found...)."""
    return bundle(frame(colour, esc(text)), text)


# ---- requests -----------------------------------------------------------------------------

POLICY_TEXT = {
    "raw": "raw result, released after the owner's review",
    "dp": "dp (differential privacy: OpenDP noise, epsilon charged to your budget)",
}


def submission(sub: Submission) -> Bundle:
    """The live status of a `%%request` cell, or its result with provenance once done."""
    elapsed = f"{(sub.ended or time.monotonic()) - sub.started:.1f} s"
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
        if is_a(target.value, "jupyter_syft.client.privacy", "DPResult"):
            return _dp_result(target.value, target.domain, origin)
        if is_a(target.value, "jupyter_syft.wire.values", "PNGImage"):  # the image follows
            caption = f"a figure, {target.value.width}x{target.value.height} PNG (below)"
            markup = frame(COLOURS["done"], esc(caption) + small(esc(origin)))
            return markup, f"{target.domain}: {caption}\n[{origin}]"
        value_html, value_text = render(target.value)
        markup = frame(COLOURS["done"], value_html + small(esc(origin)))
        return markup, f"{target.domain}: {value_text}\n[{origin}]"
    state, status, detail = _status(target, sub)
    short = target.request.id[:8] if target.request is not None else "-"
    text = f"{target.domain}: request {short} {status}" + (f": {detail}" if detail else "")
    markup = f"{badge(COLOURS[state], state)} <b>{esc(target.domain)}</b> request {esc(short)}: "
    markup += esc(status.removeprefix(f"{state}: "))  # the badge says it
    if "\n" in detail:  # a remote traceback: its last line, the rest a click away
        summary = detail.strip().splitlines()[-1]
        markup += f"<details><summary>{esc(summary)}</summary><pre>{esc(detail)}</pre></details>"
    elif detail:
        markup += f": {esc(detail)}"
    return f"<div>{markup}</div>", text


def _dp_result(result: Any, domain: str, origin: str) -> tuple[str, str]:
    """A DP answer: what was asked, the noisy value (to its accuracy), what it cost and left."""
    value_text = result.shown
    value_html = f"<b>{esc(value_text)}</b>"
    summary = result.summary()
    markup = f"<div><code>{esc(result.label)}</code> = {value_html}</div>"
    markup += f"<div><b>{esc(summary)}</b></div>" + small(esc(origin))
    text = f"{domain}: {result.label} = {value_text}\n{summary}\n[{origin}]"
    return frame(COLOURS["done"], markup), text


def _status(target: Target, sub: Submission) -> tuple[str, str, str]:
    """The state to show (a request status, "lost" or "error"), its words, and details."""
    state = target.state
    if target.stopped:
        watched = f"stopped watching after {sub.line.timeout:g} s ({REQUEST_STATUS[state]})"
        return state, f"{watched}; the request stays on the domain: `%syft requests` lists it", ""
    if state == "error":
        return state, REQUEST_STATUS[state], target.error
    assert target.request is not None
    if state in ("denied", "withheld"):
        return state, REQUEST_STATUS[state], target.request.info.reason or "(no reason given)"
    if state == "failed":
        return state, REQUEST_STATUS[state], target.request.error
    progress = target.request.info.progress
    if state in ("building", "running") and progress is not None and not target.problem:
        # a build's stage says "building environment: ..." itself
        words = "approved" if progress.stage and not progress.total else REQUEST_STATUS[state]
        return state, words, progress_text(progress)
    return state, REQUEST_STATUS[state], target.problem or target.request.info.note


def progress_text(progress: Any) -> str:
    """A job's progress (wire.messages.JobProgress) as a bar with its numbers, or the node's
    stage of an environment build."""
    if not progress.total:
        return progress.stage
    share = progress.done / progress.total
    filled = round(GAUGE_WIDTH * share)
    bar = "\u2588" * filled + "\u2591" * (GAUGE_WIDTH - filled)
    return f"{bar} {progress.done}/{progress.total} ({share:.0%})"


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


def budgets(rows: Sequence[tuple[str, Any]], missed: str) -> Bundle:
    """`%syft budget`: per domain and dataset, epsilon spent and left with a gauge.

    `rows` are (domain, Budget); `missed` names the domains that did not answer, and why.
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
    if missed:
        markup += small(esc(missed))
        text.append(missed)
    return bundle(markup, "\n".join(text))
