"""The Syft kernel: IPython's kernel with the jupyter_syft client and its magics built in.

Everything an IPython kernel does keeps working; the few overrides here only add Syft:
the magics at start, completion of Syft syntax, and stopping request watchers at shutdown.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

from ipykernel.ipkernel import IPythonKernel

from jupyter_syft.kernel.completion import complete
from jupyter_syft.kernel.magics import SyftMagics
from jupyter_syft.kernel.session import SyftSession
from jupyter_syft.kernel.watch import RequestBook

BANNER = """\
Syft kernel: IPython with remote data science built in.
  %syft connect ADDR|demo, %syft domains, %syft search TEXT, %syft requests, %syft whoami
  %%mock DOMAIN/DATASET as NAME      run the cell now, on the dataset's mock
  %%request DOMAIN/DATASET as NAME   ask to run the cell on the private data
  %%request ... --dp-epsilon E       a DP query (df.mean("bmi", bounds=(15, 50))); %syft budget"""


class SyftKernel(IPythonKernel):
    implementation = "jupyter-syft"
    implementation_version = version("jupyter-syft")
    banner = BANNER

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.syft = SyftSession()
        self.requests = RequestBook(self.syft)
        assert self.shell is not None
        self.shell.register_magics(SyftMagics(self.shell, self.syft, self.requests))
        self.syft.start()

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        position = len(code) if cursor_pos is None else cursor_pos
        reply = complete(code, position, self.syft.known_datasets())
        return reply if reply is not None else await _result(super().do_complete(code, cursor_pos))

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self.requests.close()
        return await _result(super().do_shutdown(restart))


async def _result(value: Any) -> Any:
    """IPythonKernel's handlers are plain functions in ipykernel 7 and may become coroutines."""
    return await value if inspect.isawaitable(value) else value
