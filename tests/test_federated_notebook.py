"""examples/federated.ipynb run headless on the Syft kernel, as `make demo` would serve it.

Three real domain processes hold thirds of the demo's diabetes table, the scientist has a
privacy budget on each, and the owners approve (in a thread of this process) every plan the
notebook sends: one per training and owner.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nodes import DomainProcess, person, start_all, write_demo

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.demo import HOSPITALS, diabetes_frame, fake_like

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "federated.ipynb"


class Owners:
    """The hospitals' owners approving whatever is pending, and what they approved."""

    def __init__(self, admins: dict[str, AdminClient]) -> None:
        self.admins = admins
        self.approved: dict[str, list[str]] = {name: [] for name in admins}  # policies
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, admin in self.admins.items():
                for review in admin.requests(status="pending"):
                    review.approve()
                    self.approved[name].append(review.info.policy)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The demo's three hospitals, each with a third of its table; a scientist with a budget."""
    root = tmp_path_factory.mktemp("federated-notebook")
    _, scientist = person(root, "scientist")
    frame = diabetes_frame()
    thirds = np.array_split(np.arange(len(frame)), len(HOSPITALS))
    nodes = {
        name: DomainProcess(root, name, person(root, f"owner-{name}")[0]) for name in HOSPITALS
    }
    start_all(nodes.values())
    owners = None
    try:
        admins = {}
        for i, (name, node) in enumerate(nodes.items()):
            assert node.address, f"domain {name} did not start"
            admin = AdminClient(NodeConnection(node.address, person(root, f"owner-{name}")[1]))
            private = frame.iloc[thirds[i]].reset_index(drop=True)
            admin.create_dataset("diabetes", private=private, mock=fake_like(private, 100, i))
            admin.add_user(scientist.peer_id, "data_scientist", "scientist")
            admin.set_budget(scientist.peer_id, "diabetes", epsilon=10.0, delta=1e-4)
            admins[name] = admin
        owners = Owners(admins)
        yield {"root": root, "nodes": nodes, "owners": owners}
    finally:
        if owners is not None:
            owners.close()
        for node in nodes.values():
            node.kill()


@pytest.mark.timeout(300)
def test_federated_notebook_runs_headless(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = world["root"] / "notebook"
    monkeypatch.setenv("JUPYTER_SYFT_DEMO", str(write_demo(world["nodes"], folder)))
    monkeypatch.setenv("JUPYTER_SYFT_HOME", str(folder))  # the kernel's own identity: unused
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(notebook, kernel_name="syft", timeout=120).execute()
    finally:
        nbformat.write(notebook, folder / NOTEBOOK.name)  # as it ran, to look at
    outputs = [
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]
    text = "\n".join(outputs)
    html = "\n".join(
        output.get("data", {}).get("text/html", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "hospital-c <Dataset diabetes: table, 147 rows" in text
    assert "columns: age, sex, bmi, bp, tc, ldl, hdl, tch, ltg, glu, target" in text
    # The live view, in its final state: the round table and the loss plot, inline.
    assert "10/10 rounds, secure aggregation, no DP" in html and "<svg" in html
    assert "4/4 rounds, secure aggregation, DP-SGD epsilon 8" in html
    # One approval per owner and training, of the plan; no round was reviewed.
    assert world["owners"].approved == {name: ["federated"] * 2 for name in HOSPITALS}

    line = text.split("federated MSE ")[1].splitlines()[0]
    federated = float(line.split(",")[0])
    central = float(line.split("central MSE ")[1].split(":")[0])
    assert abs(federated / central - 1) <= 0.10, f"federated not within 10% of central: {line}"
    for name in HOSPITALS:
        assert f"{name}: DP training spent epsilon 8 (now 8 of 10 spent, 2 left)" in text
    summary = text.split("model ")[-1]
    scores = {row[:28].strip(): float(row[28:]) for row in summary.splitlines()[1:] if row.strip()}
    assert set(scores) == {"central", "federated", "federated + DP (epsilon 8)", "predict the mean"}
    assert scores["federated"] == pytest.approx(federated, abs=0.06)
    assert scores["federated"] < 0.6 * scores["predict the mean"]
    assert np.isfinite(scores["federated + DP (epsilon 8)"])
