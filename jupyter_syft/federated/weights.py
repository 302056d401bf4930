"""How a model travels: source text for its structure, safetensors for its weights, and a flat
float vector for the sums of federated averaging. Nothing here unpickles anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from jupyter_syft.errors import InvalidError

# Layers whose constructor arguments can be read back from the module: a Sequential of these
# travels as generated source.
_LAYER_ARGUMENTS: dict[str, Callable[[Any], str]] = {
    "Linear": lambda layer: (
        f"{layer.in_features}, {layer.out_features}, bias={layer.bias is not None}"
    ),
    "ReLU": lambda layer: "",
    "Tanh": lambda layer: "",
    "Sigmoid": lambda layer: "",
    "GELU": lambda layer: "",
    "ELU": lambda layer: f"alpha={layer.alpha!r}",
    "LeakyReLU": lambda layer: f"negative_slope={layer.negative_slope!r}",
    "Dropout": lambda layer: f"p={layer.p!r}",
    "Flatten": lambda layer: f"{layer.start_dim}, {layer.end_dim}",
    "Identity": lambda layer: "",
}


def model_source(model: Any, function_source: Callable[[Any], str]) -> tuple[str, str]:
    """(code, function name) that rebuild the model's structure on a domain.

    `model` is a zero-argument function returning a torch.nn.Module (its source travels, as
    for any request), or an `nn.Sequential` of common layers (source is generated from it).
    """
    import torch

    if isinstance(model, torch.nn.Sequential):
        layers = []
        for layer in model:
            kind = type(layer).__name__
            if type(layer).__module__.split(".")[:2] != ["torch", "nn"] or (
                kind not in _LAYER_ARGUMENTS
            ):
                raise InvalidError(
                    f"cannot send a Sequential holding {kind}: pass a function that builds "
                    "the model instead"
                )
            layers.append(f"        torch.nn.{kind}({_LAYER_ARGUMENTS[kind](layer)}),")
        code = "def make_model():\n    import torch\n\n    return torch.nn.Sequential(\n"
        return code + "\n".join(layers) + "\n    )\n", "make_model"
    if isinstance(model, torch.nn.Module):
        raise InvalidError(
            f"cannot send a {type(model).__name__} instance: pass a function that returns it "
            "(its source travels), or an nn.Sequential of standard layers"
        )
    return function_source(model), model.__name__


def to_safetensors(state: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    return save({name: t.detach().cpu().contiguous() for name, t in state.items()})


def from_safetensors(data: bytes) -> dict[str, Any]:
    """A state dict from safetensors bytes (a format with no code in it: safe to load)."""
    from safetensors.torch import load

    return load(bytes(data))


def trainable(state: dict[str, Any]) -> list[str]:
    """The entries federated averaging combines: floating-point tensors, in a fixed order."""
    return sorted(name for name, tensor in state.items() if tensor.is_floating_point())


def flatten(state: dict[str, Any]) -> np.ndarray:
    """The trainable entries as one float64 vector (in `trainable` order)."""
    parts = [state[name].detach().cpu().double().reshape(-1).numpy() for name in trainable(state)]
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, template: dict[str, Any]) -> dict[str, Any]:
    """`template` with its trainable entries replaced from `vector` (as `flatten` made it)."""
    import torch

    names = trainable(template)
    size = sum(template[name].numel() for name in names)
    if vector.shape != (size,):
        raise InvalidError(f"expected {size} weights for this model, got shape {vector.shape}")
    state, start = dict(template), 0
    for name in names:
        tensor = template[name]
        piece = vector[start : start + tensor.numel()].reshape(tuple(tensor.shape))
        state[name] = torch.from_numpy(np.ascontiguousarray(piece)).to(tensor.dtype)
        start += tensor.numel()
    return state
