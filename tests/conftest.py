"""Shared test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jupyter_syft.client.connection import close_shared_peers


@pytest.fixture(autouse=True, scope="module")
def _stop_client_peers() -> Iterator[None]:
    """Each test module starts with no libp2p client peers left running by the one before."""
    yield
    close_shared_peers()
