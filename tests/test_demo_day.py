"""A newcomer's day with the demo and the plain-Python API, met where they meet it: `jupyter-syft
demo --lab` by its output (notebooks kept across runs, `--reset`, what Ctrl-C stops, piped
output in whole lines), the shipped notebooks as the kernels see them, and `domain.request`
from a plain `python` process (no IPython, so no source of what is typed in)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from jupyter_client.manager import KernelManager
from nodes import Approver, person
from shared_domains import SharedDomain

import jupyter_syft as syft
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.demo import HOSPITALS, STOP_S
from jupyter_syft.errors import InvalidError
from jupyter_syft.lab_demo import EXAMPLES, LAB_SETTINGS, NOTEBOOKS, prepare_notebooks

DEMO_LAB = [sys.executable, "-m", "jupyter_syft.cli", "demo", "--lab", "--no-browser", "--dir"]
LAB_UP_S = 300  # the scripted demo (federated training included), then JupyterLab
# Measured on the 2-core test machine under load: ~3-15 s (the domains' Flight servers and
# job workers stop in parallel); STOP_S is the kill bound for one node, then a little to exit.
STOPPED_WITHIN_S = STOP_S + 10
MULTIADDR = r"/ip4/127\.0\.0\.1/tcp/\d+/p2p/12D3Koo\w{40,}"
ROWS = 50


class Demo:
    """`jupyter-syft demo --lab` with its stdout piped (not a terminal), read line by line."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self.stderr = (folder.parent / f"{folder.name}-{time.monotonic_ns()}.err").open("wb")
        self.process = subprocess.Popen(
            [*DEMO_LAB, str(folder), *extra], stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, start: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if line.startswith(start)]
            if found:
                return found[0]
            assert self.process.poll() is None, f"the demo ended: {self.text}"
            time.sleep(0.2)
        raise AssertionError(f"no line starting {start!r} in {timeout} s: {self.text}")

    def interrupt(self) -> float:
        """Ctrl-C (SIGINT), as the terminal sends it; the seconds until the command ended."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=STOPPED_WITHIN_S + 30) == 0, self.text
        self._reader.join(timeout=10)
        return time.monotonic() - started

    def close(self) -> None:
        """Kill it if still running (a failed test), and close its output."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.stderr.close()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def shipped(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


@pytest.mark.timeout(LAB_UP_S + 300)
def test_lab_demo_keeps_edited_notebooks_resets_them_and_says_what_it_stops(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "demo"
    notebooks = folder / "notebooks"
    demo = Demo(folder)
    try:
        first = demo.wait_for("notebooks in ", 30)
        assert first == (
            f"notebooks in {notebooks}: copied from examples/: {', '.join(NOTEBOOKS)}"
        ), first
        demo.wait_for("JupyterLab: http://127.0.0.1:", LAB_UP_S)
        # It runs `jupyter-syft demo --keep-running`, whose demo.json describes the nodes.
        described = json.loads((folder / "demo.json").read_text())
        assert set(described["domains"]) == set(HOSPITALS)
        assert described["network"].startswith("/ip4/127.0.0.1/tcp/")
        # Piped, nothing is cut or wrapped: each node's multiaddr whole, on its own line.
        assert re.search(rf"^network demo-network: {MULTIADDR}$", demo.text, re.M), demo.text
        for name in HOSPITALS:
            assert re.search(rf"^{name}: {MULTIADDR}$", demo.text, re.M), demo.text
            approved = f"^{name}: approved \\w{{8}} once: a federated plan .* per round\\)$"
            assert re.search(approved, demo.text, re.M), demo.text
        # The user's work, as JupyterLab saves it: a new cell in one notebook, another deleted.
        edited = json.loads((notebooks / "scientist.ipynb").read_text())
        edited["cells"].append(
            {"cell_type": "code", "execution_count": None, "id": "mine0001", "metadata": {},
             "outputs": [], "source": ["threshold = 30  # my own cell"]}
        )  # fmt: skip
        (notebooks / "scientist.ipynb").write_text(json.dumps(edited, indent=1))
        (notebooks / "federated.ipynb").unlink()
        seconds = demo.interrupt()
    finally:
        demo.close()
    stop = demo.text.split("(Ctrl-C stops JupyterLab, the network and the domains)")[1]
    assert "stopping JupyterLab and its kernels…" in stop, stop
    assert f"stopping the network node, {', '.join(HOSPITALS)}…" in stop, stop
    for part in ["JupyterLab and its kernels", "the network node", *HOSPITALS]:
        assert re.search(rf"^  stopped {part} \(\d+\.\d s\)$", stop, re.M), stop
    assert "the demo ended with exit code" not in stop, stop  # `demo --keep-running`'s was 0
    said_running = "describes them (the Syft kernel: %syft connect demo). Ctrl-C stops them."
    assert said_running in " ".join(demo.text.split()), demo.text
    said = float(re.search(r"^stopped everything in (\d+\.\d) s$", stop, re.M)[1])  # type: ignore[index]
    assert said <= seconds < STOPPED_WITHIN_S, stop
    assert not (folder / "demo.json").exists()

    # Again: the edited notebook is kept as it is, the deleted one copied back; Ctrl-C while
    # the demo starts stops it too.
    again = Demo(folder)
    try:
        line = again.wait_for("notebooks in ", 30)
        assert line == (
            f"notebooks in {notebooks}: kept yours: scientist.ipynb, owner.ipynb; copied from "
            "examples/: federated.ipynb. `make demo RESET=1` (or `jupyter-syft demo --lab "
            "--reset`) puts the shipped ones back"
        ), line
        assert json.loads((notebooks / "scientist.ipynb").read_text()) == edited
        assert again.interrupt() < STOPPED_WITHIN_S
    finally:
        again.close()

    reset = Demo(folder, "--reset")
    try:
        line = reset.wait_for("notebooks in ", 30)
        assert (
            line == f"notebooks in {notebooks}: reset to the shipped ones: {', '.join(NOTEBOOKS)}"
        )
        reset.interrupt()
    finally:
        reset.close()
    for name in NOTEBOOKS:
        assert json.loads((notebooks / name).read_text())["cells"] == shipped(name)["cells"]


def test_reset_without_lab_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_syft.cli", "demo", "--reset", "--dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--reset goes with --lab: it resets the notebooks JupyterLab opens" in done.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.unit
def test_shipped_notebooks_have_cell_ids_and_no_outputs() -> None:
    for name in NOTEBOOKS:
        notebook = shipped(name)
        assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5), name
        ids = [cell.get("id") for cell in notebook["cells"]]
        assert all(ids) and len(set(ids)) == len(ids), name
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, name


@pytest.mark.unit
def test_the_demo_lab_does_not_ask_about_news() -> None:
    overrides = json.loads((LAB_SETTINGS / "overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}
    schema = (
        Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab/apputils-extension"
        / "notification.json"
    )  # fmt: skip
    properties = json.loads(schema.read_text())["properties"]  # the installed Lab's settings
    assert {c["const"] for c in properties["fetchNews"]["oneOf"]} >= {"false"}
    assert properties["checkForUpdates"]["type"] == "boolean"


def test_opened_notebooks_hold_what_their_kernels_report(tmp_path: Path) -> None:
    """JupyterLab writes the kernel's kernelspec and language_info into a notebook it opens
    and marks it unsaved if they differ: the demo's copies already hold them."""
    prepare_notebooks(tmp_path, reset=False)
    for name in NOTEBOOKS:
        metadata = json.loads((tmp_path / name).read_text())["metadata"]
        manager = KernelManager(kernel_name=metadata["kernelspec"]["name"])
        manager.start_kernel(env={**os.environ, "JUPYTER_SYFT_HOME": str(tmp_path / "home")})
        client = manager.client()
        try:
            client.start_channels()
            client.wait_for_ready(timeout=60)
            client.kernel_info()
            reply = client.get_shell_msg(timeout=30)
            while reply["msg_type"] != "kernel_info_reply":
                reply = client.get_shell_msg(timeout=30)
            assert metadata["language_info"] == reply["content"]["language_info"], name
            assert manager.kernel_spec is not None
            assert metadata["kernelspec"]["display_name"] == manager.kernel_spec.display_name
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)


# --- the plain-Python request API --------------------------------------------------------


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory, clinic: SharedDomain) -> Iterator[dict]:
    """The shared clinic domain (conftest.py) with this module's dataset and scientist."""
    scientist_home, scientist = person(tmp_path_factory.mktemp("plain-python"), "scientist")
    node = clinic.node
    approver = None
    try:
        admin = clinic.admin()
        private = pd.DataFrame({"y": np.random.default_rng(7).normal(40.0, 5.0, ROWS)})
        admin.create_dataset("table", private=private, mock=private.assign(y=1.0))
        admin.add_user(scientist.peer_id, "data_scientist", "scientist")
        approver = Approver({"clinic": admin})
        yield {
            "address": node.address,
            "home": scientist_home,
            "private": private,
            "admin": admin,
            "client": DomainClient(NodeConnection(node.address, scientist)),
        }
    finally:
        if approver is not None:
            approver.close()


def plain_python(world: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(world["home"])}
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=90, env=env
    )


def test_plain_python_sends_a_function_as_source_text(domain: dict) -> None:
    script = """if True:
        import sys
        import jupyter_syft as syft

        domain = syft.connect(sys.argv[1])
        source = "def mean_y(df):\\n    return float(df['y'].mean())"
        request = domain.request(source, df="table")
        print(request.info.function_name, repr(request.result(timeout=60)))
    """
    done = plain_python(domain, "-c", script, domain["address"])
    assert done.returncode == 0, done.stderr
    name, value = done.stdout.split()
    assert name == "mean_y"
    assert float(value) == float(domain["private"]["y"].mean())


def test_a_function_typed_into_the_python_repl_gets_the_way_out(domain: dict) -> None:
    before = len(domain["admin"].requests())
    session = (
        "import jupyter_syft as syft\n"
        f"domain = syft.connect({domain['address']!r})\n"
        "def rows(df):\n"
        "    return len(df)\n"
        "\n"
        'domain.request(rows, df="table")\n'
    )
    done = plain_python(domain, "-i", stdin=session)
    assert (
        "InvalidError: cannot read the source of rows (defined in a REPL?): pass the source text "
        'instead, domain.request("def rows(df): ...", df=ds)'
    ) in done.stderr, done.stderr
    assert len(domain["admin"].requests()) == before  # nothing was sent


def test_source_text_that_is_not_one_function_is_refused_before_sending(domain: dict) -> None:
    client = domain["client"]
    before = len(domain["admin"].requests())
    with pytest.raises(InvalidError, match=r"exactly one top-level function.*line 3: x = 1"):
        client.request("def f(df):\n    return 1\nx = 1", df="table")
    with pytest.raises(InvalidError, match="not valid Python"):
        client.request("def f(df) return 1", df="table")
    with pytest.raises(InvalidError, match="it holds: nothing"):
        client.request("   ", df="table")
    assert len(domain["admin"].requests()) == before


def test_federated_training_takes_the_model_as_source_text(domain: dict) -> None:
    """The text is made into the function here and called, as a function would be."""
    with pytest.raises(InvalidError, match=r"make_model\(\) must return a torch.nn.Module"):
        syft.federated.train("def make_model():\n    return 3", [domain["client"]], "table", "y")


def test_dp_training_takes_the_model_as_source_text(domain: dict) -> None:
    """The text is made into the function here, and the model it builds checked before
    anything is sent (a BatchNorm's statistics would leave without noise)."""
    before = len(domain["admin"].requests())
    source = (
        "def make_model():\n"
        "    import torch\n"
        "\n"
        "    return torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.BatchNorm1d(2))\n"
    )
    queries = domain["client"].datasets["table"].dp
    with pytest.raises(InvalidError, match="is a BatchNorm1d"):
        queries.train(source, features=["y"], label="y", epsilon=1.0, delta=1e-5)
    assert len(domain["admin"].requests()) == before
