"""What a request's job runs with: its ask, checked at submission against the owner's caps
(per dataset) and the executor's largest machine, and at run time filled in with the node's
defaults and capped again (a policy or the cluster may have changed since).
"""

from __future__ import annotations

from collections.abc import Iterable

from jupyter_syft.domain.store import Store
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.resources import (
    FIELDS,
    ResourceError,
    amount,
    check_resources,
    describe_resources,
)
from jupyter_syft.wire.rpc import Refused

CAP_FIELDS = {"cpus": "max_cpus", "gpus": "max_gpus", "memory_mb": "max_memory_mb"}


def checked_ask(
    asked: m.Resources, store: Store, datasets: Iterable[str], capacity: m.Resources
) -> m.Resources:
    """`asked` if it is a valid ask within every dataset's cap and the executor's largest
    machine; else Refused("invalid") naming the field and the cap or what is available. Only
    what is asked is checked: a default beyond a cap is capped when the job runs."""
    try:
        check_resources(asked)
    except ResourceError as exc:
        raise Refused("invalid", str(exc)) from exc
    for dataset in sorted(set(datasets)):
        policy = store.policy(dataset)
        for name, cap_name in CAP_FIELDS.items():
            cap, value = getattr(policy, cap_name), getattr(asked, name)
            if cap and value > cap:
                raise Refused(
                    "invalid",
                    f"asks for {amount(name, value)}; the owner's policy on dataset "
                    f"{dataset!r} caps a request at {amount(name, cap)} ({cap_name})",
                )
    for name in FIELDS:
        if getattr(asked, name) > getattr(capacity, name):
            raise Refused(
                "invalid",
                f"asks for {amount(name, getattr(asked, name))}; the largest machine of this "
                f"domain's executor has {describe_resources(capacity)}",
            )
    return asked


def granted(
    asked: m.Resources | None,
    defaults: m.Resources,
    policies: Iterable[m.PolicyInfo],
    capacity: m.Resources,
) -> m.Resources:
    """What the job runs with: each field as asked (the node's default where not), then no
    more than the strictest cap of the datasets it reads and the largest machine."""
    asked = asked or m.Resources()
    caps = list(policies)
    values: dict[str, float] = {}
    for name, cap_name in CAP_FIELDS.items():
        value = getattr(asked, name) or getattr(defaults, name)
        limits = [getattr(p, cap_name) for p in caps] + [getattr(capacity, name)]
        values[name] = min([value, *(limit for limit in limits if limit)])  # 0: no cap
    return m.Resources(float(values["cpus"]), int(values["gpus"]), int(values["memory_mb"]))
