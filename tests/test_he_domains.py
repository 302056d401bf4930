"""Homomorphic inference served by a real domain process: owner publishes, scientist predicts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import msgspec
import numpy as np
import pandas as pd
import pytest
import tenseal as ts
import torch
from he_models import Square, square_mlp
from nodes import DomainProcess, person
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.models import he_keys
from jupyter_syft.crypto.he import MAX_CONTEXT_BYTES, EncryptedQuery, HEKeys, ModelSpec
from jupyter_syft.crypto.he_formats import context_table
from jupyter_syft.errors import (
    BudgetExhausted,
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
)
from jupyter_syft.wire import messages as m

LINEAR_TOLERANCE = 1e-3  # targets 25..346 (see tests/test_crypto_he.py)
MLP_TOLERANCE = 1e-4  # standardised outputs


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """The diabetes data, standardised."""
    x, y = load_diabetes(return_X_y=True)
    return (x - x.mean(0)) / x.std(0), y


@pytest.fixture(scope="module")
def linear(data: tuple[np.ndarray, np.ndarray]) -> torch.nn.Linear:
    x, y = data
    fitted = LinearRegression().fit(x, y)
    model = torch.nn.Linear(10, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(fitted.coef_[None, :]))
        model.bias.fill_(fitted.intercept_)
    return model


@pytest.fixture(scope="module")
def mlp(data: tuple[np.ndarray, np.ndarray]) -> torch.nn.Sequential:
    """10 -> 8 -> 1 with square activation, trained on standardised targets."""
    x, y = data
    return square_mlp(x, y)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, linear: torch.nn.Linear, mlp: torch.nn.Sequential
) -> Iterator[dict]:
    """A domain serving both models; its owner, a scientist and a stranger."""
    root = tmp_path_factory.mktemp("he")
    owner_home, owner = person(root, "owner")
    _, alice = person(root, "alice")
    _, stranger = person(root, "stranger")
    node = DomainProcess(root, "hospital", owner_home)
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        admin.create_model("risk", linear, description="linear risk score")
        admin.create_model("mlp", mlp, description="10-8-1, square activation")
        admin.create_model("limited", torch.nn.Linear(10, 1).double(), max_samples=3)
        yield {
            "node": node,
            "admin": admin,
            "alice": DomainClient(NodeConnection(node.address, alice)),
            "stranger": DomainClient(NodeConnection(node.address, stranger)),
            "alice_id": alice.peer_id,
        }
    finally:
        node.kill()


def plain(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_linear_model_one_sample_and_batch(
    world: dict, data: tuple[np.ndarray, np.ndarray], linear: torch.nn.Linear
) -> None:
    x, _ = data
    models = world["alice"].models
    assert set(models) == {"risk", "mlp", "limited"}
    risk = models["risk"]
    assert risk.spec == ModelSpec(features=10, rows=1, outputs=1, depth=1)
    one = risk.predict_encrypted(x[7])
    assert one.shape == (1,)
    assert abs(one[0] - plain(linear, x[7])[0]) < LINEAR_TOLERANCE
    batch = risk.predict_encrypted(pd.DataFrame(x))
    assert batch.shape == (len(x), 1)
    assert np.abs(batch - plain(linear, x)).max() < LINEAR_TOLERANCE


def test_mlp_one_sample_and_batch(
    world: dict, data: tuple[np.ndarray, np.ndarray], mlp: torch.nn.Sequential
) -> None:
    x, _ = data
    model = world["alice"].models["mlp"]
    assert model.spec == ModelSpec(features=10, rows=8, outputs=1, depth=3)
    one = model.predict_encrypted(torch.from_numpy(x[99]))
    assert abs(one[0] - plain(mlp, x[99])[0]) < MLP_TOLERANCE
    batch = model.predict_encrypted(x[:100])
    assert np.abs(batch - plain(mlp, x[:100])).max() < MLP_TOLERANCE


def test_predictions_are_audited_and_counted(world: dict, data: tuple) -> None:
    x, _ = data
    admin, alice_id = world["admin"], world["alice_id"]
    world["alice"].models["risk"].predict_encrypted(x[:5])
    log = admin.audit_log(limit=10_000)
    assert log.chain_ok
    created = {e.subject for e in log.entries if e.action == "create_model"}
    assert created == {"risk", "mlp", "limited"}
    predictions = [e for e in log.entries if e.action == "he_predict" and e.subject == "risk"]
    assert predictions[-1].actor == alice_id
    assert predictions[-1].detail == '{"samples": 5}'
    assert any(e.action == "he_context" and e.actor == alice_id for e in log.entries)
    [usage] = admin.model_usage("risk")
    assert usage.peer_id == alice_id
    samples = sum(json.loads(e.detail)["samples"] for e in predictions)
    assert (usage.calls, usage.samples) == (len(predictions), samples)
    assert world["alice"].models["risk"].info.samples_used == usage.samples


def test_query_limit(world: dict, data: tuple) -> None:
    x, _ = data
    limited = world["alice"].models["limited"]
    limited.predict_encrypted(x[:3])
    with pytest.raises(BudgetExhausted, match="3 samples per scientist, 3 used"):
        limited.predict_encrypted(x[0])
    [usage] = world["admin"].model_usage("limited")
    assert (usage.calls, usage.samples) == (1, 3)


def test_a_stranger_is_refused(world: dict, data: tuple) -> None:
    x, _ = data
    stranger = world["stranger"]
    with pytest.raises(NotAuthorisedError):
        dict(stranger.models)
    keys = he_keys(world["alice_id"], 1)
    query = keys.encrypt(x[0], ModelSpec(10, 1, 1, 1))
    with pytest.raises(NotAuthorisedError):
        stranger._connection.call(m.PredictEncrypted("risk", query))
    with pytest.raises(NotAuthorisedError):
        stranger._connection.call(m.BeginContextUpload(keys.digest, 100))
    # A peer's first refusal of the window is audited alone, the rest in its summary.
    log = world["admin"].audit_log(limit=50)
    refused = [e for e in log.entries if e.action == "refused"]
    assert (refused[-1].actor, refused[-1].subject) == (
        stranger._connection.identity.peer_id,
        "ListModels",
    )


def usage(world: dict) -> list:
    return [world["admin"].model_usage(name) for name in ("risk", "mlp", "limited")]


def test_bad_queries_change_nothing(world: dict, data: tuple) -> None:
    x, _ = data
    alice = world["alice"]._connection
    keys = he_keys(world["alice_id"], 1)
    world["alice"].models["risk"].predict_encrypted(x[0])  # the context is on the domain
    before = usage(world)
    good = keys.encrypt(x[0], ModelSpec(10, 1, 1, 1))
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        alice.call(m.PredictEncrypted("nope", good))
    with pytest.raises(KeyError, match="models: limited, mlp, risk"):
        world["alice"].models["nope"]
    with pytest.raises(InvalidError, match="malformed EncryptedQuery"):
        alice.call(m.PredictEncrypted("risk", b"\x00garbage"))
    nine = keys.encrypt(x[:4, :9], ModelSpec(9, 1, 1, 1))
    with pytest.raises(InvalidError, match="takes 10 features"):
        alice.call(m.PredictEncrypted("risk", nine))
    query = msgspec.msgpack.decode(good, type=EncryptedQuery)
    cut = msgspec.structs.replace(query, ciphertexts=[query.ciphertexts[0][:1000]])
    with pytest.raises(InvalidError, match="not a CKKS ciphertext"):
        alice.call(m.PredictEncrypted("risk", msgspec.msgpack.encode(cut)))
    with pytest.raises(InvalidError, match="HEKeys\\(depth=3\\)"):
        alice.call(m.PredictEncrypted("mlp", keys.encrypt(x[0], ModelSpec(10, 8, 1, 3))))
    assert usage(world) == before


def test_a_context_never_uploaded(world: dict, data: tuple) -> None:
    x, _ = data
    alice = world["alice"]._connection
    keys = HEKeys(depth=1, galois_keys=False)  # small: batches need no Galois keys
    query = keys.encrypt(x[:10], ModelSpec(10, 1, 1, 1))
    with pytest.raises(NotFoundError, match=f"public context {keys.digest} .* upload it"):
        alice.call(m.PredictEncrypted("risk", query))


def upload(connection: NodeConnection, data: bytes, digest: str, nbytes: int) -> None:
    ticket = connection.call(m.BeginContextUpload(digest, nbytes))
    connection.flight.put(ticket.ticket, context_table(data))  # type: ignore[union-attr]
    connection.call(m.CommitContextUpload(ticket.upload_id))  # type: ignore[union-attr]


def test_bad_contexts_are_refused(world: dict) -> None:
    alice = world["alice"]._connection
    keys = HEKeys(depth=1, galois_keys=False)
    public = keys.public_context()
    with pytest.raises(InvalidError, match=r"1\.\.134217728 bytes"):
        alice.call(m.BeginContextUpload(keys.digest, MAX_CONTEXT_BYTES + 1))
    with pytest.raises(InvalidError, match="SHA-256"):
        alice.call(m.BeginContextUpload("not hex", 10))
    with pytest.raises(InvalidError, match="does not match the announced"):
        upload(alice, public, "0" * 64, len(public))
    private = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    secret = private.serialize(save_secret_key=True)
    with pytest.raises(InvalidError, match="secret key"):
        upload(alice, secret, hashlib.sha256(secret).hexdigest(), len(secret))
    with pytest.raises(NotFoundError, match="no context upload"):
        alice.call(m.CommitContextUpload("0" * 32))
    upload(alice, public, keys.digest, len(public))  # and a good one goes through
    assert alice.call(m.BeginContextUpload(keys.digest, len(public))) == m.ContextTicket()


def test_owner_side_checks(world: dict) -> None:
    admin = world["admin"]
    relu = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with pytest.raises(InvalidError, match="only activation"):
        admin.create_model("relu", relu)
    with pytest.raises(InvalidError, match="alternating"):
        admin.create_model("odd", {"bias": torch.zeros(1)})
    with pytest.raises(ConflictError, match="already exists"):
        admin.create_model("risk", torch.nn.Linear(10, 1))
    with pytest.raises(InvalidError, match="not a safetensors file"):
        admin._connection.call(m.CreateModel("raw", b"\x80\x04pickle"))
    with pytest.raises(NotAuthorisedError):
        world["alice"]._connection.call(m.CreateModel("mine", b""))
    with pytest.raises(NotAuthorisedError):
        world["alice"]._connection.call(m.GetModelUsage("risk"))
    assert set(admin.models) == {"risk", "mlp", "limited"}


def test_a_sample_too_wide_for_one_ciphertext_goes_as_a_batch(world: dict) -> None:
    torch.manual_seed(1)
    wide = torch.nn.Sequential(torch.nn.Linear(20, 16), Square(), torch.nn.Linear(16, 2))
    world["admin"].create_model("wide", wide.double())
    x = np.random.default_rng(2).normal(size=20)
    got = world["alice"].models["wide"].predict_encrypted(x)
    assert got.shape == (2,)
    assert np.abs(got - plain(wide, x)).max() < MLP_TOLERANCE


def test_the_client_uploads_again_after_a_node_restart(world: dict, data: tuple) -> None:
    """The node keeps contexts in memory only; the client is told, re-uploads, asks again."""
    x, _ = data
    node = world["node"]
    world["alice"].models["risk"].predict_encrypted(x[0])  # context on the node, client knows
    node.stop()
    node.start()
    alice = DomainClient(NodeConnection(node.address, world["alice"]._connection.identity))
    before = len([e for e in audit_entries(node, world) if e.action == "he_context"])
    assert alice.models["risk"].predict_encrypted(x[:2]).shape == (2, 1)
    after = len([e for e in audit_entries(node, world) if e.action == "he_context"])
    assert after == before + 1


def audit_entries(node: DomainProcess, world: dict) -> list[m.AuditEntry]:
    owner = world["admin"]._connection.identity
    return AdminClient(NodeConnection(node.address, owner)).audit_log(limit=10_000).entries
