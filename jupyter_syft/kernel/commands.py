"""The `%syft` commands, one entry each: its name, its arguments and what it does.

Where to add a command: one SyftMagics method (kernel/magics.py) marked
`@command("name", "what it does", "ARGS")`. The dispatch of `%syft NAME`, the help that
`%syft` alone prints and the kernel's completion of `%syft <tab>` all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    arguments: str  # as the help shows them, e.g. "ADDR|demo"
    method: str  # the SyftMagics method that runs it, given the rest of the line


COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str, arguments: str = "") -> Callable[[F], F]:
    """Mark a SyftMagics method as the `%syft NAME` command."""

    def mark(method: F) -> F:
        if name in COMMANDS:
            raise ValueError(f"two %syft commands named {name!r}")
        COMMANDS[name] = Command(name, summary, arguments, method.__name__)
        return method

    return mark


def registered() -> dict[str, Command]:
    """Every command, in the order the help lists them (the magics define them on import)."""
    import jupyter_syft.kernel.magics  # noqa: F401  (its methods register the commands)

    return COMMANDS


def usage() -> str:
    """What `%syft` and `%syft help` print: every command, then the two cell magics with the
    line they take (cells.py's grammar, too long for the commands' column: on its own line)."""
    from jupyter_syft.kernel.cells import _USAGE as CELL_LINE
    from jupyter_syft.kernel.magics import SyftMagics

    lines = [(f"%syft {c.name} {c.arguments}".rstrip(), c.summary) for c in registered().values()]
    width = max(len(syntax) for syntax, _ in lines)
    text = [f"{syntax:<{width}}  {summary}" for syntax, summary in lines]
    for magic in (SyftMagics.mock, SyftMagics.request):
        summary = (magic.__doc__ or "").strip().splitlines()[0]
        text += ["", f"%%{magic.__name__} {CELL_LINE}", f"    {summary}"]
    return "\n".join(text)
