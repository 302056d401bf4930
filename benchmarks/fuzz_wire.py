"""The long wire-fuzzing run: 100,000 cases (50,000 per node) against a live domain and a live
network node, with the checks of tests/wire_fuzz.py; prints one table.

Run: `make fuzz` (or `.venv/bin/python benchmarks/fuzz_wire.py [--cases N --seed S]`).
The tests run a short seeded run of the same code (tests/test_wire_fuzz.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from wire_fuzz import (
    MUTATIONS,
    READS_AUDITED,
    Report,
    domain_target,
    network_target,
    run,
)
from wire_state import differences, domain_state, network_state


def fuzz_one(name: str, targets, state, cases: int, seed: int, progress: Progress) -> tuple:
    task = progress.add_task(f"fuzzing the {name}", total=cases)
    for target, data_dir in targets:
        before = state(data_dir)
        started = time.perf_counter()
        report = run(target, cases, seed, lambda n: progress.update(task, completed=n))
        took = time.perf_counter() - started
        changed = differences(before, state(data_dir))
        progress.update(task, completed=cases)
    return report, took, changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=50_000, help="cases per node")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    results: list[tuple[str, Report, float, list[str]]] = []
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        root = Path(tmp)
        for name, targets, state in (
            ("domain", domain_target(root / "domain"), lambda d: domain_state(d, READS_AUDITED)),
            ("network", network_target(root / "network"), network_state),
        ):
            report, took, changed = fuzz_one(name, targets, state, args.cases, args.seed, progress)
            results.append((name, report, took, changed))
    table = Table(title=f"Wire fuzzing (seed {args.seed})")
    table.add_column("")
    for name, *_ in results:
        table.add_column(name, justify="right")
    table.add_row("cases", *[f"{r.cases:,}" for _, r, _, _ in results])
    table.add_row("cases/s", *[f"{r.cases / took:,.0f}" for _, r, took, _ in results])
    for mutation in MUTATIONS:
        table.add_row(f"  {mutation}", *[f"{r.by_mutation[mutation]:,}" for _, r, _, _ in results])
    outcomes = sorted({o for _, r, _, _ in results for o in r.outcomes})
    for outcome in outcomes:
        table.add_row(f"reply: {outcome}", *[f"{r.outcomes[outcome]:,}" for _, r, _, _ in results])
    table.add_row(
        "problems (crash, internal, wrong reply)", *[str(len(r.problems)) for _, r, _, _ in results]
    )
    table.add_row("state changed", *["yes" if c else "no" for *_, c in results])
    console = Console()
    console.print(table)
    total = sum(r.cases for _, r, _, _ in results)
    console.print(f"{total:,} cases in all")
    failed = False
    for name, report, _, changed in results:
        for problem in report.problems[:20] + changed:
            console.print(f"[red]{name}: {problem}[/red]")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
