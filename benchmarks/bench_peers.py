"""jupyter-syft beside PySyft 0.9.5 and Flower, all timed in this one run on this machine.

Figures typed in from an earlier run go stale (the same PySyft script ran 2-3x slower a week
later on the same machine), so every ratio printed here comes from numbers measured minutes
apart: PySyft's steps (benchmarks/peers/pysyft_steps.py) in its own venv, ours through
bench_foundation.measure() against a real domain process, Flower's FedAvg
(benchmarks/peers/flower_app, driven by peers/flower_fedavg.py) deployed and simulated, ours
through bench_federated's functions over three domain processes. Everything binds 127.0.0.1.

The peers' venvs are made once under `.bench/` (torch==2.13.0 first: its CPU wheel is on local
disk, a looser spec pulls CUDA). Logs go to `.bench/logs/`. Run: `make bench-peers` (about
15 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_diabetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_federated
import bench_foundation
from nodes import Approver, DomainProcess, person

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent / ".bench"
LOGS = BENCH / "logs"
PEERS = HERE / "peers"
ROUNDS = 20
PACKAGES: dict[str, list[list[str]]] = {
    "pysyft": [["torch==2.13.0"], ["syft==0.9.5", "sniffio", "torch==2.13.0"]],
    "flower": [["torch==2.13.0"], ["flwr[simulation]", "torch==2.13.0", "numpy", "scikit-learn"]],
}
OUR_STEPS = "jupyter-syft steps"
PYSYFT_STEPS = "PySyft 0.9.5 steps (log: .bench/logs/pysyft-steps.log)"
OUR_FEDAVG = "jupyter-syft FedAvg"
DEPLOYMENT = "Flower deployment (SuperLink + 3 SuperNodes)"
SIMULATION = "Flower simulation (Ray)"
console = Console(width=160)


def ensure_venv(name: str) -> Path:
    """`.bench/NAME` with its packages, unless a finished earlier install left its stamp."""
    venv = BENCH / name
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    LOGS.mkdir(parents=True, exist_ok=True)
    console.print(f"installing {name} into {venv} (once; log: {LOGS / f'install-{name}.log'})")
    with (LOGS / f"install-{name}.log").open("ab") as log:
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True, stdout=log, stderr=log)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        for step in [["--upgrade", "pip"], *PACKAGES[name]]:
            log.write(f"$ pip install {' '.join(step)}\n".encode())
            log.flush()
            subprocess.run([*pip, *step], check=True, stdout=log, stderr=log)
    (venv / ".installed").touch()
    return python


def import_seconds(python: Path, module: str) -> float:
    """Wall time of `python -c "import MODULE"` in a fresh interpreter, median of 3 after
    one warm-up run (which compiles the bytecode)."""
    command = [str(python), "-c", f"import {module}"]
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def pysyft_steps(python: Path) -> dict[str, float]:
    """PySyft's figures from its own venv; its datasite's files go to a temp dir we remove."""
    scratch = Path(tempfile.mkdtemp(prefix="pysyft-"))
    out = scratch / "figures.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        with (LOGS / "pysyft-steps.log").open("wb") as log:
            subprocess.run(
                [str(python), str(PEERS / "pysyft_steps.py"), str(out)],
                check=True, stdout=log, stderr=log, env=env, timeout=1800,
            )  # fmt: skip
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def diabetes() -> tuple[list[Any], Any, list[str]]:
    """bench_federated's split: three training parts and the 88 held-out test rows."""
    parts, test = bench_federated.split(load_diabetes(as_frame=True).frame, 88)
    return parts, test, [c for c in test.columns if c != "target"]


def flower_data(path: Path, parts: list[Any], features: list[str]) -> None:
    """The rows and initial weights Flower starts from: the same as ours."""
    arrays = {}
    for i, part in enumerate(parts):
        arrays[f"x{i}"] = part[features].to_numpy(dtype=np.float32)
        arrays[f"y{i}"] = part["target"].to_numpy(dtype=np.float32)
    for name, tensor in bench_federated.diabetes_model().state_dict().items():
        arrays[f"w:{name}"] = tensor.numpy()
    np.savez(path, **arrays)


def flower_fedavg(python: Path, mode: str, data: Path, test: Any, features: list[str]) -> dict:
    """One `flwr run` of flower_app (deployment or simulation); its times and test MSE."""
    workdir = Path(tempfile.mkdtemp(prefix=f"flwr-{mode[:3]}-"))  # short: Ray's socket paths
    out = workdir / "out.npz"
    try:
        done = subprocess.run(
            [str(python), str(PEERS / "flower_fedavg.py"), mode, str(data), str(out), str(workdir)],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        if done.returncode != 0:
            keep = LOGS / f"flower-{mode}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(workdir, keep, ignore=shutil.ignore_patterns("ray", "flwr-home"))
            raise RuntimeError(f"{done.stderr.strip()[-1500:]}\n(logs: {keep})")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        model = bench_federated.diabetes_model()
        with np.load(out) as result:
            model.load_state_dict(
                {k[2:]: torch.from_numpy(result[k]) for k in result.files if k.startswith("w:")}
            )
        figures["mse"] = bench_federated.score(model, test, features, {"loss": "mse"})
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def our_fedavg(parts: list[Any], test: Any, features: list[str]) -> dict[str, dict]:
    """bench_federated's diabetes FedAvg over three domain processes, plain and with secure
    aggregation; each owner approves the plan once (an Approver thread, polling)."""
    root = Path(tempfile.mkdtemp(prefix="peers-federated-"))
    _, scientist = person(root, "scientist")
    nodes: dict[str, DomainProcess] = {}
    approver = None
    results: dict[str, dict] = {}
    try:
        admins = bench_federated.start_domains(root, scientist, {"diabetes": parts}, nodes)
        approver = Approver(admins)
        domains = [DomainClient(NodeConnection(n.address, scientist)) for n in nodes.values()]
        settings = bench_federated.regression_settings(ROUNDS)
        for secure in (False, True):
            started = time.perf_counter()
            model, history = bench_federated.federated(
                domains, "diabetes", bench_federated.diabetes_model, settings,
                secure_aggregation=secure,
            )  # fmt: skip
            wall = time.perf_counter() - started
            rounds = [r.seconds for r in history.rounds]
            failed = [r.round for r in history.rounds if r.failures or r.dropped]
            if len(rounds) != ROUNDS or failed or history.excluded:
                raise RuntimeError(
                    f"{len(rounds)} of {ROUNDS} rounds ran, failures in rounds {failed}, "
                    f"excluded {history.excluded}, {history.stopped}"
                )
            inner = model.model if hasattr(model, "model") else model
            results["secure" if secure else "plain"] = {
                "wall": wall,
                "strategy": sum(rounds),
                "rounds": rounds,
                "mse": bench_federated.score(inner, test, features, settings),
            }
    finally:
        if approver is not None:
            approver.close()
        for node in nodes.values():
            try:
                node.stop()
            except Exception:
                node.kill()
        shutil.rmtree(root, ignore_errors=True)
    return results


LOAD: dict[str, float] = {}  # the 1-minute load average as each part ended, by label


def attempt(label: str, action: Any) -> tuple[Any, str]:
    """Run one peer's part; a failure is reported in its column, the rest still runs. Other
    work on the machine skews one side only, so each part's load average is kept and shown."""
    console.print(f"[bold]{label}[/bold] ...")
    started = time.perf_counter()
    try:
        value = action()
    except Exception as exc:
        console.print(f"  {label} failed: {exc}", style="red")
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    LOAD[label] = os.getloadavg()[0]
    took = time.perf_counter() - started
    console.print(f"  done in {took:.0f} s, load average {LOAD[label]:.1f}")
    return value, ""


def loads(*labels: str) -> str:
    shown = [f"{label.split(' (')[0]} {LOAD[label]:.1f}" for label in labels if label in LOAD]
    return f"1-min load average as each part ended ({os.cpu_count()} CPUs): " + ", ".join(shown)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def ratio(theirs: float | None, ours: float | None) -> str:
    return "-" if theirs is None or ours is None else f"{theirs / ours:.1f}x"


def steps_table(ours: dict[str, float] | None, pysyft: dict[str, float] | None, why: str) -> Table:
    table = Table(
        "step", "jupyter-syft", "PySyft 0.9.5", "PySyft / ours", "medians of (ours / PySyft)",
        title="Same steps, same run: jupyter-syft (domain process, libp2p + Arrow Flight) vs "
        "PySyft 0.9.5 (its datasite over HTTP on 127.0.0.1)",
        caption=(f"PySyft not measured: {why}. " if why else "")
        + loads(OUR_STEPS, PYSYFT_STEPS),
    )  # fmt: skip
    ours, pysyft = ours or {}, pysyft or {}
    rows = [
        ("upload a 1M x 10 float64 table (76 MiB) + 1k-row mock", "upload", "upload", "3 / 3"),
        ('approved "column means": submit -> approve -> result', "means", "means", "3 / 3"),
        ("trivial function: request -> approve -> result", "trivial", "trivial", "20 / 5"),
        ("100 MiB torch tensor result: download (job already done)", "fetch", "download", "5 / 3"),
        ("import the package in a fresh interpreter", "import", "import", "3 / 3"),
    ]
    for label, our_key, their_key, runs in rows:
        mine, theirs = ours.get(our_key), pysyft.get(their_key)
        table.add_row(label, seconds(mine), seconds(theirs), ratio(theirs, mine), runs)
    return table


def fedavg_table(
    deployed: dict | None, simulated: dict | None, ours: dict[str, dict] | None, why: str
) -> Table:
    table = Table(
        "20-round FedAvg, 3 clients, diabetes MLP (1 run each)", "Flower deployment",
        "Flower simulation", "jupyter-syft", "deployment / ours", "simulation / ours",
        "jupyter-syft + secure agg.",
        title="FedAvg, same rows, same initial weights, same local training (5 epochs, Adam)",
        caption=(f"Flower not measured: {why}. " if why else "")
        + loads(OUR_FEDAVG, DEPLOYMENT, SIMULATION),
    )  # fmt: skip
    plain = (ours or {}).get("plain")
    secure = (ours or {}).get("secure")

    def pick(run: dict | None, key: str) -> float | None:
        if run is None:
            return None
        if key == "median":
            return statistics.median(run["rounds"])
        if key == "first":
            return run["rounds"][0]
        return run[key]

    rows = [
        ("end to end: submit -> trained model", "wall"),
        ("the 20 rounds only", "strategy"),
        ("first round", "first"),
        ("median round", "median"),
    ]
    for label, key in rows:
        d, s, o, q = (pick(r, key) for r in (deployed, simulated, plain, secure))
        table.add_row(
            label, seconds(d), seconds(s), seconds(o), ratio(d, o), ratio(s, o), seconds(q)
        )
    mse = [f"{r['mse']:.0f}" if r else "-" for r in (deployed, simulated, plain, secure)]
    table.add_row("test MSE, 88 held-out rows (same training: close)", *mse[:3], "-", "-", mse[3])
    return table


def main() -> None:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    LOGS.mkdir(parents=True, exist_ok=True)
    pysyft_python, pysyft_why = attempt("PySyft 0.9.5 venv", lambda: ensure_venv("pysyft"))
    flower_python, flower_why = attempt("Flower venv", lambda: ensure_venv("flower"))

    ours, _ = attempt(OUR_STEPS, bench_foundation.measure)
    if ours is not None:
        ours["import"] = import_seconds(Path(sys.executable), "jupyter_syft")
    pysyft = None
    if pysyft_python is not None:
        pysyft, pysyft_why = attempt(
            PYSYFT_STEPS,
            lambda: pysyft_steps(pysyft_python),
        )
        if pysyft is not None:
            pysyft["import"] = import_seconds(pysyft_python, "syft")

    parts, test, features = diabetes()
    federated, _ = attempt(OUR_FEDAVG, lambda: our_fedavg(parts, test, features))
    deployed = simulated = None
    if flower_python is not None:
        data = Path(tempfile.mkdtemp(prefix="flwr-data-")) / "data.npz"
        flower_data(data, parts, features)
        deployed, deploy_why = attempt(
            DEPLOYMENT,
            lambda: flower_fedavg(flower_python, "deployment", data, test, features),
        )
        simulated, simulate_why = attempt(
            SIMULATION,
            lambda: flower_fedavg(flower_python, "simulation", data, test, features),
        )
        flower_why = "; ".join(w for w in (deploy_why, simulate_why) if w)
        shutil.rmtree(data.parent, ignore_errors=True)

    console.print(steps_table(ours, pysyft, pysyft_why))
    console.print(fedavg_table(deployed, simulated, federated, flower_why))
    console.print(
        "Flower deployment starts a `flwr-clientapp` process per message (its default "
        "subprocess isolation), 3 at a time here; the simulation keeps Ray actors "
        "(1 CPU each). Ours starts a sandboxed job worker per domain per round (forkserver). "
        "Ours end to end includes each owner approving the plan once."
    )
    console.print(
        f"Load average (1 min) {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end, "
        f"on {os.cpu_count()} CPUs; the run took {(time.perf_counter() - started) / 60:.1f} min."
    )


if __name__ == "__main__":
    main()
