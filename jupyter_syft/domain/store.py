"""The domain's store: one SQLite file, one `Store` assembled from the store core
(`store_core`: node metadata, users, the requests table, policies, the audit log, and the
threat model) and each feature's tables (`domain/<feature>/tables.py`).

Where to add a feature's table: its CREATE statements as the `TABLES` of a `StoreCore`
subclass in the feature's package, its methods there, and the class among `Store`'s bases.
"""

from __future__ import annotations

from pathlib import Path

from jupyter_syft.domain.datasets.tables import DatasetTables
from jupyter_syft.domain.federated.tables import FederatedTables
from jupyter_syft.domain.he.tables import ModelTables
from jupyter_syft.domain.requests.tables import RequestTables
from jupyter_syft.domain.secagg.tables import SecAggTables
from jupyter_syft.domain.store_core import BudgetExhausted, Paths, StoreError, audit_key

__all__ = ["BudgetExhausted", "Paths", "Store", "StoreError", "audit_key"]


class Store(DatasetTables, RequestTables, FederatedTables, SecAggTables, ModelTables):
    """Typed reads and transactional writes over the domain's SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._recover_releases()
