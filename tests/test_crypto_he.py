"""Homomorphic inference on real data: precision against plaintext, and every refusal."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import tenseal as ts
import torch
from he_models import square_mlp
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from jupyter_syft.crypto.he import (
    EncryptedModel,
    EncryptedQuery,
    EncryptedReply,
    HEError,
    HEKeys,
    ModelSpec,
    PublicContext,
)

pytestmark = pytest.mark.unit

# Absolute tolerances on the diabetes data: targets 25..346 for the linear model (measured
# error <= 2e-5), standardised outputs up to 2.6 for the MLP (measured <= 1.5e-5).
LINEAR_TOLERANCE = 1e-3
MLP_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    return load_diabetes(return_X_y=True)


@pytest.fixture(scope="module")
def linear(diabetes: tuple[np.ndarray, np.ndarray]) -> tuple[EncryptedModel, np.ndarray]:
    x, y = diabetes
    fitted = LinearRegression().fit(x, y)
    model = EncryptedModel([(fitted.coef_[None, :], np.array([fitted.intercept_]))])
    return model, fitted.predict(x)


@pytest.fixture(scope="module")
def mlp(diabetes: tuple[np.ndarray, np.ndarray]) -> tuple[EncryptedModel, np.ndarray, np.ndarray]:
    """A 10 -> 8 -> 1 network with square activation, trained in torch on standardised data."""
    x, y = diabetes
    x = (x - x.mean(0)) / x.std(0)
    net = square_mlp(x, y)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[:, 0].numpy()
    return EncryptedModel.from_state_dict(net.state_dict()), x, expected


@pytest.fixture(scope="module")
def linear_keys() -> HEKeys:
    return HEKeys(depth=1)


@pytest.fixture(scope="module")
def mlp_keys() -> HEKeys:
    return HEKeys(depth=3)


def test_linear_model_matches_plaintext(
    diabetes: tuple[np.ndarray, np.ndarray],
    linear: tuple[EncryptedModel, np.ndarray],
    linear_keys: HEKeys,
) -> None:
    x, _ = diabetes
    model, expected = linear
    context = PublicContext.load(linear_keys.public_context())
    one = linear_keys.decrypt(model.predict(context, linear_keys.encrypt(x[7], model.spec)))
    assert one.shape == (1,)
    assert abs(one[0] - expected[7]) < LINEAR_TOLERANCE
    batch = linear_keys.decrypt(model.predict(context, linear_keys.encrypt(x, model.spec)))
    assert batch.shape == (len(x), 1)
    assert np.abs(batch[:, 0] - expected).max() < LINEAR_TOLERANCE


def test_mlp_matches_plaintext(
    mlp: tuple[EncryptedModel, np.ndarray, np.ndarray], mlp_keys: HEKeys
) -> None:
    model, x, expected = mlp
    assert model.spec == ModelSpec(features=10, rows=8, outputs=1, depth=3)
    context = PublicContext.load(mlp_keys.public_context())
    for row in (0, 99):
        one = mlp_keys.decrypt(model.predict(context, mlp_keys.encrypt(x[row], model.spec)))
        assert abs(one[0] - expected[row]) < MLP_TOLERANCE
    batch = mlp_keys.decrypt(model.predict(context, mlp_keys.encrypt(x, model.spec)))
    assert np.abs(batch[:, 0] - expected).max() < MLP_TOLERANCE


def test_the_domain_cannot_decrypt(
    diabetes: tuple[np.ndarray, np.ndarray],
    linear: tuple[EncryptedModel, np.ndarray],
    linear_keys: HEKeys,
) -> None:
    x, _ = diabetes
    model, _ = linear
    context = PublicContext.load(linear_keys.public_context())
    assert not context.context.has_secret_key()
    query = decode_query(linear_keys.encrypt(x[0], model.spec))
    reply = msgspec.msgpack.decode(
        model.predict(context, linear_keys.encrypt(x[0], model.spec)), type=EncryptedReply
    )
    for data in (query.ciphertexts[0], reply.ciphertexts[0]):
        with pytest.raises(ValueError, match="secret"):
            ts.ckks_vector_from(context.context, data).decrypt()
    with pytest.raises(ValueError, match="Secret key"):
        context.context.secret_key()


def decode_query(query: bytes) -> EncryptedQuery:
    return msgspec.msgpack.decode(query, type=EncryptedQuery)


def test_bad_contexts_are_refused(linear_keys: HEKeys) -> None:
    private = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    private.global_scale = 2**40
    with pytest.raises(HEError, match="secret key"):
        PublicContext.load(private.serialize(save_secret_key=True))
    with pytest.raises(HEError, match="not a TenSEAL context"):
        PublicContext.load(b"\x00garbage")
    small = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    small.global_scale = 2**20
    with pytest.raises(HEError, match="degree 8192"):
        PublicContext.load(small.serialize(save_secret_key=False))


def test_bad_queries_are_refused(
    diabetes: tuple[np.ndarray, np.ndarray],
    linear: tuple[EncryptedModel, np.ndarray],
    mlp: tuple[EncryptedModel, np.ndarray, np.ndarray],
    linear_keys: HEKeys,
) -> None:
    x, _ = diabetes
    model, _ = linear
    context = PublicContext.load(linear_keys.public_context())
    good = decode_query(linear_keys.encrypt(x[0], model.spec))
    eight_slots = decode_query(linear_keys.encrypt(x[0, :8], ModelSpec(8, 1, 1, 1))).ciphertexts

    def altered(**changes: object) -> bytes:
        return msgspec.msgpack.encode(msgspec.structs.replace(good, **changes))

    cases = {
        "malformed": b"\x81\xa1x\x01",
        "another context": altered(context_digest="0" * 64),
        "takes 10 features": altered(features=9),
        "laid out for 1 rows": altered(rows=2),
        "expected 1 ciphertexts": altered(ciphertexts=[]),
        "not a CKKS ciphertext": altered(ciphertexts=[good.ciphertexts[0][:1000]]),
        "holds 8 values, expected 16": altered(ciphertexts=eight_slots),
    }
    for reason, query in cases.items():
        with pytest.raises(HEError, match=reason):
            model.predict(context, query)
    deep_model = mlp[0]
    with pytest.raises(HEError, match="HEKeys\\(depth=3\\)"):
        deep_model.predict(context, linear_keys.encrypt(x[0], deep_model.spec))
    with pytest.raises(HEError, match="takes 10 features"):
        linear_keys.encrypt(x[0, :9], model.spec)
    with pytest.raises(HEError, match="send a batch"):
        linear_keys.encrypt(np.zeros(64), ModelSpec(features=64, rows=16, outputs=1, depth=3))


def test_batches_need_no_galois_keys(
    diabetes: tuple[np.ndarray, np.ndarray], linear: tuple[EncryptedModel, np.ndarray]
) -> None:
    x, _ = diabetes
    model, expected = linear
    keys = HEKeys(depth=1, galois_keys=False)
    assert len(keys.public_context()) < 4 * 2**20
    context = PublicContext.load(keys.public_context())
    batch = keys.decrypt(model.predict(context, keys.encrypt(x[:50], model.spec)))
    assert np.abs(batch[:, 0] - expected[:50]).max() < LINEAR_TOLERANCE
    with pytest.raises(HEError, match="galois_keys=True"):
        keys.encrypt(x[0], model.spec)


def test_models_with_several_outputs(
    mlp: tuple[EncryptedModel, np.ndarray, np.ndarray], mlp_keys: HEKeys
) -> None:
    """Several outputs per layer: one ciphertext for a linear model, one per output after a
    hidden layer; in a batch, one per output holding every sample."""
    _, x, _ = mlp
    rng = np.random.default_rng(3)
    linear = [(rng.normal(0, 0.3, (3, 10)), rng.normal(0, 0.1, 3))]
    hidden = (rng.normal(0, 0.3, (8, 10)), rng.normal(0, 0.1, 8))
    two_layers = [hidden, (rng.normal(0, 0.5, (3, 8)), rng.normal(0, 0.1, 3))]
    context = PublicContext.load(mlp_keys.public_context())
    for layers in (linear, two_layers):
        model = EncryptedModel(layers)
        expected = x[:20]
        for i, (w, b) in enumerate(layers):
            expected = (expected**2 if i else expected) @ w.T + b
        one = mlp_keys.decrypt(model.predict(context, mlp_keys.encrypt(x[0], model.spec)))
        assert np.abs(one - expected[0]).max() < MLP_TOLERANCE
        batch = mlp_keys.decrypt(model.predict(context, mlp_keys.encrypt(x[:20], model.spec)))
        assert batch.shape == (20, 3)
        assert np.abs(batch - expected).max() < MLP_TOLERANCE


def test_models_that_cannot_be_evaluated_are_refused() -> None:
    w, b = np.ones((4, 3)), np.zeros(4)
    with pytest.raises(HEError, match="one linear layer, or two"):
        EncryptedModel([(w, b), (np.ones((4, 4)), b), (np.ones((1, 4)), np.zeros(1))])
    with pytest.raises(HEError, match="do not chain"):
        EncryptedModel([(w, b), (np.ones((1, 5)), np.zeros(1))])
    with pytest.raises(HEError, match="do not fit"):
        EncryptedModel([(w, np.zeros(3))])
    with pytest.raises(HEError, match="NaN"):
        EncryptedModel([(np.full((1, 3), np.nan), np.zeros(1))])
    with pytest.raises(HEError, match="alternating"):
        EncryptedModel.from_state_dict({"0.bias": b, "0.weight": w})
