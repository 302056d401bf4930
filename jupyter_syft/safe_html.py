"""The one safe-HTML module: every rich output of the kernel and the widgets is built here.

Much of what is shown was written by other people: dataset names, descriptions, column names
and cell values of mocks, the owner's reasons, remote tracebacks. Every text is escaped where
it is put into HTML (`esc`), and every HTML bundle passes an allow-list sanitiser (nh3) last
(`sanitise`), so no markup from a peer can run script or restyle the notebook.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Sequence
from typing import Any

import nh3

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
    if is_a(value, "pandas", "DataFrame", "Series"):
        frame_ = value.to_frame() if is_a(value, "pandas", "Series") else value
        table = frame_.to_html(max_rows=MAX_ROWS, max_cols=MAX_COLUMNS, border=0)
        kind = type(value).__name__
        header = f"pandas {kind}, {len(frame_)} rows x {frame_.shape[1]} columns"
        return f"<small>{esc(header)}</small>{table}", f"{header}\n{value!r}"
    if is_a(value, "pyarrow", "Table"):
        header = f"pyarrow Table, {value.num_rows} rows x {value.num_columns} columns"
        preview = value.slice(0, MAX_ROWS).to_pandas().to_html(max_cols=MAX_COLUMNS, border=0)
        return f"<small>{esc(header)}</small>{preview}", f"{header}\n{value.schema}"
    if is_a(value, "numpy", "ndarray") or is_a(value, "torch", "Tensor"):
        library = "numpy array" if is_a(value, "numpy", "ndarray") else "torch tensor"
        dtype = str(value.dtype).removeprefix("torch.")
        header = f"{library}, shape {_shape(tuple(value.shape))}, dtype {dtype}"
        return f"<small>{esc(header)}</small><pre>{esc(value)}</pre>", f"{header}\n{value!r}"
    if isinstance(value, dict | list | tuple) and value and depth < MAX_DEPTH:
        return _render_container(value, depth)
    if is_a(value, "numpy", "generic"):
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
        or is_a(value, "numpy", "generic")
    )


def is_a(value: Any, library: str, *types: str) -> bool:
    """isinstance against a library's types without importing it (the kernel starts faster):
    while a library is not loaded, no value can be of its types."""
    module = sys.modules.get(library)
    return module is not None and isinstance(value, tuple(getattr(module, t) for t in types))


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
