"""`jupyter-syft demo`: a network, two hospitals, one data scientist, real data, all for real.

scikit-learn's diabetes table (442 patients, real measurements) is split by rows between two
domain nodes, each a separate process with its own identity, store and Flight server, both
members of a network node (a third process). The scientist finds the hospitals by searching
the network, reads the mocks, asks each hospital for the mean BMI and a BMI/progression
correlation, and also asks for the raw rows, which the owners deny. Results come back over
Arrow and are pooled locally. With `--keep-running` everything stays up afterwards, described
in DIR/demo.json for other tools (the Syft kernel's `%syft connect demo`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.errors import RequestDenied, SyftError
from jupyter_syft.identity import load_or_create

HOSPITALS = ("hospital-a", "hospital-b")
console = Console()


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


def start_node(args: list[str], home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`jupyter-syft ARGS` as the person whose key is in `home`; returns it and its address."""
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    command = [sys.executable, "-m", "jupyter_syft.cli", *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True
    )
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    if not address:
        process.wait(timeout=10)
        raise RuntimeError(f"{' '.join(args[:2])} did not start; see {log}")
    return process, address


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


def run_demo(folder: Path, keep_running: bool = False) -> int:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frame = diabetes_frame()
    halves = np.array_split(np.arange(len(frame)), 2)
    scientist_home = (folder / "homes" / "scientist").resolve()
    scientist = load_or_create(scientist_home / "identity.key")
    processes: list[subprocess.Popen] = []
    demo_file = folder / "demo.json"
    try:
        console.rule("[bold]1. An operator starts a network; two data owners join it")
        process, network = start_node(
            ["network", "start", "--name", "demo-network", "--data-dir", str(folder / "network")],
            folder / "homes" / "operator",
            folder / "network.log",
        )
        processes.append(process)
        console.print(f"network demo-network: [cyan]{network}[/]")
        owners: dict[str, AdminClient] = {}
        addresses: dict[str, str] = {}
        for i, name in enumerate(HOSPITALS):
            home = folder / "homes" / name
            owner_identity = load_or_create(home / "identity.key")
            command = ["domain", "start", "--name", name, "--data-dir", str(folder / name)]
            process, address = start_node(
                [*command, "--network", network], home, folder / f"{name}.log"
            )
            processes.append(process)
            addresses[name] = address
            owners[name] = AdminClient(NodeConnection(address, owner_identity))
            console.print(f"{name}: [cyan]{address}[/]")

            private = frame.iloc[halves[i]].reset_index(drop=True)
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

        console.rule("[bold]2. The data scientist searches the network and reads the mocks")
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

        console.rule("[bold]3. The scientist submits requests (code travels as source)")
        summaries = {n: d.request(bmi_summary, df="diabetes") for n, d in domains.items()}
        dumps = {n: d.request(all_rows, df="diabetes") for n, d in domains.items()}
        for name, request in summaries.items():
            console.print(
                f"{name}: bmi_summary -> {request.status}; all_rows -> {dumps[name].status}"
            )

        console.rule("[bold]4. The owners review: approve the summary, deny the raw dump")
        for name, owner in owners.items():
            for review in owner.requests(status="pending"):
                if review.info.function_name == "bmi_summary":
                    review.approve()
                    console.print(f"{name}: approved {review.id[:8]} (bmi_summary)")
                else:
                    review.deny("returns every private row")
                    console.print(f"{name}: denied {review.id[:8]} ({review.info.function_name})")

        console.rule("[bold]5. Results come back; the scientist pools them")
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

        console.rule("[bold]6. Differential privacy: a budget, DP queries, a refusal")
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
            value = f"{answer.value:.3f} {answer.summary()}"
            dp_table.add_row(name, value, f"{answer.epsilon_left:g}", again)
        console.print(dp_table)

        console.rule("[bold]7. Each owner's audit log")
        for name, owner in owners.items():
            log = owner.audit_log(limit=200)
            actions = ", ".join(sorted({e.action for e in log.entries}))
            console.print(
                f"{name}: {len(log.entries)} entries, hash chain "
                f"{'verified' if log.chain_ok else '[red]BROKEN[/]'}: {actions}"
            )
        if keep_running:
            description = {
                "network": network,
                "domains": addresses,
                "scientist_home": str(scientist_home),
            }
            demo_file.write_text(json.dumps(description, indent=2))
            return _wait_for_ctrl_c(processes, demo_file)
        return 0
    finally:
        demo_file.unlink(missing_ok=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


def _search_until(net: NetworkClient, text: str, domains: int, timeout: float = 30.0) -> list:
    """Search until `domains` domains answer (they announce as they start)."""
    deadline = time.monotonic() + timeout
    while True:
        hits = net.search(text)
        if len({hit.domain for hit in hits}) >= domains or time.monotonic() > deadline:
            return hits
        time.sleep(0.1)


def _wait_for_ctrl_c(processes: list[subprocess.Popen], demo_file: Path) -> int:
    console.rule("[bold]The network and the domains keep running")
    console.print(
        f"{demo_file} describes them (the Syft kernel: %syft connect demo). Ctrl-C stops them."
    )
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping")
        return 0
    console.print("[red]a node stopped by itself[/]; see the logs in", demo_file.parent)
    return 1
