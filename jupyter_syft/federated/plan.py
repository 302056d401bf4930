"""A federated plan's checks, run in the domain node before anything is recorded: no data read.

Privacy accounting: a plan with `epsilon` > 0 trains every round with DP-SGD (Opacus) to
(epsilon / rounds, delta / rounds) for one changed row, and charges each round that share when
it starts. By basic composition the whole plan then costs at most (epsilon, delta); a round
refused for lack of budget costs nothing and stops that domain's training.
"""

from __future__ import annotations

import math

from jupyter_syft.wire.messages import DPTraining, FederatedPlan

MAX_ROUNDS = 1000
MAX_LOCAL_EPOCHS = 1000
MAX_WEIGHTS_BYTES = 8 * 2**20  # the global weights ride one control-plane frame


class PlanError(ValueError):
    """A federated plan the node refuses, with what is wrong in it."""


def check_plan(plan: FederatedPlan, schema: dict[str, str], rows: int) -> DPTraining | None:
    """Refuse (PlanError) a plan that cannot run as asked; return one round's DP-SGD spec, or
    None when the plan asks for no DP."""
    # Here, not at the top: owners' clients import this module for `describe_plan` only.
    from jupyter_syft.privacy.training import TrainingError, check_columns, check_training

    if not 1 <= plan.rounds <= MAX_ROUNDS:
        raise PlanError(f"rounds must be 1 to {MAX_ROUNDS}, not {plan.rounds}")
    if not 1 <= plan.local_epochs <= MAX_LOCAL_EPOCHS:
        raise PlanError(f"local_epochs must be 1 to {MAX_LOCAL_EPOCHS}, not {plan.local_epochs}")
    if rows < 1:
        raise PlanError("the dataset has no rows")
    if not 1 <= plan.batch_size <= rows:
        raise PlanError(f"batch_size must be 1 to the row count ({rows})")
    if not (math.isfinite(plan.learning_rate) and plan.learning_rate > 0):
        raise PlanError(f"learning_rate must be a finite number above 0, not {plan.learning_rate}")
    try:
        check_columns(plan, schema)
    except TrainingError as exc:
        raise PlanError(str(exc)) from exc
    if plan.epsilon == 0 and plan.delta == 0:
        return None
    spec = round_spec(plan)
    try:
        check_training(spec, schema, rows)
    except TrainingError as exc:
        raise PlanError(f"each of the {plan.rounds} rounds: {exc}") from exc
    return spec


def describe_plan(plan: FederatedPlan) -> str:
    """One line for the owner's review: what training the approval allows."""
    privacy = (
        f"DP-SGD epsilon {plan.epsilon:g}, delta {plan.delta:g} in all "
        f"({plan.epsilon / plan.rounds:g} per round)"
        if plan.epsilon
        else "no DP"
    )
    aggregation = (
        "secure aggregation" if plan.secure_aggregation else "updates sent to the scientist"
    )
    return (
        f"federated plan: {plan.rounds} rounds x {plan.local_epochs} local epochs, "
        f"{', '.join(plan.features)} -> {plan.label} ({plan.loss}), {plan.optimizer} "
        f"lr {plan.learning_rate:g}, batch {plan.batch_size}; {aggregation}; {privacy}"
    )


def round_spec(plan: FederatedPlan) -> DPTraining:
    """The DP-SGD spec of one round: an equal share of the plan's (epsilon, delta)."""
    return DPTraining(
        code=plan.code,
        function_name=plan.function_name,
        features=plan.features,
        label=plan.label,
        epsilon=plan.epsilon / plan.rounds,
        delta=plan.delta / plan.rounds,
        feature_bounds=plan.feature_bounds,
        loss=plan.loss,
        epochs=plan.local_epochs,
        batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
        max_grad_norm=plan.max_grad_norm,
    )
