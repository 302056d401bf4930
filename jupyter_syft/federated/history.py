"""What a federated training did, round by round, and how it shows while it runs: a live table
and loss plot in a notebook, a progress bar in a terminal."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jupyter_syft.words import counted

PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 360, 150, 36


@dataclass
class RoundRecord:
    round: int
    seconds: float = 0.0
    contributors: list[str] = field(default_factory=list)  # domains in this round's average
    failures: dict[str, str] = field(default_factory=dict)  # domain -> why its update is out
    dropped: dict[str, str] = field(default_factory=dict)  # domain -> why it left for good
    train_loss: float | None = None  # mean over contributors; None under DP (not released)
    metrics: dict[str, float] = field(default_factory=dict)  # on the scientist's validation data
    note: str = ""  # why the round changed nothing, when it did not (no sum possible)
    total: np.ndarray | None = None  # the round's sums, until they become the new weights


@dataclass
class History:
    rounds_planned: int
    secure: bool
    epsilon: float
    loss: str
    rounds: list[RoundRecord] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # domain -> why it is out for good
    plans: dict[str, str] = field(default_factory=dict)  # domain -> plan request id
    requests: dict[str, list[str]] = field(default_factory=dict)  # domain -> round request ids
    stopped: str = ""  # why training ended before its last round, if it did

    @property
    def train_loss(self) -> list[float | None]:
        return [r.train_loss for r in self.rounds]

    def metric(self, name: str) -> list[float | None]:
        return [r.metrics.get(name) for r in self.rounds]

    def __repr__(self) -> str:
        lines = [f"<History: {len(self.rounds)}/{self.rounds_planned} rounds, {self._mode()}>"]
        for r in self.rounds:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items())
            loss = "" if r.train_loss is None else f"train loss {r.train_loss:.4g}, "
            out = f", left out {sorted(r.failures)}" if r.failures else ""
            note = f"; {r.note}" if r.note else ""
            domains = counted(len(r.contributors), "domain")
            lines.append(f"  round {r.round}: {loss}{scores} ({domains}{out}){note}")
        if self.excluded:
            lines.append(f"  excluded: {self.excluded}")
        return "\n".join(lines)

    def _mode(self) -> str:
        aggregation = "secure aggregation" if self.secure else "plain averaging"
        privacy = f"DP-SGD epsilon {self.epsilon:g}" if self.epsilon else "no DP"
        return f"{aggregation}, {privacy}"

    def _repr_html_(self, status: str = "") -> str:
        esc = html.escape
        metric_names = sorted({k for r in self.rounds for k in r.metrics})
        head = ["round", "train loss", *metric_names, "domains", "left out", "seconds"]
        rows = []
        for r in self.rounds:
            cells = [
                str(r.round),
                "—" if r.train_loss is None else f"{r.train_loss:.4g}",
                *(f"{r.metrics[k]:.4g}" if k in r.metrics else "" for k in metric_names),
                esc(", ".join(r.contributors)),
                esc("; ".join(_left_out(r))),
                f"{r.seconds:.2f}",
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        table = (
            "<table><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )
        plots = [_svg_plot("train loss", self.train_loss)]
        plots += [_svg_plot(f"validation {k}", self.metric(k)) for k in metric_names]
        notes = [f"<b>Federated training</b>: {len(self.rounds)}/{self.rounds_planned} rounds, "
                 f"{esc(self._mode())}"]  # fmt: skip
        if status:
            notes.append(f"<i>{esc(status)}</i>")
        for name, why in self.excluded.items():
            notes.append(f"excluded {esc(name)}: {esc(why)}")
        if self.stopped:
            notes.append(esc(self.stopped))
        return (
            "<div>"
            + "<br>".join(notes)
            + "<div>"
            + "".join(p for p in plots if p)
            + "</div>"
            + table
            + "</div>"
        )


def _left_out(record: RoundRecord) -> list[str]:
    """Who is not in a round's average and why (first lines), and why it changed nothing."""
    lines = [f"{name}: {why.splitlines()[0]}" for name, why in record.failures.items()]
    return [*lines, record.note] if record.note else lines


def _svg_plot(title: str, values: list[float | None]) -> str:
    """A small line chart of one series (None: no value that round); '' when nothing to draw."""
    points = [(i, v) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    if not points:
        return ""
    low, high = min(y for _, y in points), max(y for _, y in points)
    span_y = (high - low) or 1.0
    span_x = max(len(values) - 1, 1)
    width, height = PLOT_WIDTH - 2 * MARGIN, PLOT_HEIGHT - 2 * MARGIN
    pixels = [
        (MARGIN + width * x / span_x, MARGIN + height * (1 - (y - low) / span_y)) for x, y in points
    ]
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in pixels)
    dots = "".join(
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="#2563eb"/>' for px, py in pixels
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" '
        'style="font: 11px sans-serif; margin-right: 8px">'
        f'<text x="{MARGIN}" y="16" font-weight="bold">{html.escape(title)}</text>'
        f'<line x1="{MARGIN}" y1="{PLOT_HEIGHT - MARGIN}" x2="{PLOT_WIDTH - MARGIN}" '
        f'y2="{PLOT_HEIGHT - MARGIN}" stroke="#999"/>'
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{PLOT_HEIGHT - MARGIN}" '
        'stroke="#999"/>'
        f'<text x="2" y="{MARGIN + 4}">{high:.3g}</text>'
        f'<text x="2" y="{PLOT_HEIGHT - MARGIN}">{low:.3g}</text>'
        f'<text x="{MARGIN}" y="{PLOT_HEIGHT - 8}">round 0</text>'
        f'<text x="{PLOT_WIDTH - MARGIN - 40}" y="{PLOT_HEIGHT - 8}">round {span_x}</text>'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{line}"/>'
        f"{dots}</svg>"
    )


class LiveView:
    """Shows the history as it grows: a display updated in place in a notebook or kernel,
    a progress bar in a terminal, nothing when `show` is False."""

    def __init__(self, history: History, show: bool) -> None:
        self.history = history
        self._status = ""
        self._handle: Any = None
        self._bar: Any = None
        if not show:
            return
        if _in_notebook():
            from IPython.display import HTML, display

            self._html = HTML
            self._handle = display(HTML(history._repr_html_()), display_id=True)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("federated training"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.description}"), transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("", total=history.rounds_planned)

    def status(self, text: str) -> None:
        self._status = text
        self._refresh()

    def update(self) -> None:
        self._status = ""
        self._refresh()

    def close(self) -> None:
        self._status = ""
        self._refresh()
        if self._bar is not None:
            self._bar.stop()

    def _refresh(self) -> None:
        if self._handle is not None:
            self._handle.update(self._html(self.history._repr_html_(self._status)))
        elif self._bar is not None:
            last = self.history.rounds[-1] if self.history.rounds else None
            loss = "" if last is None or last.train_loss is None else f"loss {last.train_loss:.4g}"
            self._bar.update(
                self._task, completed=len(self.history.rounds), description=self._status or loss
            )


def _in_notebook() -> bool:
    """True in a Jupyter kernel (the Syft kernel included), where rich output shows inline."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
