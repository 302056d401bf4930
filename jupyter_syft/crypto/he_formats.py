"""The wire formats of homomorphic inference, read by both sides: an owner's weights as
safetensors (never a pickle) and a public CKKS context as an Arrow table of byte chunks."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from jupyter_syft.crypto.he import EncryptedModel, HEError

CONTEXT_CHUNK_BYTES = 4 * 2**20  # one row of the uploaded table; Flight sends ~4 MiB batches
WEIGHT = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


def encode_weights(model: Any) -> tuple[bytes, EncryptedModel]:
    """Safetensors bytes of an nn.Linear, an nn.Sequential(Linear, square, Linear) or their
    state dict, checked first by EncryptedModel (which refuses what it cannot evaluate)."""
    state = model.state_dict() if hasattr(model, "state_dict") else model
    checked = EncryptedModel.from_state_dict(state)
    tensors = {}
    for i, (weight, bias) in enumerate(checked.layers):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(weight)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(bias)
    return save_safetensors(tensors), checked


def decode_weights(data: bytes) -> EncryptedModel:
    """The model in `encode_weights`' layout; HEError for anything else."""
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise HEError(f"weights are not a safetensors file: {exc}") from exc
    layers = len(tensors) // 2
    expected = {f"layers.{i}.{part}" for i in range(layers) for part in ("weight", "bias")}
    if set(tensors) != expected or not all(WEIGHT.match(name) for name in tensors):
        raise HEError(f"expected layers.I.weight and layers.I.bias entries, got {sorted(tensors)}")
    return EncryptedModel(
        [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(layers)]
    )


def context_table(public_context: bytes) -> pa.Table:
    """A public context as the one-column table of byte chunks the node expects."""
    chunks = [
        public_context[i : i + CONTEXT_CHUNK_BYTES]
        for i in range(0, len(public_context), CONTEXT_CHUNK_BYTES)
    ]
    return pa.table({"chunk": pa.array(chunks, pa.binary())})
