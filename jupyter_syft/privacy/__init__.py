"""Differential privacy on a domain: budgets, built-in DP queries, DP-SGD, the owner's policy.

- `budget`: the privacy unit, the composition rule the ledger follows, exact budget units.
- `queries`: the DP query kinds (a registry) with OpenDP measurements; `check_query` in the
  node, `run_query` in the job worker.
- `training`: DP-SGD with Opacus; `check_training` and `noise_multiplier` in the node, `train`
  in the job worker.
- `policy`: what runs without review and the per-query ε cap.

The ledger itself lives in the domain's store (`domain.store`), so a charge, the request it pays
for and its audit entry are one SQLite transaction. Scientists use it through `Dataset.dp` and
`DomainClient.budget`, owners through `AdminClient.set_budget` and `AdminClient.set_policy`.
Importing this package imports none of its modules (OpenDP and Opacus load only where needed).
"""
