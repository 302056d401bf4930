"""What a job asks for (`Resources`) and where it ran (`Placement`): the one check of a
resources value and the one way every surface words them (the client's errors, the node's
refusals, the approval widget, the sidebar, the admin client, the audit log).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from jupyter_syft.wire.messages import Placement, RequestInfo, Resources

FIELDS = ("cpus", "gpus", "memory_mb")
# Far above any machine: a value beyond these is a typo or an attack, not a job.
MOST = {"cpus": 100_000.0, "gpus": 10_000, "memory_mb": 2**31}  # 2**31 MiB = 2 PiB


class ResourceError(ValueError):
    """A resources value that cannot be asked for; the message says which field and why."""


def check_resources(resources: Resources, what: str = "resources") -> Resources:
    """`resources` if every field is a finite number >= 0 (0: the node's default, or no cap),
    gpus and memory_mb whole, none above `MOST`; else ResourceError naming the field."""
    for name in FIELDS:
        value = getattr(resources, name)
        whole = name != "cpus"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            kind = "a whole number" if whole else "a number"
            raise ResourceError(f"{what}: {name} must be {kind}, not {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ResourceError(f"{what}: {name} must be a finite number >= 0, not {value!r}")
        if value > MOST[name]:
            raise ResourceError(f"{what}: {name}={value!r} is more than any machine has")
    return resources


def resources_from(value: Resources | Mapping[str, object] | None) -> Resources | None:
    """A request's `resources=` argument as a checked `Resources`: a Resources, or a dict
    with some of cpus, gpus and memory_mb (absent or 0: the node's default); None: all defaults."""
    if value is None:
        return None
    if isinstance(value, Resources):
        return check_resources(value)
    if not isinstance(value, Mapping):
        raise ResourceError(
            f'resources must be a dict such as {{"cpus": 2, "memory_mb": 4096}}, not {value!r}'
        )
    unknown = [str(key) for key in value if key not in FIELDS]
    if unknown:
        raise ResourceError(
            f"unknown resource {', '.join(map(repr, unknown))}: expected {', '.join(FIELDS)}"
        )
    fields = {name: _plain(number) for name, number in value.items()}
    if isinstance(fields.get("cpus"), int):
        fields["cpus"] = float(fields["cpus"])  # type: ignore[arg-type]
    return check_resources(Resources(**fields))  # type: ignore[arg-type]


def _plain(value: object) -> object:
    """numpy's numbers as Python's (np.int64(2) -> 2); anything else as it is, to be refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def describe_memory(memory_mb: int) -> str:
    """4096 -> "4 GiB", 23800 -> "23.2 GiB", 512 -> "512 MiB"."""
    if memory_mb < 1024:
        return f"{memory_mb} MiB"
    return f"{round(memory_mb / 1024, 1):g} GiB"


def amount(name: str, value: float) -> str:
    """One field in words: amount("cpus", 4) -> "4 cpus", ("gpus", 1) -> "1 gpu",
    ("memory_mb", 4096) -> "4 GiB"."""
    if name == "memory_mb":
        return describe_memory(int(value))
    return f"{value:g} {name[:-1] if value == 1 else name}"


def describe_resources(resources: Resources) -> str:
    """ "2 cpus, 1 gpu, 4 GiB"; a field at 0 in a request (the node's default) is "default"."""
    words = [
        amount(name, getattr(resources, name))
        if getattr(resources, name) or name == "gpus"
        else f"default {'memory' if name == 'memory_mb' else name}"
        for name in FIELDS
    ]
    return ", ".join(words)


def describe_placement(placement: Placement) -> str:
    """ "local on host-1 with 2 cpus, 0 gpus, 4 GiB for 1.23 s" (", 2 attempts" if retried)."""
    tried = f", {placement.attempts} attempts" if placement.attempts > 1 else ""
    return (
        f"{placement.executor} on {placement.node} with "
        f"{describe_resources(placement.resources)} for {placement.seconds:.2f} s{tried}"
    )


def asks(resources: Resources | None) -> str:
    """ "asks for 2 cpus, 1 gpu, 4 GiB", or "asks for the domain's defaults"."""
    if resources is None or resources == Resources():
        return "asks for the domain's defaults"
    return f"asks for {describe_resources(resources)}"


def resources_line(info: RequestInfo) -> str:
    """What a request asks for and, once its job ran, where and with what: the line the
    review surfaces show (the admin client, the approval widget, `%syft requests`)."""
    if info.placement is None:
        return asks(info.resources)
    return f"{asks(info.resources)}; ran {describe_placement(info.placement)}"
