"""A domain node's lifecycle: store, Flight server, executor, libp2p host, job workers.

The node process never runs submitted code: approved requests go to worker processes via the
executor, so a crash, a timeout or an out-of-memory job fails that request only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from jupyter_syft.crypto.seal import ResultSeal
from jupyter_syft.domain import executor as local_executor
from jupyter_syft.domain import ray_executor  # noqa: F401  (registers --executor ray)
from jupyter_syft.domain.audit import REFUSAL_WINDOW_S, RefusalLog
from jupyter_syft.domain.core import DomainCore, Limits
from jupyter_syft.domain.datasets.partitions import location
from jupyter_syft.domain.environments import PYPI, BuildError, Environments
from jupyter_syft.domain.flight_server import FlightDataServer
from jupyter_syft.domain.jobs import BACKENDS, BackendOptions, ExecutorBackend, InputSpec, JobSpec
from jupyter_syft.domain.requests.resources import granted
from jupyter_syft.domain.router import RATE_BURST, RATE_PER_S, domain_router
from jupyter_syft.domain.secagg.handlers import result_vector
from jupyter_syft.domain.store import Store, StoreError
from jupyter_syft.identity import Identity, load_or_create
from jupyter_syft.network.member import NetworkMembership
from jupyter_syft.p2p import P2PHost
from jupyter_syft.p2p.host import Handler
from jupyter_syft.tls import ensure_tls_cert
from jupyter_syft.wire.messages import DOMAIN_PROTOCOL, JobProgress
from jupyter_syft.wire.node_info import remove_node_info, write_node_info
from jupyter_syft.wire.ratelimit import MAX_TRACKED, RateLimiter
from jupyter_syft.wire.rpc import Refused
from jupyter_syft.wire.tickets import TicketIssuer


@dataclass
class DomainConfig:
    name: str
    data_dir: Path
    listen: str = "/ip4/127.0.0.1/tcp/0"
    workers: int = 2
    limits: Limits = field(default_factory=Limits)
    network: str | None = None  # a network node's multiaddr: join it and stay findable
    heartbeat_s: float = 10.0
    sandbox: str = "on"  # "off": jobs run unconfined (see jupyter_syft.domain.sandbox)
    package_index: str = PYPI  # where declared requirements come from: a URL or a wheel folder
    # Which ExecutorBackend runs approved jobs (jupyter_syft.domain.jobs.BACKENDS).
    executor: str = local_executor.BACKEND
    # The engine's cluster for a backend that has one (--ray-address; "local": start one).
    executor_address: str = ""
    # Per-peer rate limit on calls (token bucket), and how many peers it remembers at most.
    rate_per_s: float = RATE_PER_S
    rate_burst: float = RATE_BURST
    rate_peers: int = MAX_TRACKED
    refusal_window_s: float = REFUSAL_WINDOW_S  # refused calls: one audit summary per window
    # Where new table datasets are stored as partitioned Parquet (a folder or URI the cluster
    # shares: jupyter_syft.domain.datasets.partitions); "" = the data dir, as Arrow files.
    storage: str = ""


async def run_domain(config: DomainConfig, admin: Identity, ready: Callable[[str], None]) -> None:
    """Serve until cancelled. `admin` becomes the admin when this call creates the data dir."""
    if config.storage:  # a bad location stops the start before anything is created
        try:
            location(config.storage, config.data_dir)
        except Refused as exc:
            raise StoreError(f"--storage: {exc}") from None
    store = Store(config.data_dir)
    store.storage = config.storage
    flight: FlightDataServer | None = None
    executor: ExecutorBackend | None = None
    refusals: RefusalLog | None = None
    try:
        store.initialise(config.name, admin.peer_id)
        node_identity = load_or_create(store.paths.node_key)
        tls = ensure_tls_cert(config.data_dir)
        issuer = TicketIssuer()
        flight = FlightDataServer(config.data_dir, tls, issuer)
        flight.start()
        options = BackendOptions(config.sandbox, str(config.data_dir), config.executor_address)
        executor = BACKENDS[config.executor](options)
        if executor.sandbox.mode == "off":
            _warn_sandbox_off(config.name)
            store.audit("node", "sandbox_off", config.name, "started with --sandbox off")
        else:
            print(f"domain {config.name}: sandbox {executor.sandbox.summary}", file=sys.stderr)
        jobs_in, jobs_out = trio.open_memory_channel[str](math.inf)
        core = DomainCore(
            name=config.name,
            peer_id=node_identity.peer_id,
            store=store,
            issuer=issuer,
            flight_location=flight.location,
            tls_cert_pem=tls.cert_pem,
            tls_fingerprint=tls.fingerprint,
            limits=config.limits,
            on_approved=jobs_in.send,
            sandbox=executor.sandbox.summary,
            capacity=executor.capacity,
            identity=node_identity,
            environments=Environments(store.paths.environments, config.package_index),
        )
        limiter = RateLimiter(config.rate_per_s, config.rate_burst, config.rate_peers)
        refusals = RefusalLog(store, config.refusal_window_s)
        router = domain_router(core, None, limiter, refusals)  # StartupError: a call unhandled
        membership = None
        handle: Handler = router.handle
        if config.network:
            membership = NetworkMembership(
                config.network, node_identity, config.name, store.datasets, config.heartbeat_s
            )
            handle = membership.watch(router.handle)  # re-announce when datasets change
        async with P2PHost(node_identity, config.listen) as host:
            host.set_handler(DOMAIN_PROTOCOL, handle, router.bad_frame_reply)
            async with trio.open_nursery() as nursery:
                # Workers preload torch and Opacus (~4 s): warm up while the node already
                # answers; a job that comes first waits for the same forkserver.
                nursery.start_soon(_warm, executor, core)
                nursery.start_soon(refusals.run)
                for _ in range(config.workers):
                    nursery.start_soon(_job_worker, jobs_out.clone(), core, executor)
                for request_id in store.requeue_interrupted():
                    await jobs_in.send(request_id)
                address = host.multiaddrs[0]
                write_node_info(config.data_dir, config.name, address)
                ready(address)
                if membership is not None:
                    nursery.start_soon(membership.run, host)
                await trio.sleep_forever()
    finally:
        if refusals is not None:
            refusals.flush()  # the last window's refused calls
        remove_node_info(config.data_dir)
        if executor is not None:
            executor.close()
        if flight is not None:
            flight.stop()
        store.close()


async def _warm(executor: ExecutorBackend, core: DomainCore) -> None:
    # Abandoned on a stop: a node stopped while its workers still import stops at once.
    await trio.to_thread.run_sync(executor.warm, abandon_on_cancel=True)  # type: ignore[call-arg]
    core.warming_up = False
    for status in ("approved", "running"):
        for info in core.store.requests(None, status):
            core.notify(info.request_id)  # long-polls see the note go


async def _job_worker(
    jobs: trio.MemoryReceiveChannel[str], core: DomainCore, executor: ExecutorBackend
) -> None:
    async for request_id in jobs:
        await _run_job(request_id, core, executor)


async def _run_job(request_id: str, core: DomainCore, executor: ExecutorBackend) -> None:
    store = core.store
    info = store.request(request_id)
    if info is None or info.status != "approved" or info.policy == "federated":
        return  # a federated plan runs no job itself: its rounds do
    environment, building = "", False
    if info.requirements:
        assert core.environments is not None  # requirements are refused without it
        cached = core.environments.cached(info.requirements)  # a hit costs nothing more
        if cached is not None:
            environment = os.path.realpath(cached.site_packages)  # the path the job sees
        else:
            building = True
            built = await _build_environment(request_id, info.requirements, core)
            if built is None:
                return  # the request failed, saying why, or another worker took it
            environment = built
    core.set_progress(request_id, None)  # the build's stage
    try:
        store.start_run(request_id, built=building)
    except StoreError:
        return
    core.notify(request_id)
    output_dir = store.paths.result_dir(request_id)
    shutil.rmtree(output_dir, ignore_errors=True)
    inputs = {}
    for argument, dataset in info.inputs.items():
        dataset_info = store.dataset(dataset)
        kind = dataset_info.kind if dataset_info else "table"
        if argument in info.distributed:  # a ray.data Dataset over the partition folder
            kind = "distributed"
        inputs[argument] = InputSpec(path=store.private_path(dataset), kind=kind)
    limits = core.limits
    # An aggregate-only result is sealed to this node: only secure aggregation here reads it.
    aggregate = info.policy == "aggregate"
    # Under release="after_review" the result is sealed to this node too, until its owner
    # looks at it and releases it (re-sealed to the requester) or withholds it. Federated
    # rounds are exempt: their plan was the review.
    held = (
        store.disclosure(info.inputs.values())[1] == "after_review"
        and not aggregate
        and info.plan_round is None
    )
    # As asked (the node's defaults where not), capped by today's policies and machines.
    policies = [store.policy(dataset) for dataset in set(info.inputs.values())]
    capacity = await trio.to_thread.run_sync(executor.capacity)
    resources = granted(info.resources, limits.job_resources(), policies, capacity)
    job = JobSpec(
        request_id=request_id,
        code=info.code,
        function_name=info.function_name,
        inputs=inputs,
        output_dir=str(output_dir),
        domain_peer_id=core.peer_id,
        requester=info.requester,
        seal_to=core.peer_id if aggregate or held else info.requester,
        timeout_s=limits.job_timeout_s,
        memory_bytes=resources.memory_mb * 2**20,
        max_result_bytes=limits.max_result_bytes,
        privacy=info.privacy,
        environment=environment,
        resources=resources,
    )
    if info.plan_round is not None:
        found = store.federated_plan(info.plan_round[0])
        assert found is not None  # a round is recorded only with its plan
        job.federated = found[1]
        job.weights_path = str(store.paths.round_weights(request_id))
    # A plan's rounds reuse one warm, confined worker (ExecutorBackend.run's keep_for).
    keep_for = info.plan_round[0] if info.plan_round is not None else ""

    def on_progress(progress: JobProgress) -> None:  # in the executor's thread
        with contextlib.suppress(trio.RunFinishedError, trio.Cancelled):
            trio.from_thread.run_sync(core.set_progress, request_id, progress)

    run = functools.partial(executor.run, job, keep_for, on_progress)
    # mypy 2.4 misreads trio's `*args: Unpack[Ts]` signature as taking no keywords.
    outcome = await trio.to_thread.run_sync(run, abandon_on_cancel=True)  # type: ignore[call-arg]
    if outcome.ok and aggregate:
        contexts = ResultSeal(request_id, core.peer_id, info.requester)
        try:  # check now, so a wrong result fails the request instead of the aggregation
            await trio.to_thread.run_sync(
                result_vector, output_dir, outcome.part_count, core.identity, contexts
            )
        except Exception as exc:  # whatever the code returned, it is not a vector
            outcome.ok = False
            outcome.error = f"the aggregate-only result is unusable: {exc}"
            outcome.error_full = ""
    # The log and the full error go to the store, which seals them; never to this node's log.
    if outcome.ok:
        parts, size = outcome.part_count, outcome.result_bytes
        store.finish_run(request_id, parts, size, outcome.log, held, outcome.placement)
    else:
        shutil.rmtree(output_dir, ignore_errors=True)
        # Errors the executor writes itself (timeouts, crashes) hold no data: both texts alike.
        error_full = outcome.error_full or outcome.error
        store.fail_run(request_id, outcome.error, error_full, outcome.log, outcome.placement)
    core.set_progress(request_id, None)  # and wake the long-polls: the job ended


async def _build_environment(
    request_id: str, requirements: list[str], core: DomainCore
) -> str | None:
    """The site-packages folder of the request's declared environment, from the cache or built
    now (status "building" meanwhile); None if the build failed (the request says why) or the
    request is not approved any more."""
    store = core.store
    assert core.environments is not None  # requirements are refused without it
    try:
        store.start_build(request_id)
    except StoreError:
        return None
    core.notify(request_id)

    def on_stage(stage: str) -> None:
        core.set_progress(request_id, JobProgress(stage=f"building environment: {stage}"))

    try:
        environment = await core.environments.prepare(requirements, on_stage)
    except BuildError as exc:
        store.fail_build(request_id, str(exc))
        core.set_progress(request_id, None)
        return None
    if environment.built:
        detail = {
            "requirements": requirements,
            "packages": environment.packages,
            "seconds": round(environment.seconds, 3),
        }
        store.audit("node", "environment_built", environment.lock_hash, json.dumps(detail))
    return os.path.realpath(environment.site_packages)  # the path the job's view shows


def _warn_sandbox_off(name: str) -> None:
    """One block on stderr that an owner cannot miss: everything the sandbox stops is open."""
    print(
        f"""
!!! WARNING: domain {name} runs jobs WITHOUT the sandbox (--sandbox off) !!!
Approved code runs as this node's user, with its files, keys, network and environment: a job
can read node.key, the store and every dataset, reach the network and outlive itself.
Scientists see "sandbox OFF" for this domain. Use it to debug, never with real data.
""",
        file=sys.stderr,
        flush=True,
    )
