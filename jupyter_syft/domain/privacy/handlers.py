"""Differential privacy: DP queries (OpenDP), DP-SGD training (Opacus), budgets and
per-dataset policies. A refused query is never charged.
"""

from __future__ import annotations

import trio

from jupyter_syft.domain.core import (
    ADMIN,
    MAX_CODE_BYTES,
    MEMBERS,
    DomainCore,
)
from jupyter_syft.domain.environments import (
    RequirementError,
    check_requirements_policy,
)
from jupyter_syft.domain.jobs import CodeError, check_code
from jupyter_syft.privacy.budget import BudgetValueError, delta_units, epsilon_units
from jupyter_syft.privacy.policy import PolicyError, auto_approves, check_policy
from jupyter_syft.privacy.queries import QueryError, check_query, describe_query
from jupyter_syft.privacy.training import TrainingError, check_training, noise_multiplier
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.resources import ResourceError, check_resources
from jupyter_syft.wire.rpc import Caller, Refused, handles


class Privacy:
    def __init__(self, core: DomainCore) -> None:
        self.core = core
        self.store = core.store

    @handles(m.SubmitDPQuery, allow=MEMBERS)
    async def submit_d_p_query(self, caller: Caller, call: m.SubmitDPQuery) -> m.RequestInfo:
        info = self.core.table(call.dataset)
        try:
            check_query(call.query, info.schema, info.rows)
            auto = auto_approves(self.store.policy(call.dataset), call.query)
        except (QueryError, PolicyError) as exc:
            raise Refused("invalid", str(exc)) from exc
        query = call.query
        request = self.store.add_dp_request(
            caller.peer_id, call.dataset, query, describe_query(query), f"dp.{query.kind}", auto
        )
        if auto:
            await self.core.on_approved(request.request_id)
        return request

    @handles(m.SubmitDPTraining, allow=MEMBERS)
    async def submit_d_p_training(self, caller: Caller, call: m.SubmitDPTraining) -> m.RequestInfo:
        info = self.core.table(call.dataset)
        requirements = self.core.requirements(call.requirements, [call.dataset])
        spec = call.training
        if len(spec.code.encode()) > MAX_CODE_BYTES:
            raise Refused("invalid", f"code is larger than {MAX_CODE_BYTES} bytes")
        try:
            check_code(spec.code, spec.function_name)
            check_training(spec, info.schema, info.rows)
            await trio.to_thread.run_sync(noise_multiplier, spec, info.rows)
        except (CodeError, TrainingError) as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.add_dp_request(
            caller.peer_id, call.dataset, spec, spec.code, spec.function_name, False, requirements
        )

    @handles(m.GetBudget, allow=MEMBERS)
    async def get_budget(self, caller: Caller, call: m.GetBudget) -> m.BudgetList:
        peer_id = call.peer_id or caller.peer_id
        if peer_id != caller.peer_id and caller.role != "admin":
            raise Refused("not_authorised", "only an admin may read another user's budget")
        if call.dataset:
            self.core.dataset(call.dataset)
            return m.BudgetList([self.store.budget(peer_id, call.dataset)])
        return m.BudgetList(self.store.budgets(peer_id))

    @handles(m.SetBudget, allow=ADMIN)
    async def set_budget(self, caller: Caller, call: m.SetBudget) -> m.BudgetInfo:
        self.core.dataset(call.dataset)
        if not self.store.role_of(call.peer_id):
            raise Refused("not_found", f"{call.peer_id} is not a user of this domain: add them")
        try:
            epsilon = epsilon_units(call.epsilon, allow_zero=True)
            delta = delta_units(call.delta)
        except BudgetValueError as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.set_budget(caller.peer_id, call.peer_id, call.dataset, epsilon, delta)

    @handles(m.GetPolicy, allow=MEMBERS)
    async def get_policy(self, caller: Caller, call: m.GetPolicy) -> m.PolicyInfo:
        self.core.dataset(call.dataset)
        return self.store.policy(call.dataset)

    @handles(m.SetPolicy, allow=ADMIN)
    async def set_policy(self, caller: Caller, call: m.SetPolicy) -> m.PolicyInfo:
        self.core.dataset(call.dataset)
        requirements = None
        try:
            if call.max_query_epsilon is not None:
                check_policy(call.max_query_epsilon)
            if call.requirements is not None:
                requirements = check_requirements_policy(call.requirements)
            caps = (call.max_cpus, call.max_gpus, call.max_memory_mb)
            check_resources(m.Resources(*(cap or 0 for cap in caps)), "the caps")  # type: ignore[arg-type]
        except (PolicyError, RequirementError, ResourceError) as exc:
            raise Refused("invalid", str(exc)) from exc
        return self.store.set_policy(
            caller.peer_id,
            call.dataset,
            call.auto_approve,
            call.max_query_epsilon,
            call.errors,
            call.release,
            requirements,
            caps,
        )
