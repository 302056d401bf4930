"""HTML pieces for the widgets. Everything a peer wrote (names, descriptions, code, reasons,
mock values) is escaped where it goes in, and each HTML value passes the allow-list
sanitiser last, as the kernel's own output does."""

from __future__ import annotations

import time
from typing import Any

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from jupyter_syft.safe_html import COLOURS, badge, esc, render, sanitise
from jupyter_syft.wire.messages import RequestInfo

__all__ = ["COLOURS", "badge", "code", "detail", "esc", "render", "sanitise", "table", "when"]

_FORMATTER = HtmlFormatter(noclasses=True, nobackground=True)


def code(source: str) -> str:
    """Python source with syntax colours (pygments escapes the text)."""
    return highlight(source, PythonLexer(), _FORMATTER)


def when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def detail(info: RequestInfo) -> str:
    """The owner's reason for a denial, or the last line of a failure's traceback."""
    lines = info.error.strip().splitlines()
    return info.reason or (lines[-1] if lines else "")
