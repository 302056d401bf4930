"""`syft.aggregate`: the sum (or mean) of one function's result across domains, by secure
aggregation, so that no party, the scientist included, sees a single domain's vector.

Each domain runs `fn` on its own `dataset` as an aggregate-only request (policy "aggregate"):
its owner reviews it as usual, but the result never leaves the domain in the clear. The
scientist's kernel is the aggregator (`SecAggServer`); each domain's node is a client
(`SecAggClient`), reached over the `SecAggStep` call, one call per domain per round, sent
to all domains at once.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from jupyter_syft.client.domain import (
    Dataset,
    DomainClient,
    RemoteRequest,
    as_function,
    function_source,
)
from jupyter_syft.crypto.secagg import ROUNDS, SecAggError, SecAggServer
from jupyter_syft.errors import InvalidError
from jupyter_syft.wire import messages as m

STEP_TIMEOUT_S = 30.0  # a domain that does not answer a round within this counts as dropped


@dataclass
class AggregateResult:
    """The aggregate, which domains it holds, and which were left out and why."""

    # the sum, or the sum / len(contributors) for op="mean": a float64 vector, or a Python
    # float (int for a sum of ints) when `fn` returned a number
    value: np.ndarray | float | int
    op: str
    contributors: list[str]  # domain names whose results the value holds
    # domain name -> what went wrong with it; one that dropped out after its masked input
    # arrived still counts in the sum (see `contributors`)
    dropped: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)  # domain name -> request id

    def __repr__(self) -> str:
        left_out = f", dropped {self.dropped}" if self.dropped else ""
        return f"<Aggregate {self.op} over {self.contributors}{left_out}: {self.value!r}>"


def aggregate(
    domains: Sequence[DomainClient],
    fn: Callable[..., Any] | str,
    dataset: str | Dataset,
    op: Literal["sum", "mean"] = "sum",
    timeout: float = 600.0,
    *,
    length: int | None = None,
    threshold: int | None = None,
    step_timeout: float = STEP_TIMEOUT_S,
    on_round: Callable[[int], None] | None = None,
) -> AggregateResult:
    """Run `fn(dataset)` on every domain and return only the sum (or mean) of the results.

    `fn` (a plain `def`, or its source text: see `DomainClient.request`) must return a number
    or a 1-D int or float vector (numpy array, tensor or list) of the same length on every
    domain, with |x| <= 2^20; floats are summed in fixed point, to within n * 2^-25 of the
    exact sum. A number is summed as a vector of one and comes back as a number (an int if it
    was one on the mock). `op="mean"` divides the sum by the number of contributing domains
    (an unweighted mean of per-domain values; weighting by row counts is not done).

    `fn` is run on the first domain's mock to find the result's shape; `length` instead
    gives the vector length without that run. Domains whose owner denies the request, whose
    job fails, or that do not finish within `timeout` are dropped before the protocol; one
    that errors or stays silent in a round is dropped by it, which the protocol tolerates
    down to `threshold` domains (default floor(2n/3) + 1; at least 3 domains must take part).
    `on_round(r)` is called before round r's frames are sent (a hook for tests and progress
    displays).
    """
    if op not in ("sum", "mean"):
        raise InvalidError(f"op must be 'sum' or 'mean', not {op!r}")
    if not domains:
        raise InvalidError("aggregate needs at least 3 domains, got none")
    names = [d.name for d in domains]
    if len(set(names)) != len(names) or len({d.peer_id for d in domains}) != len(domains):
        raise InvalidError(f"each domain may appear once: {names}")
    identities = {d._connection.identity.peer_id for d in domains}
    if len(identities) != 1:
        raise InvalidError("all domains must be reached as the same user (one identity)")
    dataset_name = dataset.name if isinstance(dataset, Dataset) else str(dataset)
    fn = as_function(fn)
    argument = _first_argument(fn)
    number: type[float | int] | None = None  # the kind of number fn returns, if one
    if length is None:
        length, number = _shape_on_mock(domains[0], fn, dataset_name)

    code = function_source(fn)
    deadline = time.monotonic() + timeout
    requests: dict[str, RemoteRequest] = {}
    dropped: dict[str, str] = {}
    for domain in domains:
        call = m.SubmitRequest(code, fn.__name__, {argument: dataset_name}, policy="aggregate")
        info = domain._connection.call(call)
        requests[domain.name] = domain.request_type(domain._connection, info)
    ready: list[DomainClient] = []
    for domain in domains:
        request = requests[domain.name]
        try:
            info = request.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            dropped[domain.name] = f"request {request.id} still {request.info.status}: timed out"
            continue
        if info.status == "denied":
            dropped[domain.name] = f"denied by its owner: {info.reason or 'no reason given'}"
        elif info.status == "failed":
            last = info.error.strip().splitlines()[-1] if info.error.strip() else "no detail"
            dropped[domain.name] = f"its job failed: {last}"
        else:
            ready.append(domain)
    request_ids = {name: r.id for name, r in requests.items()}
    if len(ready) < 3:
        raise SecAggError(
            f"only {len(ready)} domain(s) can take part ({[d.name for d in ready]}); secure "
            f"aggregation needs at least 3. Left out: {dropped}"
        )

    parties = {d.peer_id: (d, request_ids[d.name]) for d in ready}
    total, contributors = secure_sum(
        parties, length, threshold, step_timeout=step_timeout, on_round=on_round, dropped=dropped
    )
    for name in [d.name for d in ready]:
        if name not in contributors and name not in dropped:
            dropped[name] = "left out of the sum by the protocol"
    value = total / len(contributors) if op == "mean" else total
    if number is not None:
        return AggregateResult(
            _as_number(value[0], number, op), op, contributors, dropped, request_ids
        )
    return AggregateResult(value, op, contributors, dropped, request_ids)


def secure_sum(
    parties: dict[str, tuple[DomainClient, str]],
    length: int,
    threshold: int | None = None,
    *,
    step_timeout: float = STEP_TIMEOUT_S,
    on_round: Callable[[int], None] | None = None,
    dropped: dict[str, str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Run the protocol with this process as the server; the sum and whose vectors it holds.

    `parties` maps each domain's peer ID to (domain, its done aggregate-only request id). A
    domain that errors or stays silent in a round is recorded in `dropped` (name -> why) and
    left out; below the threshold SecAggError is raised and nothing is revealed.
    """
    dropped = {} if dropped is None else dropped
    identities = {domain._connection.identity.peer_id for domain, _ in parties.values()}
    if len(identities) != 1:
        raise InvalidError("all domains must be reached as the same user (one identity)")
    identity = next(iter(parties.values()))[0]._connection.identity
    server = SecAggServer(identity, list(parties), length, threshold)
    frames = server.setup_frames()

    def step(peer: str, frame: bytes) -> bytes:
        domain, request_id = parties[peer]
        reply = domain._connection.call(m.SecAggStep(request_id, frame), timeout=step_timeout)
        if not reply.ticket:
            return reply.frame
        received = bytearray()  # a large masked input, over the bulk data plane
        domain._connection.flight.get_file(reply.ticket, received.extend)
        if len(received) != reply.nbytes:
            raise InvalidError(f"expected a {reply.nbytes}-byte frame, received {len(received)}")
        return bytes(received)

    # Each round's frames go to all domains at once: the domains mask and send in parallel,
    # so a round takes as long as its slowest domain rather than the sum of them all.
    with ThreadPoolExecutor(max_workers=len(parties)) as pool:
        while server.round < ROUNDS:
            if on_round is not None:
                on_round(server.round)
            calls = {
                pool.submit(step, peer, frame): parties[peer][0].name
                for peer, frame in frames.items()
                if parties[peer][0].name not in dropped
            }
            for future in as_completed(calls):  # the server itself takes replies one by one
                try:
                    server.receive(future.result())
                except Exception as exc:  # an error, a timeout, a dead node: it drops out
                    dropped[calls[future]] = f"dropped out in round {server.round}: {exc}"
            frames = server.advance()  # raises SecAggError below the threshold: no sum at all
    return server.result(), [parties[p][0].name for p in server.contributors]


def _first_argument(fn: Callable[..., Any]) -> str:
    try:
        parameters = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError) as exc:
        raise InvalidError(f"cannot read the arguments of {fn!r}") from exc
    if len(parameters) != 1:
        raise InvalidError("the aggregated function must take exactly one argument: the dataset")
    return parameters[0]


def _shape_on_mock(
    domain: DomainClient, fn: Callable[..., Any], dataset: str
) -> tuple[int, type[float | int] | None]:
    """The vector length `fn` returns, and which kind of number if it returns one (summed as
    a vector of one), found by running it on the mock (public) data."""
    value = np.asarray(_as_array(fn(domain.datasets[dataset].mock)))
    if value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        return 1, int
    if value.ndim == 0 and np.issubdtype(value.dtype, np.floating):
        return 1, float
    if value.ndim != 1 or value.size == 0:
        raise InvalidError(
            f"{fn.__name__} must return a number or a non-empty 1-D vector; on the mock it "
            f"returned {_described(value)}"
        )
    return int(value.size), None


def _described(value: np.ndarray) -> str:
    return f"a {value.dtype} value" if value.ndim == 0 else f"shape {value.shape}"


def _as_number(value: float, number: type[float | int], op: str) -> float | int:
    """A sum of ints is exact in the fixed-point encoding: an int again; a mean is a float."""
    return round(float(value)) if number is int and op == "sum" else float(value)


def _as_array(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value
