"""The domain protocol's handler table: every feature's handlers over one core.

Where to add a call: its struct in `wire/messages.py` (with its reply, `Call[Reply]`, and in
`Calls`), a `@handles(Call, allow=...)` method on the feature that owns it, and its row in the
authorisation matrix (tests/test_authz_matrix.py). A call without a handler fails start-up.

Around the handlers: a per-peer rate limit before any work (`admit`: a dictionary lookup, no
signature checked), refused calls counted into bounded audit summaries (domain.audit's
RefusalLog), and the node's signed audit receipts on every reply about one request.
"""

from __future__ import annotations

import dataclasses

from jupyter_syft.domain.audit import Receipts, RefusalLog
from jupyter_syft.domain.core import ADMIN, DomainCore, NodeCalls
from jupyter_syft.domain.datasets.handlers import Datasets
from jupyter_syft.domain.federated.handlers import Federated
from jupyter_syft.domain.he.handlers import EncryptedModels
from jupyter_syft.domain.privacy.handlers import Privacy
from jupyter_syft.domain.requests.handlers import Requests
from jupyter_syft.domain.secagg.handlers import SecureAggregation
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.ratelimit import RateLimiter
from jupyter_syft.wire.rpc import Caller, Handler, Refused, ReplayGuard, Route, Router

# Per peer: far above what a scientist's kernel or the load benchmark's clients send (~20/s),
# far below what it takes to flood the node.
RATE_PER_S = 100.0
RATE_BURST = 200.0


def domain_router(
    core: DomainCore,
    guard: ReplayGuard | None = None,
    limiter: RateLimiter | None = None,
    refusals: RefusalLog | None = None,
) -> Router:
    """The domain protocol served by every feature over `core`; raises StartupError if a
    call has no handler or a handler no call."""
    features = [
        NodeCalls(core),
        Datasets(core),
        Requests(core),
        Privacy(core),
        Federated(core),
        SecureAggregation(core),
        EncryptedModels(core),
    ]
    if limiter is None:  # not `or`: an empty limiter has len() 0
        limiter = RateLimiter(RATE_PER_S, RATE_BURST)
    if refusals is None:
        refusals = RefusalLog(core.store)

    def admit(peer: str) -> bool:
        if limiter.allow(peer):
            return True
        refusals.refused(peer, "any call", "rate_limited")
        return False

    def refused(caller: Caller, call: str, exc: Refused) -> None:
        if exc.code == "not_authorised":
            refusals.refused(caller.peer_id, call, exc.code, str(exc))

    def deny(caller: Caller, route: Route) -> str:
        if route.allow == ADMIN:
            return f"{caller.peer_id} is not an admin of this domain"
        return f"{caller.peer_id} is not a user of this domain"

    router = Router(
        m.DOMAIN,
        features,
        core.peer_id,
        core.store.role_of,
        guard,
        admit=admit,
        on_refused=refused,
        deny=deny,
    )
    receipts = Receipts(core.store)
    for call, route in router.routes.items():
        if m.DOMAIN.reply_of[call] is m.RequestInfo:
            handler = _with_receipts(route.handler, receipts)
            router.routes[call] = dataclasses.replace(route, handler=handler)
    return router


def _with_receipts(handler: Handler, receipts: Receipts) -> Handler:
    """`handler`, its RequestInfo reply carrying the receipts for the request's entries."""

    async def handle(caller: Caller, call: object) -> m.Struct:
        reply = await handler(caller, call)
        assert isinstance(reply, m.RequestInfo)
        return receipts.attach(reply)

    return handle
