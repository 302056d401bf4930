"""The domain protocol's handler table: every feature's handlers over one core.

Where to add a call: its struct in `wire/messages.py` (with its reply, `Call[Reply]`, and in
`Calls`), a `@handles(Call, allow=...)` method on the feature that owns it, and its row in the
authorisation matrix (tests/test_authz_matrix.py). A call without a handler fails start-up.
"""

from __future__ import annotations

from jupyter_syft.domain.core import DomainCore, NodeCalls
from jupyter_syft.domain.datasets.handlers import Datasets
from jupyter_syft.domain.federated.handlers import Federated
from jupyter_syft.domain.he.handlers import EncryptedModels
from jupyter_syft.domain.privacy.handlers import Privacy
from jupyter_syft.domain.requests.handlers import Requests
from jupyter_syft.domain.secagg.handlers import SecureAggregation
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import Caller, Refused, ReplayGuard, Router


def domain_router(core: DomainCore, guard: ReplayGuard | None = None) -> Router:
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

    def refused(caller: Caller, call: str, exc: Refused) -> None:
        if exc.code == "not_authorised":
            core.store.audit(caller.peer_id, "refused", call, str(exc))

    def deny(caller: Caller, call: str) -> str:
        if not caller.role:
            return f"{caller.peer_id} is not a user of this domain"
        return f"{caller.peer_id} is not an admin of this domain"

    return Router(
        m.DOMAIN, features, core.peer_id, core.store.role_of, guard, on_refused=refused, deny=deny
    )
