"""Federated learning: one torch model trained across domains, the data staying where it is.

    model, history = syft.federated.train(make_model, domains=[d1, d2, d3],
                                          dataset="diabetes", target="target", rounds=10)

Split by where code runs: `jupyter_syft.client.federated` (the training loop) and `history`
in the scientist's process, `plan` in the domain node, `local` in the domain's job worker,
`weights` on both sides. This package is below the client and the nodes; `train`, `DP` and
`FederatedError` are the client's, found here lazily for `syft.federated.train(...)`, so a
job worker loading `local` does not load the client.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train": "jupyter_syft.client.federated",
    "DP": "jupyter_syft.client.federated",
    "FederatedError": "jupyter_syft.client.federated",
    "History": "jupyter_syft.federated.history",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'jupyter_syft.federated' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["DP", "FederatedError", "History", "train"]
