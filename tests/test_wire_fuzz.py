"""A short seeded wire-fuzzing run against a live domain and a live network node (see
tests/wire_fuzz.py for what is sent and what must hold; `make fuzz` runs 100,000 cases)."""

from __future__ import annotations

from pathlib import Path

import msgspec.inspect as mi
import pytest
from wire_fuzz import (
    READS_AUDITED,
    Report,
    Target,
    domain_target,
    network_target,
    run,
    strategy_for,
)
from wire_state import differences, domain_state, network_state

from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm

CASES = 1500  # per node in CI; benchmarks/fuzz_wire.py runs many more
SEED = 20261203


def fuzz(target: Target) -> Report:
    report = run(target, CASES, SEED)
    print(
        f"{target.protocol.id}: {report.cases} cases, outcomes {dict(report.outcomes)}, "
        f"by mutation {dict(report.by_mutation)}"
    )
    assert not report.problems, "\n".join(report.problems[:20])
    assert report.cases >= CASES * 0.95  # the few drawn values msgpack cannot encode
    assert len(report.by_mutation) == 15
    return report


@pytest.mark.timeout(600)
def test_the_domain_survives_fuzzing_unchanged(tmp_path: Path) -> None:
    for target, data_dir in domain_target(tmp_path):
        before = domain_state(data_dir, READS_AUDITED)
        fuzz(target)
        assert not differences(before, domain_state(data_dir, READS_AUDITED))


@pytest.mark.timeout(600)
def test_the_network_survives_fuzzing_unchanged(tmp_path: Path) -> None:
    for target, data_dir in network_target(tmp_path):
        before = network_state(data_dir)
        fuzz(target)
        assert not differences(before, network_state(data_dir))


@pytest.mark.unit
def test_every_wire_type_has_a_strategy() -> None:
    """A new field type the fuzzer cannot draw fails here, before any fuzzing run."""
    for protocol in (m.DOMAIN, nm.NETWORK):
        for call in protocol.calls:
            strategy_for(mi.type_info(call))
