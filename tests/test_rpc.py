"""The RPC layer's own rules, as pure logic: table checks, role checks, incidents, replies."""

from __future__ import annotations

import logging

import msgspec
import pytest
import trio

from jupyter_syft.domain import executor
from jupyter_syft.domain.core import ADMIN, ANYONE, DomainCore, Limits
from jupyter_syft.domain.jobs import BACKENDS, register_backend
from jupyter_syft.domain.router import domain_router
from jupyter_syft.domain.store import Store
from jupyter_syft.errors import NodeError, NotFoundError
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.rpc import (
    Call,
    Caller,
    Done,
    Error,
    Protocol,
    Router,
    StartupError,
    Struct,
    handles,
)
from jupyter_syft.wire.tickets import TicketIssuer

pytestmark = pytest.mark.unit


class Ping(Call["Pong"], tag="ping"):
    pass


class Boom(Call["Done"], tag="boom"):
    pass


class Pong(Struct, tag="pong"):
    n: int


PROTOCOL = Protocol("/test/1", b"test\n", Ping | Boom, Pong | Done)


class Feature:
    @handles(Ping, allow={"member"})
    async def ping(self, caller: Caller, call: Ping) -> Pong:
        return Pong(1)

    @handles(Boom, allow={"", "member"})
    async def boom(self, caller: Caller, call: Boom) -> Done:
        raise KeyError("a bug")


def test_every_call_needs_a_handler_and_every_handler_a_call() -> None:
    class Half:
        @handles(Ping, allow={"member"})
        async def ping(self, caller: Caller, call: Ping) -> Pong:
            return Pong(1)

    with pytest.raises(StartupError, match=r"calls without a handler: \['Boom'\]"):
        Router(PROTOCOL, [Half()], "node", lambda peer: "")

    class Stray(Struct, tag="stray"):
        pass

    class Extra(Feature):
        @handles(Stray, allow={"member"})  # type: ignore[arg-type]
        async def stray(self, caller: Caller, call: Stray) -> Done:
            return Done()

    with pytest.raises(StartupError, match=r"handlers without a call: \['Stray'\]"):
        Router(PROTOCOL, [Extra()], "node", lambda peer: "")
    with pytest.raises(StartupError, match="two handlers for "):
        Router(PROTOCOL, [Feature(), Feature()], "node", lambda peer: "")


def test_a_call_must_declare_its_reply_in_the_protocol() -> None:
    class Orphan(Call["Error"], tag="orphan"):
        pass

    class Bare(Struct, tag="bare"):
        pass

    with pytest.raises(StartupError, match="does not declare its reply type"):
        Protocol("/t/1", b"t\n", Ping | Bare, Pong | Done)
    Protocol("/t/1", b"t\n", Ping | Orphan, Pong)  # Error is every protocol's reply


def _serve(router: Router, identity: Identity, call: Call) -> Struct:
    frame = router.protocol.sign_call(identity, router.node_peer_id, call)
    return router.protocol.decode_reply(trio.run(router.handle, identity.peer_id, frame))


def test_roles_are_checked_before_the_handler_and_refusals_reported() -> None:
    refused: list[tuple[str, str]] = []
    router = Router(
        PROTOCOL,
        [Feature()],
        "node",
        lambda peer: "",
        on_refused=lambda caller, call, exc: refused.append((call, exc.code)),
        deny=lambda caller, route: f"{route.call.__name__}: members only",
    )
    reply = _serve(router, Identity.generate(), Ping())
    assert reply == Error("not_authorised", "Ping: members only")
    assert refused == [("Ping", "not_authorised")]


def test_an_unexpected_exception_becomes_an_internal_error_with_an_incident(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(PROTOCOL, [Feature()], "node", lambda peer: "member")
    with caplog.at_level(logging.ERROR, logger="jupyter_syft.wire.rpc"):
        reply = _serve(router, Identity.generate(), Boom())
    assert isinstance(reply, Error) and reply.code == "internal" and reply.incident
    assert "a bug" not in reply.message  # the traceback stays on the node...
    assert f"incident {reply.incident}" in caplog.text and "KeyError: 'a bug'" in caplog.text


def test_read_reply_checks_the_reply_type_against_the_call() -> None:
    assert PROTOCOL.read_reply(Ping(), msgspec.msgpack.encode(Pong(3))) == Pong(3)
    with pytest.raises(NodeError, match="answered Ping with Done, not Pong"):
        PROTOCOL.read_reply(Ping(), msgspec.msgpack.encode(Done()))
    with pytest.raises(NotFoundError, match="gone"):
        PROTOCOL.read_reply(Ping(), msgspec.msgpack.encode(Error("not_found", "gone")))
    with pytest.raises(NodeError, match=r"failed \(incident abc\)"):
        PROTOCOL.read_reply(Ping(), msgspec.msgpack.encode(Error("internal", "failed", "abc")))


def test_signatures_do_not_cross_protocols() -> None:
    """A call signed for the network protocol is refused by the domain (the context)."""
    alice = Identity.generate()
    frame = nm.NETWORK.sign_call(alice, "node", nm.Hello())
    router = Router(PROTOCOL, [Feature()], "node", lambda peer: "member")
    reply = router.protocol.decode_reply(trio.run(router.handle, alice.peer_id, frame))
    assert isinstance(reply, Error) and reply.code == "bad_message"


def test_the_domain_and_network_tables_are_complete(tmp_path) -> None:
    store = Store(tmp_path)

    async def approved(request_id: str) -> None:
        return None

    core = DomainCore(
        "d", "node", store, TicketIssuer(), "grpc+tls://x", b"", "", Limits(), approved, "on"
    )
    router = domain_router(core)
    assert set(router.routes) == set(m.DOMAIN.calls)
    assert router.routes[m.Hello].allow == ANYONE
    assert router.routes[m.AddUser].allow == ADMIN
    store.close()


def test_backends_register_by_name() -> None:
    assert BACKENDS[executor.BACKEND] is executor.local_pool
    with pytest.raises(ValueError, match="already registered"):
        register_backend("local")(lambda options: None)  # type: ignore[arg-type,return-value]
