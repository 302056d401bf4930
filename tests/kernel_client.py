"""Syft kernels started through jupyter_client, and helpers to run cells and read their output."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.manager import KernelManager

READY_TIMEOUT_S = 30


@dataclass
class Cell:
    """What one execute request produced (iopub messages in order, and the reply)."""

    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    @property
    def text(self) -> str:
        """All output as plain text: streams, text/plain of displays and results, errors."""
        parts = []
        for msg in self.outputs:
            content = msg["content"]
            kind = msg["msg_type"]
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("display_data", "execute_result", "update_display_data"):
                parts.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                parts.append(f"{content['ename']}: {content['evalue']}")
        return "\n".join(parts)

    @property
    def html(self) -> str:
        return "\n".join(
            m["content"]["data"].get("text/html", "")
            for m in self.outputs
            if m["msg_type"] in ("display_data", "execute_result")
        )

    @property
    def display_id(self) -> str:
        [found] = [
            m["content"]["transient"]["display_id"]
            for m in self.outputs
            if m["msg_type"] == "display_data" and m["content"].get("transient")
        ]
        return found


class SyftKernel:
    """A `syft` kernel process with its own JUPYTER_SYFT_HOME, and a blocking client."""

    def __init__(self, home: Path, cwd: Path | None = None, **env: str) -> None:
        self.manager = KernelManager(kernel_name="syft")
        environment = {**os.environ, "JUPYTER_SYFT_HOME": str(home), **env}
        self.manager.start_kernel(env=environment, cwd=str(cwd or home))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=READY_TIMEOUT_S)
        self.messages: list[dict[str, Any]] = []  # every iopub message, in arrival order

    def execute(self, code: str, timeout: float = 30) -> Cell:
        msg_id = self.client.execute(code)
        reply = self.client.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=timeout)
        deadline = time.monotonic() + timeout
        while not self._idle(msg_id):
            self._pump(deadline)
        outputs = [
            m
            for m in self.messages
            if m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] in ("stream", "display_data", "execute_result", "error")
        ]
        return Cell(reply, outputs)

    def update(self, display_id: str, contains: str, timeout: float = 30) -> str:
        """The text of the first update of `display_id` (from any cell) containing `contains`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                content = msg["content"]
                if (
                    msg["msg_type"] == "update_display_data"
                    and content["transient"]["display_id"] == display_id
                    and contains in content["data"]["text/plain"]
                ):
                    return content["data"]["text/plain"]
            seen = len(self.messages)
            self._pump(deadline, f"no update of {display_id} containing {contains!r}")

    def complete(self, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
        msg_id = self.client.complete(code, len(code) if cursor_pos is None else cursor_pos)
        reply = self.client.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        return reply["content"]

    def _idle(self, msg_id: str) -> bool:
        return any(
            m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            and m["parent_header"].get("msg_id") == msg_id
            for m in self.messages
        )

    def _pump(self, deadline: float, waiting_for: str = "the kernel to go idle") -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out waiting for {waiting_for}")
        with contextlib.suppress(Empty):
            self.messages.append(self.client.get_iopub_msg(timeout=min(left, 1.0)))

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)
