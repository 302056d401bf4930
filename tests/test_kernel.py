"""The Syft kernel end to end: a real kernel (jupyter_client) against real domain processes.

Two hospitals hold a `diabetes` table each (hospital-a also a tensor); the scientist works in a
`syft` kernel with its own identity; the owners approve or deny from this process, as a script.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from kernel_client import SyftKernel
from nbclient import NotebookClient
from nodes import DomainProcess, person, write_demo

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scientist.ipynb"
SHIFTY = 'ages and <b>BMI</b> <img src=x onerror="alert(1)">'


def diabetes(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 80, rows),
            "bmi": rng.normal(26.0, 4.0, rows).round(1),
            "target": rng.normal(150.0, 60.0, rows).round(),
            "note": ["<script>alert('x')</script>"] * rows,
        }
    )


PRIVATE = {"hospital-a": diabetes(240, 1), "hospital-b": diabetes(202, 2)}
MOCKS = {"hospital-a": diabetes(50, 3), "hospital-b": diabetes(40, 4)}
SCANS = torch.arange(24.0).reshape(6, 4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two hospitals with their owners, and a scientist they both added."""
    root = tmp_path_factory.mktemp("kernel")
    scientist_home, scientist = person(root, "scientist")
    nodes, admins = {}, {}
    for name in PRIVATE:
        nodes[name] = DomainProcess(root, name, person(root, f"owner-{name}")[0])
    try:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda node: node.start(), nodes.values()))
        for name, node in nodes.items():
            admin = AdminClient(NodeConnection(node.address, person(root, f"owner-{name}")[1]))
            admin.create_dataset(
                "diabetes", private=PRIVATE[name], mock=MOCKS[name], description=SHIFTY
            )
            admin.add_user(scientist.peer_id)
            admins[name] = admin
        admins["hospital-a"].create_dataset("scans", private=SCANS, mock=torch.zeros(2, 4))
        # DP queries on hospital-a's table run without review, up to epsilon 0.3 each
        admins["hospital-a"].set_policy("diabetes", auto_approve=True, max_query_epsilon=0.3)
        admins["hospital-a"].set_budget(scientist.peer_id, "diabetes", epsilon=0.5)
        yield {
            "root": root,
            "nodes": nodes,
            "admins": admins,
            "scientist_home": scientist_home,
            "scientist": scientist,
        }
    finally:
        for node in nodes.values():
            node.kill()


@pytest.fixture(scope="module")
def kernel(world: dict) -> Iterator[SyftKernel]:
    """The scientist's kernel, connected to both hospitals by address."""
    kernel = SyftKernel(world["scientist_home"])
    try:
        for node in world["nodes"].values():
            cell = kernel.execute(f"%syft connect {node.address}")
            assert cell.status == "ok", cell.text
            assert f"connected to domain {node.name} (" in cell.text
        yield kernel
    finally:
        kernel.stop()


def decide(admin: AdminClient, approve: bool = True, reason: str = "") -> list[str]:
    """Decide every pending request on a domain (the owner, as a script)."""
    decided = []
    for review in admin.requests("pending"):
        review.approve() if approve else review.deny(reason)
        decided.append(review.id)
    return decided


def value(kernel: SyftKernel, expression: str) -> object:
    """Evaluate an expression in the kernel; its repr, read back as JSON."""
    cell = kernel.execute(f"import json as _json; print(_json.dumps({expression}))")
    assert cell.status == "ok", cell.text
    return json.loads(cell.text)


# ---- %syft --------------------------------------------------------------------------------


def test_whoami_domains_and_search(world: dict, kernel: SyftKernel) -> None:
    whoami = kernel.execute("%syft whoami")
    assert world["scientist"].peer_id in whoami.text
    assert "hospital-a, hospital-b" in whoami.text

    domains = kernel.execute("%syft domains")
    assert domains.status == "ok"
    for name, node in world["nodes"].items():
        assert name in domains.text and node.address.rsplit("/", 1)[1] in domains.text
    assert domains.text.count("online") == 2 and "diabetes, scans" in domains.text

    search = kernel.execute("%syft search BMI")
    assert "hospital-a/diabetes" in search.text and "hospital-b/diabetes" in search.text
    assert "scans" not in search.text
    assert "&lt;b&gt;BMI&lt;/b&gt;" in search.html and "<img" not in search.html
    assert "no dataset matches" in kernel.execute("%syft search zebra").text

    usage = kernel.execute("%syft frobnicate")
    assert usage.status == "error" and "unknown command 'frobnicate'" in usage.text


def test_completion(kernel: SyftKernel) -> None:
    def matches(code: str) -> list[str]:
        return kernel.complete(code)["matches"]

    assert matches("%%mock hos") == ["hospital-a/", "hospital-b/"]
    assert matches("%%request hospital-a/") == ["hospital-a/diabetes", "hospital-a/scans"]
    assert matches("%%request hospital-b/diabetes as df, hospital-b/d") == ["hospital-b/diabetes"]
    assert matches("%%request */s") == ["*/scans"]
    assert matches("%syft co") == ["connect"]
    assert matches("%syft bu") == ["budget"]
    reply = kernel.complete("%%mock hospital-a/di\ndf.describe()", cursor_pos=20)
    assert reply["matches"] == ["hospital-a/diabetes"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (7, 20)
    assert "print" in matches("pri")  # everything else is IPython's


# ---- %%mock -------------------------------------------------------------------------------


def test_mock_runs_here_on_the_mock_and_says_so(kernel: SyftKernel) -> None:
    cell = kernel.execute(
        "%%mock hospital-a/diabetes as df\nprint('rows', len(df))\ndf[['age', 'bmi']].describe()"
    )
    assert cell.status == "ok", cell.text
    assert "rows 50" in cell.text
    assert "MOCK data, not the private data: hospital-a/diabetes as df (50 mock rows)" in cell.text
    assert "pandas DataFrame, 8 rows x 2 columns" in cell.text
    assert ">MOCK</span>" in cell.html
    # the mock stays in the namespace to explore (the cell ran as the request's function)
    assert value(kernel, "len(df)") == 50
    assert value(kernel, "float(df.bmi.mean())") == pytest.approx(MOCKS["hospital-a"].bmi.mean())

    html = kernel.execute("%%mock hospital-a/diabetes as df\ndf.head(3)").html
    assert "&lt;script&gt;" in html and "<script" not in html


def test_mock_tensor_shows_shape_and_dtype(kernel: SyftKernel) -> None:
    cell = kernel.execute("%%mock hospital-a/scans as s\ns * 2")
    assert "torch tensor, shape (2, 4), dtype float32" in cell.text
    kernel.execute("%%mock hospital-a/scans as s\ns += 1")  # changes this cell's copy only
    assert value(kernel, "float(s.sum())") == 8.0
    assert "tensor([[0., 0., 0., 0.]" in kernel.execute("%%mock hospital-a/scans as s\ns").text


def test_mock_error_is_an_ordinary_traceback(kernel: SyftKernel) -> None:
    cell = kernel.execute("%%mock hospital-a/diabetes as df\nx = 1\ndf['no such column']")
    assert cell.status == "error"
    assert "KeyError" in cell.text and "no such column" in cell.text
    assert kernel.execute("1 + 1").status == "ok"


# ---- %%request ----------------------------------------------------------------------------


def test_request_returns_at_once_and_shows_the_result_in_place(
    world: dict, kernel: SyftKernel
) -> None:
    cell = kernel.execute(
        "%%request hospital-a/diabetes as df --out mean_bmi\n"
        "# the owner reads this\n"
        "m = df['bmi'].mean()\n"
        "float(m)"
    )
    assert cell.status == "ok", cell.text
    assert "request" in cell.text and "pending: waiting for the owner's review" in cell.text
    assert "waiting for the owner's review" in cell.html and "pending: waiting" not in cell.html
    assert kernel.execute("2 + 2").status == "ok"  # other cells run while it waits
    [review] = world["admins"]["hospital-a"].requests("pending")
    assert "# the owner reads this" in review.code and "return float(m)" in review.code
    review.approve()
    done = kernel.update(cell.display_id, "result bound to mean_bmi")
    assert f"request {review.id}" in done
    assert "domain hospital-a, dataset diabetes as df" in done
    assert "policy: raw result, released after the owner's review" in done
    assert value(kernel, "mean_bmi") == pytest.approx(PRIVATE["hospital-a"].bmi.mean())
    updates = [
        m
        for m in kernel.messages
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == cell.display_id
    ]
    # updates from the watcher thread belong to the request's cell, so frontends place them
    assert {m["parent_header"]["msg_id"] for m in updates} == {
        cell.reply["parent_header"]["msg_id"]
    }

    listing = kernel.execute("%syft requests")
    assert review.id[:8] in listing.text and "mean_bmi" in listing.text and "done" in listing.text


def test_request_denied_shows_the_owners_reason(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute("%%request hospital-b/diabetes as df --out rows\ndf")
    decide(world["admins"]["hospital-b"], approve=False, reason="returns every private row")
    text = kernel.update(cell.display_id, "rows not set")
    assert "denied by the owner: returns every private row" in text
    assert kernel.execute("rows").status == "error"


def test_request_failed_shows_the_error_type_and_the_line(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute("%%request hospital-a/diabetes as df\ndf['no such column'].sum()")
    decide(world["admins"]["hospital-a"])
    text = kernel.update(cell.display_id, "failed on the domain")
    # The exception type and the scientist's own line; the full traceback waits for release.
    assert "KeyError" in text and "line 2: return df['no such column']" in text
    assert "Traceback" not in text


def test_request_tensor_and_several_datasets_on_one_domain(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute(
        "%%request hospital-a/diabetes as df, hospital-a/scans as s --out both\n"
        "{'rows': len(df), 'scaled': s * len(df)}"
    )
    assert cell.status == "ok", cell.text
    [review] = world["admins"]["hospital-a"].requests("pending")
    assert review.datasets == {"df": "diabetes", "s": "scans"}
    review.approve()
    text = kernel.update(cell.display_id, "result bound to both")
    assert "'rows': 240" in text and "torch tensor, shape (6, 4), dtype float32" in text
    assert value(kernel, "both['scaled'].tolist()") == (SCANS * 240).tolist()


def test_request_on_every_domain_gives_a_dict_by_domain(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute("%%request */diabetes as df --out counts\nlen(df)")
    assert cell.status == "ok", cell.text
    assert "hospital-a: request" in cell.text and "hospital-b: request" in cell.text
    for admin in world["admins"].values():
        decide(admin)
    kernel.update(cell.display_id, "result bound to counts")
    assert value(kernel, "counts") == {"hospital-a": 240, "hospital-b": 202}


def test_watch_timeout_fetch_and_wait(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute("%%request hospital-b/diabetes as df --timeout 0.3\nlen(df)")
    assert "stopped watching" in kernel.update(cell.display_id, "stopped watching")
    [left] = world["admins"]["hospital-b"].requests("pending")
    fetch = kernel.execute(f"%syft fetch {left.id[:8]} --out later")  # e.g. after a restart
    assert fetch.status == "ok" and f"request {left.id[:8]} pending" in fetch.text
    assert "no request 'nope'" in kernel.execute("%syft fetch nope").text
    first = kernel.execute("%%request hospital-b/diabetes as df --out n\nlen(df)")
    rerun = kernel.execute("%%request hospital-b/diabetes as df --out n\nlen(df) + 1")
    unfinished = kernel.execute("%syft wait --timeout 0.2")
    assert unfinished.status == "error" and "still running" in unfinished.text
    decide(world["admins"]["hospital-b"])
    assert kernel.execute("%syft wait").status == "ok"
    assert value(kernel, "later") == 202
    assert value(kernel, "n") == 203  # the later cell's, whichever result came last
    assert "n left to a later cell" in kernel.update(first.display_id, "later cell")
    assert "result bound to n" in kernel.update(rerun.display_id, "result bound to n")


# ---- differential privacy -----------------------------------------------------------------

DP_CELL = '%%request hospital-a/diabetes as df --dp-epsilon 0.2\ndf.mean("bmi", bounds=(15, 50))'


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (DP_CELL.replace("0.2", "0.4"), "above the per-query cap"),
        (DP_CELL.replace("(15, 50)", "(50, 15)"), "bounds"),
        (DP_CELL.replace('"bmi"', '"weight"'), "weight"),
        (DP_CELL.replace("hospital-a", "hospital-b"), "budget"),
        (DP_CELL.replace("df.mean", "x = 1\ndf.mean") + "\nx", "ends with one DP query"),
        (DP_CELL.replace("df.mean(", "df.head("), "ends with one DP query"),
        (DP_CELL.replace("0.2", "-1"), "must be a finite number above 0"),
        (DP_CELL.replace("df --", "df, hospital-a/scans as s --"), "one dataset"),
    ],
)
def test_dp_query_bad_input_is_one_clear_message_and_charges_nothing(
    world: dict, kernel: SyftKernel, cell: str, message: str
) -> None:
    result = kernel.execute(cell)
    assert result.status == "error"
    assert message in result.text, result.text
    assert "Traceback" not in result.text and "UsageError" in result.text
    budget = world["admins"]["hospital-a"].budget("diabetes", world["scientist"].peer_id)
    assert budget.epsilon_spent == 0


def test_dp_query_cell_budget_going_down_and_refusal(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute(DP_CELL)
    assert cell.status == "ok", cell.text
    assert "mean(bmi) =" in cell.text
    assert "epsilon 0.2 spent, 0.3 left on 'diabetes'" in cell.text
    assert "domain hospital-a, dataset diabetes as df" in cell.text
    assert "policy: dp (differential privacy" in cell.text
    assert "result bound to _request" in cell.text  # auto-approved: answered in the cell
    [charge] = world["admins"]["hospital-a"].budget("diabetes", world["scientist"].peer_id).charges
    assert f"request {charge.request_id}" in cell.text
    noisy, accuracy = value(kernel, "[_request.value, _request.accuracy]")  # type: ignore[misc]
    assert abs(noisy - PRIVATE["hospital-a"].bmi.mean()) < 5 * accuracy  # 95 %: 3 noise scales
    assert "0.3 left" in cell.html

    budget = kernel.execute("%syft budget")
    assert budget.status == "ok", budget.text
    assert "hospital-a  diabetes  0.2            0.3   0.5" in budget.text
    assert "\u2588" * 8 + "\u2591" * 12 in budget.text
    [shown] = [m for m in budget.outputs if m["msg_type"] == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in shown["content"]["data"]

    count = kernel.execute(
        "%%request hospital-a/diabetes as df --dp-epsilon 0.2 --out n\ndf.count()"
    )
    assert "count() = " in count.text and "0.1 left" in count.text
    assert abs(value(kernel, "n.value") - 240) < 60
    assert "0.4            0.1   0.5" in kernel.execute("%syft budget").text

    refused = kernel.execute(DP_CELL)
    assert refused.status == "error"
    assert "refused the DP query, budget exhausted" in refused.text
    assert "nothing was charged" in refused.text and "Traceback" not in refused.text
    after = world["admins"]["hospital-a"].budget("diabetes", world["scientist"].peer_id)
    assert after.epsilon_spent == pytest.approx(0.4)


def test_dp_query_without_auto_approval_waits_for_review(world: dict, kernel: SyftKernel) -> None:
    admin = world["admins"]["hospital-b"]
    admin.set_budget(world["scientist"].peer_id, "diabetes", epsilon=1.0)
    cell = kernel.execute(
        "%%request hospital-b/diabetes as df --dp-epsilon 0.5 --out ages\n"
        "df.quantile('age', q=0.5, bounds=(0, 120))"
    )
    assert cell.status == "ok", cell.text
    assert "pending: waiting for the owner's review" in cell.text
    [review] = admin.requests("pending")
    review.approve()
    done = kernel.update(cell.display_id, "result bound to ages")
    assert "quantile(age) = " in done and "epsilon 0.5 spent, 0.5 left" in done
    assert f"request {review.id}; policy: dp" in done
    assert abs(value(kernel, "ages.value") - PRIVATE["hospital-b"].age.median()) < 20


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%mock nowhere/diabetes as df\ndf", "unknown domain 'nowhere' (connected: hospital-a"),
        ("%%request hospital-a/nothing as df\ndf", "unknown dataset 'nothing' on domain"),
        ("%%request */nothing as df\ndf", "no connected domain holds nothing"),
        ("%%request hospital-a/diabetes\ndf", "expected DOMAIN/DATASET as NAME"),
        ("%%request hospital-a/diabetes as 1df\ndf", "not a valid Python name"),
        ("%%request hospital-a/diabetes as df --out\ndf", "--out needs a value"),
        ("%%request hospital-a/diabetes as df --wait 3\ndf", "unknown option --wait"),
        ("%%request */diabetes as df --aggregate max\nlen(df)", "expected sum or mean"),
        ("%%request hospital-a/diabetes as df --aggregate sum\n[1]", "on several domains"),
        ("%%request */diabetes as df --aggregate sum --dp-epsilon 0.1\n[1]", "cannot be combined"),
        ("%%request */diabetes as df --aggregate sum\n[len(df)]", "on at least 3 domains"),
        ("%%request hospital-a/diabetes as a, hospital-b/diabetes as b\n1", "different domains"),
        (
            "%%request hospital-a/diabetes as df\nx = (1,\ny = 2",
            "SyntaxError in the cell, line 2: '(' was never closed (nothing was sent)",
        ),
        ("%syft connect /ip4/127.0.0.1/tcp/1/p2p/not-a-peer", "cannot"),
    ],
)
def test_bad_input_is_one_clear_message(
    world: dict, kernel: SyftKernel, cell: str, message: str
) -> None:
    before = {name: len(admin.requests()) for name, admin in world["admins"].items()}
    result = kernel.execute(cell)
    assert result.status == "error"
    assert message in result.text
    assert "Traceback" not in result.text and "UsageError" in result.text
    assert {name: len(admin.requests()) for name, admin in world["admins"].items()} == before


def test_offline_domain_and_lost_connection_mid_wait(world: dict, kernel: SyftKernel) -> None:
    """The domain dies while a request waits: the kernel says so, keeps serving, reconnects when
    the domain is back, and the request (kept by the domain) completes."""
    owner_home, owner = person(world["root"], "owner-clinic")
    port = free_port()
    clinic = DomainProcess(
        world["root"], "clinic", owner_home, "--listen", f"/ip4/127.0.0.1/tcp/{port}"
    )
    clinic.start()
    try:
        admin = AdminClient(NodeConnection(clinic.address, owner))
        admin.create_dataset("visits", private=PRIVATE["hospital-a"], mock=MOCKS["hospital-a"])
        admin.add_user(world["scientist"].peer_id)
        assert kernel.execute(f"%syft connect {clinic.address}").status == "ok"
        assert kernel.execute("%%mock clinic/visits as v\nlen(v)").status == "ok"
        cell = kernel.execute("%%request clinic/visits as v --out visits\nlen(v)")
        assert "pending" in cell.text

        clinic.kill()
        assert "connection lost" in kernel.update(cell.display_id, "connection lost")
        offline = kernel.execute("%%request clinic/visits as v\nlen(v)")
        assert offline.status == "error" and "domain 'clinic' is offline" in offline.text
        assert "clinic" in kernel.execute("%syft domains").text.split("offline")[0]
        assert kernel.execute("%%mock clinic/visits as v\nlen(v)").status == "ok"  # cached
        unreachable = kernel.execute(f"%syft connect {clinic.address}")
        assert "cannot reach" in unreachable.text and "offline or unreachable" in unreachable.text

        clinic.start()
        decide(AdminClient(NodeConnection(clinic.address, owner)))
        kernel.update(cell.display_id, "result bound to visits")
        assert value(kernel, "visits") == 240
    finally:
        clinic.kill()


AGGREGATE_CELL = (
    "%%request */diabetes as df --aggregate sum --out totals\n"
    "import numpy as np\n"
    "np.array([len(df), int(df['age'].sum())])"
)


def test_aggregate_sum_across_three_domains(world: dict, kernel: SyftKernel) -> None:
    """A third hospital joins; the cell's vector is summed securely over all three."""
    owner_home, owner = person(world["root"], "owner-hospital-c")
    third = DomainProcess(world["root"], "hospital-c", owner_home)
    third.start()
    stop = threading.Event()
    admins = dict(world["admins"])

    def owners() -> None:
        while not stop.wait(0.1):
            for admin in admins.values():
                decide(admin)

    approver = threading.Thread(target=owners, daemon=True)
    try:
        private = diabetes(150, 5)
        admin = AdminClient(NodeConnection(third.address, owner))
        admin.create_dataset("diabetes", private=private, mock=MOCKS["hospital-b"])
        admin.add_user(world["scientist"].peer_id)
        admins["hospital-c"] = admin
        assert kernel.execute(f"%syft connect {third.address}").status == "ok"
        cell = kernel.execute(AGGREGATE_CELL)
        assert cell.status == "ok", cell.text
        assert "waiting for 3 owners' approval" in cell.text
        approver.start()
        text = kernel.update(cell.display_id, "result bound to totals", timeout=60)
        tables = [*PRIVATE.values(), private]
        expected = [sum(len(t) for t in tables), int(sum(t.age.sum() for t in tables))]
        assert value(kernel, "totals.tolist()") == expected
        assert "sum over 3 domains" in text
        assert "contributed: hospital-a, hospital-b, hospital-c" in text
        assert "aggregate: secure sum, no single domain's value was revealed" in text
    finally:
        stop.set()
        if approver.is_alive():
            approver.join()
        third.kill()


# ---- the demo and the example notebook ------------------------------------------------------


def test_connect_demo_joins_its_domains_as_its_scientist(world: dict) -> None:
    folder = world["root"] / "visitor"
    write_demo(world["nodes"], folder)
    visitor = SyftKernel(folder, cwd=folder)  # another identity, until the demo's is taken
    try:
        stranger = visitor.execute(f"%syft connect {world['nodes']['hospital-a'].address}")
        assert "(0 datasets; you: stranger: ask the owner to add you" in stranger.text
        refused = visitor.execute("%%request hospital-a/diabetes as df\nlen(df)")
        assert "unknown dataset 'diabetes' on domain 'hospital-a' (datasets: none)" in refused.text
        cell = visitor.execute("%syft connect demo")
        assert cell.status == "ok", cell.text
        assert "connected to domain hospital-a" in cell.text
        assert "connected to domain hospital-b" in cell.text
        assert world["scientist"].peer_id in visitor.execute("%syft whoami").text
        assert (
            "rows 40"
            in visitor.execute("%%mock hospital-b/diabetes as d\nprint('rows', len(d))").text
        )
    finally:
        visitor.stop()


def test_missing_demo_is_a_clear_message(world: dict, kernel: SyftKernel) -> None:
    cell = kernel.execute("%syft connect demo")
    assert cell.status == "error" and "jupyter-syft demo --keep-running" in cell.text


def test_example_notebook_runs_headless(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = world["root"] / "notebook"
    monkeypatch.setenv("JUPYTER_SYFT_DEMO", str(write_demo(world["nodes"], folder)))
    monkeypatch.setenv("JUPYTER_SYFT_HOME", str(folder))
    stop = threading.Event()

    def owners() -> None:
        while not stop.is_set():
            for admin in world["admins"].values():
                decide(admin)
            time.sleep(0.05)

    approver = threading.Thread(target=owners)
    approver.start()
    notebook = nbformat.read(EXAMPLE, as_version=4)
    try:
        NotebookClient(notebook, kernel_name="syft", timeout=60).execute()
    finally:
        stop.set()
        approver.join()
    outputs = [
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]
    text = "\n".join(outputs)
    assert "connected to domain hospital-a" in text and "MOCK data" in text
    assert "result bound to summaries" in text  # the request cell, updated in place
    expected = pd.concat(PRIVATE.values()).bmi.mean()
    assert f"pooled mean BMI over 442 patients: {expected:.2f}" in text
