"""Run a node (domain or network) in the foreground, as the `jupyter-syft ... start` commands do."""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def run_until_signalled(
    node: Callable[..., Awaitable[None]],
    *args: Any,
    what: str,
    expected: tuple[type[Exception], ...],
) -> int:
    """Run `node(*args, ready)` until SIGINT or SIGTERM; 0 on a clean stop, 2 if it could not run.

    `ready(address)` prints the node's multiaddr on one line (scripts and tests wait for it);
    an `expected` start-up failure (a bad address, a taken port...) prints one line, not a
    traceback.
    """

    def ready(address: str) -> None:
        print(address, flush=True)

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node, *args, ready)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    failures: list[BaseException] = []
    try:
        trio.run(serve)
    except* expected as group:
        failures.extend(group.exceptions)
    for failure in failures:
        print(f"jupyter-syft: the {what} could not run: {failure}", file=sys.stderr)
    return 2 if failures else 0
