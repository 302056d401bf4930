"""`jupyter-syft demo`: two hospitals, one data scientist, real data, every step for real.

scikit-learn's diabetes table (442 patients, real measurements) is split by rows between two
domain nodes, each a separate process with its own identity, store and Flight server. The
scientist reads the mocks, asks each hospital for the mean BMI and a BMI/progression
correlation, and also asks for the raw rows, which the owners deny. Results come back over
Arrow and are pooled locally.
"""

from __future__ import annotations

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
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.errors import RequestDenied
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


def start_domain(name: str, data_dir: Path, home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    command = [
        sys.executable,
        "-m",
        "jupyter_syft.cli",
        "domain",
        "start",
        "--name",
        name,
        "--data-dir",
        str(data_dir),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True
    )
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    if not address:
        process.wait(timeout=10)
        raise RuntimeError(f"domain {name} did not start; see {log}")
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


def run_demo(folder: Path) -> int:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frame = diabetes_frame()
    halves = np.array_split(np.arange(len(frame)), 2)
    scientist = load_or_create(folder / "homes" / "scientist" / "identity.key")
    processes: list[subprocess.Popen] = []
    try:
        console.rule("[bold]1. Two data owners start their domain nodes")
        owners: dict[str, AdminClient] = {}
        addresses: dict[str, str] = {}
        for i, name in enumerate(HOSPITALS):
            home = folder / "homes" / name
            owner_identity = load_or_create(home / "identity.key")
            process, address = start_domain(name, folder / name, home, folder / f"{name}.log")
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

        console.rule("[bold]2. The data scientist connects and reads the mocks")
        domains = {n: DomainClient(NodeConnection(a, scientist)) for n, a in addresses.items()}
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

        console.rule("[bold]6. Each owner's audit log")
        for name, owner in owners.items():
            log = owner.audit_log(limit=200)
            actions = ", ".join(sorted({e.action for e in log.entries}))
            console.print(
                f"{name}: {len(log.entries)} entries, hash chain "
                f"{'verified' if log.chain_ok else '[red]BROKEN[/]'}: {actions}"
            )
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
