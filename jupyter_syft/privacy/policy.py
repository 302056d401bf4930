"""The owner's policy for DP requests on a dataset: what runs without review, and the cap.

- `max_query_epsilon`: no built-in DP query may ask for more; larger ones are refused outright
  (nothing charged). It bounds what one careless or hostile query can take.
- `auto_approve`: built-in DP queries within the cap and the scientist's budget run at once,
  with no human in the loop: their code is ours and their output is DP by construction.
  Without it they wait for review like any request.
DP training runs the scientist's model code, so it always waits for review; the cap does not
apply to it (the reviewer sees its ε).
"""

from __future__ import annotations

import math

from jupyter_syft.privacy.budget import MAX_EPSILON
from jupyter_syft.wire.messages import DPQuery, DPTraining, PolicyInfo

DEFAULT_MAX_QUERY_EPSILON = 1.0


class PolicyError(ValueError):
    """A request or a policy setting the node refuses; the message says why."""


def default_policy(dataset: str) -> PolicyInfo:
    """Until the owner sets one: every DP request waits for review; ε ≤ 1 per query."""
    return PolicyInfo(dataset, auto_approve=False, max_query_epsilon=DEFAULT_MAX_QUERY_EPSILON)


def check_policy(max_query_epsilon: float) -> None:
    if not (math.isfinite(max_query_epsilon) and 0 < max_query_epsilon <= MAX_EPSILON):
        raise PolicyError(
            f"max_query_epsilon must be above 0 and at most {MAX_EPSILON:g}, "
            f"not {max_query_epsilon!r}"
        )


def auto_approves(policy: PolicyInfo, request: DPQuery | DPTraining) -> bool:
    """Whether `request` may run without review (budget permitting); PolicyError if the
    policy refuses it outright."""
    if isinstance(request, DPTraining):
        return False
    if request.epsilon > policy.max_query_epsilon:
        raise PolicyError(
            f"epsilon {request.epsilon:g} is above the per-query cap of "
            f"{policy.max_query_epsilon:g} the owner set on {policy.dataset!r}"
        )
    return policy.auto_approve
