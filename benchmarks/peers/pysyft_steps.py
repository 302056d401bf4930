"""PySyft 0.9.5 doing the steps bench_peers.py times for jupyter-syft, in the same run.

Runs in `.bench/pysyft` (never in the project's venv). A datasite served over HTTP on
127.0.0.1 by PySyft's own launcher (a separate uvicorn process), an admin and a data
scientist logged in from this process: the same split as ours (domain process, clients
here). Writes the seconds per step as JSON to the path given as the only argument.

PySyft takes a function's source with `inspect.getsource` and refuses the same code twice,
so each repeat's function is written out under a name of its own and imported.
"""

from __future__ import annotations

import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import syft as sy

REPEAT = 3
TRIVIAL_REPEAT = 5
BODIES = {
    "means": "    return df.mean()\n",
    "trivial": "    return 1\n",
    "tensor": "    import torch\n\n    return torch.rand(100 * 2**20 // 8, dtype=torch.float64)\n",
}


def functions(folder: Path) -> Any:
    """A module with `KIND_I(df)` for each kind and repeat (one more for warming up)."""
    lines = []
    for kind, body in BODIES.items():
        for i in range(max(REPEAT, TRIVIAL_REPEAT) + 1):
            lines.append(f"def {kind}_{i}(df):\n{body}\n")
    (folder / "peer_functions.py").write_text("\n".join(lines))
    sys.path.insert(0, str(folder))
    return importlib.import_module("peer_functions")


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    out = Path(sys.argv[1])
    folder = Path(tempfile.mkdtemp(prefix="pysyft-peer-"))
    module = functions(folder)
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(1_000_000, 10)), columns=[f"c{i}" for i in range(10)])
    mock = table.head(1000).copy()
    server = sy.orchestra.launch(
        name=f"bench-{time.time_ns()}", port="auto", host="127.0.0.1", reset=True
    )
    try:
        admin = server.login(email="info@openmined.org", password="changethis")
        admin.register(
            name="Scientist", email="ds@example.org", password="pw", password_verify="pw"
        )
        scientist = server.login(email="ds@example.org", password="pw")

        def upload(name: str, private: pd.DataFrame, fake: pd.DataFrame) -> None:
            asset = sy.Asset(name="table", data=private, mock=fake)
            admin.upload_dataset(sy.Dataset(name=name, asset_list=[asset]))

        uploads = [seconds(lambda i=i: upload(f"upload{i}", table, mock)) for i in range(REPEAT)]
        upload("tiny", table.head(10), mock.head(10))

        def asset_of(name: str) -> Any:
            return scientist.datasets[name].assets[0]

        def request_approve_result(kind: str, i: int, dataset: str) -> Any:
            """Submit, the owner approves, the scientist runs it and gets the value."""
            asset = asset_of(dataset)
            function = sy.syft_function_single_use(df=asset)(getattr(module, f"{kind}_{i}"))
            request = scientist.code.request_code_execution(function)
            admin.api.services.request.get_by_uid(request.id).approve()
            return getattr(scientist.code, f"{kind}_{i}")(df=asset).get()

        means = [
            seconds(lambda i=i: request_approve_result("means", i, "upload0"))
            for i in range(REPEAT)
        ]
        request_approve_result("trivial", TRIVIAL_REPEAT, "tiny")  # warm
        trivial = [
            seconds(lambda i=i: request_approve_result("trivial", i, "tiny"))
            for i in range(TRIVIAL_REPEAT)
        ]
        tensor = request_approve_result("tensor", 0, "tiny")
        assert tensor.numel() * 8 == 100 * 2**20

        def download() -> None:  # the run is done: PySyft answers from its output cache
            value = scientist.code.tensor_0(df=asset_of("tiny")).get()
            assert value.numel() * 8 == 100 * 2**20

        downloads = [seconds(download) for _ in range(REPEAT)]
    finally:
        server.land()
        shutil.rmtree(folder, ignore_errors=True)
    figures = {
        "upload": uploads,
        "means": means,
        "trivial": trivial,
        "download": downloads,
    }
    out.write_text(json.dumps({k: statistics.median(v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
