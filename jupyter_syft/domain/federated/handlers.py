"""Federated learning: a plan reviewed once, then rounds that need no review (and a
DP charge each, when the plan has a budget).
"""

from __future__ import annotations

import uuid

import trio

from jupyter_syft.domain.core import (
    MAX_CODE_BYTES,
    MEMBERS,
    DomainCore,
)
from jupyter_syft.domain.jobs import CodeError, check_code
from jupyter_syft.federated.plan import MAX_WEIGHTS_BYTES, PlanError, check_plan, round_spec
from jupyter_syft.federated.weights import from_safetensors
from jupyter_syft.privacy.training import TrainingError, noise_multiplier
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import Caller, Refused, handles


class Federated:
    def __init__(self, core: DomainCore) -> None:
        self.core = core
        self.store = core.store

    @handles(m.SubmitFederatedPlan, allow=MEMBERS)
    async def submit_federated_plan(
        self, caller: Caller, call: m.SubmitFederatedPlan
    ) -> m.RequestInfo:
        """A plan waits for the owner's review, once; with DP all its rounds must fit now."""
        info = self.core.table(call.dataset)
        requirements = self.core.requirements(call.requirements, [call.dataset])
        plan = call.plan
        if len(plan.code.encode()) > MAX_CODE_BYTES:
            raise Refused("invalid", f"code is larger than {MAX_CODE_BYTES} bytes")
        try:
            check_code(plan.code, plan.function_name)
            dp = check_plan(plan, info.schema, info.rows)
            if dp is not None:
                await trio.to_thread.run_sync(noise_multiplier, dp, info.rows)
        except (CodeError, PlanError, TrainingError) as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.add_federated_plan(caller.peer_id, call.dataset, plan, dp, requirements)

    @handles(m.FederatedRound, allow=MEMBERS)
    async def federated_round(self, caller: Caller, call: m.FederatedRound) -> m.RequestInfo:
        """Start one round of an approved plan: no review (the plan had it), a DP charge."""
        plan_info = self.core.request_for(caller, call.plan_id)
        found = self.store.federated_plan(call.plan_id)
        if found is None:
            raise Refused("invalid", f"request {call.plan_id} is not a federated plan")
        if plan_info.requester != caller.peer_id:
            raise Refused("not_authorised", "only the plan's requester may run its rounds")
        if len(call.weights) > MAX_WEIGHTS_BYTES:
            raise Refused("invalid", f"the weights are larger than {MAX_WEIGHTS_BYTES} bytes")
        try:
            from_safetensors(call.weights)
        except Exception as exc:  # safetensors raises its own error types
            raise Refused("invalid", f"the weights are not a safetensors file: {exc}") from exc
        plan = found[1]
        dp = round_spec(plan) if plan.epsilon or plan.delta else None
        request_id = uuid.uuid4().hex
        path = self.store.paths.round_weights(request_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(call.weights)
        tmp.replace(path)
        try:
            info = self.store.start_federated_round(
                request_id, caller.peer_id, call.plan_id, call.round, dp
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.core.notify(call.plan_id)
        await self.core.on_approved(request_id)
        return info
