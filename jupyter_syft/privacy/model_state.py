"""Only trained parameters leave: what a scientist's model may hold, and what of it comes back.

DP training (`privacy.training`) and federated rounds (`federated.local`) run the scientist's
model code on private rows and return its weights. Any state of the model other than its
trainable parameters is a channel that training does not account for: a registered buffer
that records `forward()` inputs comes back verbatim inside "DP" weights; BatchNorm's running
mean and variance are such buffers, statistics of the private rows with no noise; a parameter
with requires_grad=False is neither trained nor noised; `get_extra_state` and state-dict
hooks add whatever they like. So `check_model` refuses such a model before training, naming
what to change, and `TrainedParameters` hands back only the parameters it recorded then,
after checking at every step that nothing but the optimizer changed them.

Threat model: against model code that keeps or adds state in its module, or writes into its
parameters during forward or backward (in place, `.data` included), what leaves is exactly
the parameters recorded before training as the optimizer left them: under DP, moved only by
clipped and noised gradients; without DP, ordinary trained weights, which can still memorise
rows (that release is what an owner approves with a plan without DP). Not covered: code that
works against this module from inside the same interpreter (patching torch, Opacus or this
code; threads it starts), and a forward that mixes the rows of a batch (Opacus's per-sample
clipping assumes rows are independent). Those are for the owner's review of the model code.
"""

from __future__ import annotations

from typing import Any

from jupyter_syft.errors import DisclosableError

# torch's own bookkeeping on every module; everything else in vars(module) is the model's
_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules"})


class ModelStateError(DisclosableError):
    """A model holding state other than trainable parameters, or changing its parameters
    outside the optimizer."""


def check_model(model: Any) -> None:
    """Refuse (ModelStateError) a model with any state but trainable parameters; reads no data."""
    import torch

    problems: list[str] = []
    named: set[str] = set()
    for path, module in model.named_modules():
        where = path or "the model"
        buffers = [_join(path, name) for name, _ in module.named_buffers(recurse=False)]
        named.update(buffers)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            problems.append(
                f"{where!r} is a {type(module).__name__}: its running statistics are computed "
                "from the private rows and would leave without noise; use LayerNorm or "
                "GroupNorm instead"
            )
        else:
            problems += [
                f"buffer {name!r} (register_buffer): make it an nn.Parameter if it is to be "
                "trained, or compute it in forward()"
                for name in buffers
            ]
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                named.add(_join(path, name))
                problems.append(
                    f"parameter {_join(path, name)!r} has requires_grad=False: it would leave "
                    "untrained (and without DP noise); train it, or build it in forward()"
                )
        for name, value in vars(module).items():
            if name not in _MODULE_INTERNALS and _holds_tensor(value, torch.Tensor):
                problems.append(
                    f"tensor attribute {_join(path, name)!r}: make it an nn.Parameter, or "
                    "build it in forward()"
                )
        if type(module).get_extra_state is not torch.nn.Module.get_extra_state:
            named.add(_join(path, "_extra_state"))
            problems.append(f"{where!r} ({type(module).__name__}) defines get_extra_state()")
    trainable = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    problems += [
        f"state_dict() entry {key!r} is not a trainable parameter: remove what adds it"
        for key in model.state_dict()
        if key not in trainable and key not in named
    ]
    if problems:
        raise ModelStateError(
            "only trained parameters may leave the domain, and this model holds other state: "
            + "; ".join(problems)
        )


class TrainedParameters:
    """The parameters that may leave, recorded before training, and the check that only the
    optimizer changes them: call `mark()` whenever they are legitimately set (after loading
    weights, after each optimizer step) and `verify()` after the model's code ran."""

    def __init__(self, model: Any) -> None:
        """Check `model` and record its parameters; create it once the model is on its
        device (the copies kept for `verify` stay there)."""
        check_model(model)
        self.model = model
        self.parameters = dict(model.named_parameters())
        self._marked = {name: p.detach().clone() for name, p in self.parameters.items()}

    def mark(self) -> None:
        for name, parameter in self.parameters.items():
            self._marked[name].copy_(parameter.detach())

    def verify(self) -> None:
        """Refuse (ModelStateError) a run in which something but the optimizer changed a
        parameter since the last `mark()`."""
        import torch

        for name, parameter in self.parameters.items():
            before, now = self._marked[name], parameter.detach()
            if not torch.equal(before, now) and not _same_or_both_nan(before, now):
                raise ModelStateError(
                    f"the model's code changed parameter {name!r} during training (only the "
                    "optimizer may): the run is stopped and its weights are withheld"
                )

    def released(self) -> dict[str, Any]:
        """The recorded parameters as they leave: detached CPU copies."""
        self.verify()
        now = dict(self.model.named_parameters())
        if now.keys() != self.parameters.keys() or any(
            now[name] is not parameter for name, parameter in self.parameters.items()
        ):
            raise ModelStateError(
                "the model added, removed or replaced parameters during training: its weights "
                "are withheld"
            )
        return {name: p.detach().cpu().contiguous().clone() for name, p in self.parameters.items()}


def _same_or_both_nan(before: Any, now: Any) -> bool:
    """torch.equal with NaN equal to NaN: a run that diverged is not a model at fault."""
    return bool(((before == now) | (before.isnan() & now.isnan())).all())


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _holds_tensor(value: Any, tensor_type: type) -> bool:
    """A tensor, or a list, tuple or dict holding one directly."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return any(isinstance(item, tensor_type) for item in value)
    return isinstance(value, tensor_type)
