"""Tab completion of `DOMAIN/DATASET` in `%%mock` / `%%request` lines and of `%syft` commands.

Completion answers from what the kernel already knows (no network call), so it stays instant
even when a domain is slow or offline; listings refresh on connect, `%syft domains`/`search`
and every request.
"""

from __future__ import annotations

import re
from typing import Any

from jupyter_syft.kernel.cells import ALL_DOMAINS
from jupyter_syft.kernel.commands import registered

CELL_MAGICS = ("%%mock", "%%request")


def complete(code: str, cursor_pos: int, catalog: dict[str, list[str]]) -> dict[str, Any] | None:
    """A complete_reply for Syft syntax at the cursor, or None to let IPython complete.

    `catalog` is dataset names by domain name.
    """
    line_start = code.rfind("\n", 0, cursor_pos) + 1
    before = code[line_start:cursor_pos]
    words = before.split()
    if not words or (before[-1:].isspace() and words[-1] == "as"):
        return None
    if line_start == 0 and words[0] in CELL_MAGICS and len(words) + before.endswith(" ") > 1:
        token = re.split(r"[\s,]", before)[-1]
        if token.startswith("-") or re.search(r"\sas\s+\S*$", before):
            return None
        return _reply(token, cursor_pos, _datasets(token, catalog))
    if words[0] == "%syft":
        token = "" if before.endswith(" ") else words[-1]
        position = len(words) + before.endswith(" ")
        if position == 2:
            return _reply(
                token, cursor_pos, [c for c in sorted(registered()) if c.startswith(token)]
            )
        if position == 3 and words[1] == "connect":
            return _reply(token, cursor_pos, ["demo"] if "demo".startswith(token) else [])
    return None


def _datasets(token: str, catalog: dict[str, list[str]]) -> list[str]:
    if "/" not in token:
        return [f"{name}/" for name in [*sorted(catalog), ALL_DOMAINS] if name.startswith(token)]
    domain, prefix = token.split("/", 1)
    if domain == ALL_DOMAINS:
        names = sorted({d for found in catalog.values() for d in found})
    else:
        names = catalog.get(domain, [])
    return [f"{domain}/{name}" for name in names if name.startswith(prefix)]


def _reply(token: str, cursor_pos: int, matches: list[str]) -> dict[str, Any]:
    return {
        "matches": matches,
        "cursor_start": cursor_pos - len(token),
        "cursor_end": cursor_pos,
        "metadata": {},
        "status": "ok",
    }
