"""One background thread per live widget: it calls `step` until told to stop.

Widgets must not block the kernel, and a notebook has no event loop a widget can rely on
(the Syft kernel, plain ipykernel, a script), so each live widget gets a daemon thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Poller:
    """Calls `step()` again and again; `step` returns the seconds to sleep, or None to end."""

    def __init__(self, step: Callable[[], float | None], name: str) -> None:
        self._step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            pause = self._step()
            if pause is None:
                return
            self._stop.wait(pause)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the thread to end and wait for it (a long-poll in flight ends first)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
