"""`jupyter-syft demo`: a network, three hospitals, one data scientist, real data, all for real.

scikit-learn's diabetes table (442 patients, real measurements) is split by rows between three
domain nodes, each a separate process with its own identity, store and Flight server, all
members of a network node (a fourth process). The scientist finds the hospitals by searching
the network, reads the mocks, asks each hospital for the mean BMI and a BMI/progression
correlation, and also asks for the raw rows, which the owners deny. Results come back over
Arrow and are pooled locally. Then DP queries against a budget, the audit logs, and one model
trained by federated learning across the three hospitals with secure aggregation. With
`--keep-running` everything stays up afterwards, described in DIR/demo.json for other tools
(the Syft kernel's `%syft connect demo`, `demo_domains()` in examples/federated.ipynb).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from jupyter_syft.client.admin import AdminClient, ReviewRequest
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.demo_file import demo_path
from jupyter_syft.errors import RequestDenied, SyftError
from jupyter_syft.identity import USER_KEY_FILE, Identity, load_or_create

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from jupyter_syft.client.domain import DomainClient

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
# Public, plausible clinical ranges of the table's raw columns, written here rather than read
# from anyone's data: the domains clamp and scale each feature to [0, 1] by them, and the
# trained model does the same to its inputs.
FEATURE_BOUNDS = {
    "age": (18.0, 90.0),  # years
    "sex": (1.0, 2.0),  # coded 1 or 2
    "bmi": (15.0, 50.0),  # kg/m2
    "bp": (60.0, 140.0),  # mean arterial pressure, mmHg
    "tc": (90.0, 320.0),  # total cholesterol, mg/dL
    "ldl": (40.0, 250.0),  # mg/dL
    "hdl": (20.0, 100.0),  # mg/dL
    "tch": (1.0, 10.0),  # total cholesterol / HDL
    "ltg": (3.0, 6.5),  # log of serum triglycerides
    "glu": (55.0, 130.0),  # blood sugar, mg/dL
}
# A few seconds: 10 rounds of 5 local epochs with Adam (one owner approval each, not ten).
FEDERATED: dict[str, Any] = {
    "rounds": 10,
    "local_epochs": 5,
    "lr": 0.02,
    "batch_size": 32,
    "optimizer": "adam",
}
NOTEBOOKS_DIR = "notebooks"  # in the demo folder: the user's notebooks, kept across runs
STOP_S = 20.0  # a node still running this long after SIGTERM is killed
PIPED_WIDTH = 200  # piped output: tables as wide as they need, lines never cut


def make_console() -> Console:
    """The demo's terminal output. Lines are never wrapped into several (a multiaddr must copy
    as one line): a terminal soft-wraps them itself; piped output is laid out wide."""
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = PIPED_WIDTH
    return console


console = make_console()


def section(title: str) -> None:
    """A step's heading: a rule across the terminal; 80 columns, not PIPED_WIDTH, when piped."""
    console.print(Rule(f"[bold]{title}"), width=None if console.is_terminal else 80)


def demo_domains() -> dict[str, DomainClient]:
    """The running demo's domains by name, connected as its scientist: for notebooks that
    want the clients themselves (`syft.federated.train`), not only the Syft kernel's magics."""
    from jupyter_syft.client.domain import DomainClient

    path = demo_path()
    demo = json.loads(path.read_text())
    scientist = load_or_create(path.parent / demo["scientist_home"] / USER_KEY_FILE)
    return {
        name: DomainClient(NodeConnection(address, scientist))
        for name, address in sorted(demo["domains"].items())
    }


def diabetes_frame() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    return frame.rename(
        columns={"s1": "tc", "s2": "ldl", "s3": "hdl", "s4": "tch", "s5": "ltg", "s6": "glu"}
    )


def fake_like(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A mock: same columns and dtypes, values drawn uniformly within each column's range."""
    rng = np.random.default_rng(seed)
    fake = {}
    for column in frame.columns:
        low, high = frame[column].min(), frame[column].max()
        drawn = rng.uniform(low, high, rows)
        fake[column] = drawn.round() if column in ("age", "sex", "target") else drawn.round(2)
    return pd.DataFrame(fake).astype(frame.dtypes.to_dict())


def start_node(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    """`jupyter-syft ARGS` as the person whose key is in `home`, started: node_address() waits
    for it, so several nodes can start side by side."""
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    command = [sys.executable, "-m", "jupyter_syft.cli", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True
    )


def node_address(process: subprocess.Popen, what: str, log: Path) -> str:
    """The multiaddr a started node prints once it serves."""
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    if not address:
        process.wait(timeout=10)
        raise RuntimeError(f"{what} did not start; see {log}")
    return address


def mean_bmi(df):
    return float(df["bmi"].mean())


def bmi_summary(df):
    import numpy as np

    return {
        "n": len(df),
        "sum_bmi": float(df["bmi"].sum()),
        "corr_bmi_progression": float(np.corrcoef(df["bmi"], df["target"])[0, 1]),
    }


def all_rows(df):
    return df


def diabetes_model():
    """A small MLP; its output is put in the target's public range (about 25 to 350)."""
    import torch

    class Progression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
            )

        def forward(self, x):
            return 150.0 + 75.0 * self.net(x)

    torch.manual_seed(0)
    return Progression()


def train_central(frame: pd.DataFrame) -> torch.nn.Module:
    """The reference: the same model, initial weights, training code and epochs (rounds x
    local epochs) as on the domains, on the pooled table (which, outside this demo, no one
    holds)."""
    import pyarrow as pa

    from jupyter_syft.client.federated import BoundedInput
    from jupyter_syft.federated.local import train_round
    from jupyter_syft.federated.weights import to_safetensors
    from jupyter_syft.wire import messages as m

    bounds = list(FEATURE_BOUNDS.values())
    plan = m.FederatedPlan(
        "", "", list(FEATURE_BOUNDS), "target", rounds=1,
        local_epochs=FEDERATED["rounds"] * FEDERATED["local_epochs"],
        batch_size=FEDERATED["batch_size"], learning_rate=FEDERATED["lr"],
        optimizer=FEDERATED["optimizer"], feature_bounds=bounds,
    )  # fmt: skip
    model = diabetes_model()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    train_round(plan, table, model, to_safetensors(diabetes_model().state_dict()), None)
    return BoundedInput(bounds, model)


def mse_on(model: torch.nn.Module, frame: pd.DataFrame) -> float:
    """Mean squared error of `model` (raw features in) on `frame`."""
    import torch

    inputs = torch.tensor(frame[list(FEATURE_BOUNDS)].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        predicted = model(inputs).numpy().ravel()
    return float(np.mean((predicted - frame["target"].to_numpy()) ** 2))


def run_demo(folder: Path, keep_running: bool = False) -> int:
    _clear(folder)
    frame = diabetes_frame()
    thirds = np.array_split(np.arange(len(frame)), len(HOSPITALS))
    scientist_home = (folder / "homes" / "scientist").resolve()
    scientist = load_or_create(scientist_home / "identity.key")
    nodes: dict[str, subprocess.Popen] = {}  # what each is, for the stopping messages
    demo_file = folder / "demo.json"
    try:
        section("1. An operator starts a network; three data owners join it")
        # Each node is in `nodes` from its start, so an interruption stops it too.
        nodes["the network node"] = start_node(
            ["network", "start", "--name", "demo-network", "--data-dir", str(folder / "network")],
            folder / "homes" / "operator",
            folder / "network.log",
        )
        network = node_address(nodes["the network node"], "network start", folder / "network.log")
        console.print(f"network demo-network: [cyan]{network}[/]")
        owner_identities: dict[str, Identity] = {}
        for name in HOSPITALS:  # side by side: each node spends a second or two starting
            home = folder / "homes" / name
            owner_identities[name] = load_or_create(home / "identity.key")
            command = ["domain", "start", "--name", name, "--data-dir", str(folder / name)]
            nodes[name] = start_node([*command, "--network", network], home, folder / f"{name}.log")
        owners: dict[str, AdminClient] = {}
        addresses: dict[str, str] = {}
        for i, name in enumerate(HOSPITALS):
            address = node_address(nodes[name], "domain start", folder / f"{name}.log")
            addresses[name] = address
            owners[name] = AdminClient(NodeConnection(address, owner_identities[name]))
            console.print(f"{name}: [cyan]{address}[/]")

            private = frame.iloc[thirds[i]].reset_index(drop=True)
            started = time.perf_counter()
            owners[name].create_dataset(
                "diabetes",
                private=private,
                mock=fake_like(private, 100, seed=i),
                description="Diabetes progression after one year, 10 baseline measurements",
            )
            owners[name].add_user(scientist.peer_id, role="data_scientist", name="scientist")
            console.print(
                f"  uploaded 'diabetes' ({len(private)} private rows + 100-row mock) in "
                f"{(time.perf_counter() - started) * 1000:.0f} ms; added the scientist as a user"
            )

        section("2. The data scientist searches the network and reads the mocks")
        net = NetworkClient(NetworkConnection(network, scientist))
        hits = _search_until(net, "diabetes", len(HOSPITALS))
        found = Table("domain", "dataset", "rows", "columns", "description", title="search")
        for hit in hits:
            found.add_row(
                hit.domain, hit.dataset, str(hit.rows), ", ".join(hit.schema), hit.description
            )
        console.print('net.search("diabetes")', found)
        domains = {
            hit.domain: net.domain(hit.domain) for hit in sorted(hits, key=lambda h: h.domain)
        }
        for name, domain in domains.items():
            dataset = domain.datasets["diabetes"]
            console.print(f"{name}: {dataset!r}")
        console.print(domains[HOSPITALS[0]].datasets["diabetes"].mock.head(3))

        section("3. The scientist submits requests (code travels as source)")
        summaries = {n: d.request(bmi_summary, df="diabetes") for n, d in domains.items()}
        dumps = {n: d.request(all_rows, df="diabetes") for n, d in domains.items()}
        for name, request in summaries.items():
            console.print(
                f"{name}: bmi_summary -> {request.status}; all_rows -> {dumps[name].status}"
            )

        section("4. The owners review: approve the summary, deny the raw dump")
        for name, owner in owners.items():
            for review in owner.requests(status="pending"):
                assert isinstance(review, ReviewRequest)  # an AdminClient's request_type
                if review.info.function_name == "bmi_summary":
                    review.approve()
                    console.print(f"{name}: approved {review.id[:8]} (bmi_summary)")
                else:
                    review.deny("returns every private row")
                    console.print(f"{name}: denied {review.id[:8]} ({review.info.function_name})")

        section("5. Results come back; the scientist pools them")
        table = Table("domain", "patients", "mean BMI", "corr(BMI, progression)", "raw dump")
        total_n, total_bmi = 0, 0.0
        for name in HOSPITALS:
            result = summaries[name].result(timeout=60)
            try:
                dumps[name].result(timeout=60)
                dump_outcome = "[red]released[/]"
            except RequestDenied as denied:
                dump_outcome = f"denied: {denied.reason}"
            total_n += result["n"]
            total_bmi += result["sum_bmi"]
            table.add_row(
                name,
                str(result["n"]),
                f"{result['sum_bmi'] / result['n']:.3f}",
                f"{result['corr_bmi_progression']:.3f}",
                dump_outcome,
            )
        table.add_row("pooled", str(total_n), f"{total_bmi / total_n:.3f}", "", "")
        console.print(table)
        console.print(f"check against the full table: mean BMI {frame['bmi'].mean():.3f}")

        section("6. Differential privacy: a budget, DP queries, a refusal")
        for owner in owners.values():
            owner.set_budget(scientist.peer_id, "diabetes", epsilon=0.8)
            owner.set_policy("diabetes", auto_approve=True, max_query_epsilon=0.5)
        dp_table = Table("domain", "DP mean BMI (epsilon 0.5)", "epsilon left", "again (0.5)")
        for name, domain in domains.items():
            queries = domain.datasets["diabetes"].dp
            answer = queries.mean("bmi", bounds=(15, 50), epsilon=0.5).result(timeout=60)
            try:
                queries.mean("bmi", bounds=(15, 50), epsilon=0.5).result(timeout=60)
                again = "[red]answered[/]"
            except SyftError as refused:
                again = f"refused: {refused}"
            value = f"{answer.shown} ({answer.summary()})"
            dp_table.add_row(name, value, f"{answer.epsilon_left:g}", again)
        console.print(dp_table)

        section("7. Each owner's audit log")
        for name, owner in owners.items():
            log = owner.audit_log(limit=200)
            actions = ", ".join(sorted({e.action for e in log.entries}))
            console.print(
                f"{name}: {len(log.entries)} entries, hash chain "
                f"{'verified' if log.chain_ok else '[red]BROKEN[/]'}: {actions}"
            )
        section("8. Federated learning: one model, three hospitals' rows")
        _federated_step(frame, owners, domains)
        if keep_running:
            for owner in owners.values():  # enough for examples/federated.ipynb's DP training
                owner.set_budget(scientist.peer_id, "diabetes", epsilon=0.8 + 10.0, delta=1e-4)
            console.print("each owner raised the scientist's budget by epsilon 10, delta 1e-4")
            description = {
                "network": network,
                "domains": addresses,
                "scientist_home": str(scientist_home),
            }
            demo_file.write_text(json.dumps(description, indent=2))
            return _wait_for_ctrl_c(list(nodes.values()), demo_file)
        return 0
    except KeyboardInterrupt:  # Ctrl-C before the script's end
        return 130
    finally:
        demo_file.unlink(missing_ok=True)
        stop_all(nodes, console.print)


def _clear(folder: Path) -> None:
    """Start clean: a fresh network and domains, but the user's notebooks stay."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name == NOTEBOOKS_DIR:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def stop_all(processes: dict[str, subprocess.Popen], say: Callable[[str], None]) -> None:
    """SIGTERM to every process at once, then at most STOP_S for them all (the stragglers are
    killed): a stop takes as long as the slowest, not the sum. `say` tells each step."""
    running = {name: p for name, p in processes.items() if p.poll() is None}
    if not running:
        return
    say(f"stopping {', '.join(running)}…")
    started = time.monotonic()
    for process in running.values():
        process.terminate()
    while running and time.monotonic() - started < STOP_S:
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                say(f"  stopped {name} ({time.monotonic() - started:.1f} s)")
        time.sleep(0.05)
    for name, process in running.items():
        process.kill()
        process.wait()
        say(f"  {name} did not stop within {STOP_S:.0f} s: killed")


def _federated_step(
    frame: pd.DataFrame, owners: dict[str, AdminClient], domains: dict[str, DomainClient]
) -> None:
    """The scientist trains across the hospitals while the owners (this script) approve the
    plan once each; then both models are scored on the full table, held here only because
    it is public."""
    import jupyter_syft as syft

    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        training = pool.submit(
            syft.federated.train, diabetes_model, [domains[name] for name in HOSPITALS],
            dataset="diabetes", target="target", features=list(FEATURE_BOUNDS),
            feature_bounds=list(FEATURE_BOUNDS.values()), secure_aggregation=True,
            validation=(frame[list(FEATURE_BOUNDS)], frame["target"]), show=False, **FEDERATED,
        )  # fmt: skip
        approved: set[str] = set()
        while len(approved) < len(owners) and not training.done():
            for name, owner in owners.items():
                for review in owner.requests(status="pending"):
                    assert isinstance(review, ReviewRequest)  # an AdminClient's request_type
                    plan = review.info.plan
                    review.approve()
                    approved.add(name)
                    assert plan is not None  # the only requests pending now are the plans
                    console.print(
                        f"{name}: approved {review.id[:8]} once: a federated plan of "
                        f"{plan.rounds} rounds x {plan.local_epochs} epochs on diabetes "
                        "(no review per round)"
                    )
            time.sleep(0.05)
        federated, history = training.result()
    seconds = time.perf_counter() - started
    mse = history.metric("mse")
    console.print(
        f"{len(history.rounds)} rounds in {seconds:.1f} s, each update summed by secure "
        f"aggregation (no one saw a hospital's update); MSE by round: "
        + ", ".join(f"{v:.0f}" for v in mse if v is not None)
    )
    central = train_central(frame)
    scores = {"federated": mse_on(federated, frame), "central": mse_on(central, frame)}
    table = Table("model", "trained on", "MSE, all 442 patients", title="diabetes progression")
    table.add_row("federated", "3 hospitals' rows, where they are", f"{scores['federated']:.1f}")
    table.add_row("central", "the pooled table (reference)", f"{scores['central']:.1f}")
    table.add_row("predict the mean", "-", f"{frame['target'].var(ddof=0):.1f}")
    console.print(table)
    console.print(
        f"federated MSE {scores['federated']:.1f}, central MSE {scores['central']:.1f}: "
        f"federated / central {scores['federated'] / scores['central']:.3f}"
    )
    console.print(
        "(the central reference needs the pooled table, which this demo holds because the "
        "data set is public; in a real deployment no one holds it)"
    )


def _search_until(net: NetworkClient, text: str, domains: int, timeout: float = 30.0) -> list:
    """Search until `domains` domains answer (they announce as they start)."""
    deadline = time.monotonic() + timeout
    while True:
        hits = net.search(text)
        if len({hit.domain for hit in hits}) >= domains or time.monotonic() > deadline:
            return hits
        time.sleep(0.1)


def _wait_for_ctrl_c(processes: list[subprocess.Popen], demo_file: Path) -> int:
    section("The network and the domains keep running")
    console.print(
        f"{demo_file} describes them (the Syft kernel: %syft connect demo). Ctrl-C stops them."
    )
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    console.print("[red]a node stopped by itself[/]; see the logs in", demo_file.parent)
    return 1
