"""Homomorphic inference: the domain runs its private model on the scientist's encrypted inputs.

Scheme: CKKS (Cheon, Kim, Kim, Song 2017) through TenSEAL 0.3.18 (Microsoft SEAL), ring degree
N = 8192, scale 2^40; coefficient moduli [60, 40, 40, 60] for a linear model (depth 1) and
[50, 40, 40, 40, 48] for one hidden layer with square activation (depth 3). Both stay within
the 218 bits that give 128-bit security at N = 8192 (HomomorphicEncryption.org standard).

Protocol:

    domain     model = EncryptedModel.from_state_dict(state_dict)   weights stay on the domain
               spec = model.spec                          public: shapes and depth only
    scientist  keys = HEKeys(depth=spec.depth)            secret key never leaves the kernel
               public = keys.public_context()             ~35-53 MB with Galois keys: send once
    domain     context = PublicContext.load(public)       cache it by `context.digest`
    scientist  query = keys.encrypt(x, spec)              x: (features,) or (samples, features)
    domain     reply = model.predict(context, query)      ciphertexts in, ciphertexts out
    scientist  y = keys.decrypt(reply)                    (outputs,) or (samples, outputs)

Layouts. One sample ("row") is one ciphertext laid out for TenSEAL's `enc_matmul_plain`: slot
(j * h + k) * h + k holds feature j for each of the h outputs k of the first layer, so the
first layer costs one plaintext product and log2(features * h) rotations (a diagonal matrix
product would cost one rotation per feature: 3x slower at 10 features, 9x at 30). Later layers
are dot products, one per output. This needs the Galois keys and h * 2^ceil(log2(features * h))
<= 4096 slots. A batch of up to 4096 samples ("column") is one ciphertext per feature,
evaluated with scalar products only: no rotations, far more samples per second, no Galois keys.

Precision against plaintext evaluation, measured on scikit-learn's diabetes data: a linear
model's outputs (25..346) within 2e-5, a 10 -> 8 -> 1 MLP's standardised outputs (|y| < 2.6)
within 2e-5; the tests require 1e-3 and 1e-4. Outputs must stay below 2^19 in magnitude for a
linear model and 2^9 for the MLP (the last modulus over the scale): standardise the data.

Threat model: the domain sees only ciphertexts under a key it does not hold, so the inputs and
outputs are hidden from it (IND-CPA of CKKS under RLWE); it refuses a context that holds a
secret key, since that means the scientist is confused about which half to send. The scientist
learns the model's outputs and, through CKKS noise that is not flooded, possibly a little more
about the weights (no circuit privacy); as the domain cannot see what was encrypted, a
dishonest scientist may fill slots so that a reply mixes other combinations of the first
layer's weights than an honest sample would. Outputs alone reveal a linear model after
features + 1 queries anyway: domains must budget queries. A malformed query, a wrong shape or
a context mismatch is refused with HEError and changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import numpy as np
import tenseal as ts

from jupyter_syft.errors import SyftError

POLY_MODULUS_DEGREE = 8192
SLOTS = POLY_MODULUS_DEGREE // 2
SCALE = 2.0**40
LINEAR_MODULI = [60, 40, 40, 60]
MLP_MODULI = [50, 40, 40, 40, 48]
MAX_CONTEXT_BYTES = 128 * 2**20

Layout = Literal["row", "column"]


class HEError(SyftError):
    """A homomorphic-inference input was refused or could not be evaluated."""


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, tag="he_model"):
    """What a scientist needs to make keys and queries for a served model: shapes and depth."""

    features: int
    rows: int  # outputs of the first layer: one-sample queries are laid out for them
    outputs: int
    depth: int  # multiplications in sequence: 1 for a linear model, 3 for the MLP


class EncryptedQuery(msgspec.Struct, forbid_unknown_fields=True, frozen=True, tag="he_query"):
    context_digest: str  # which cached public context the ciphertexts belong to
    layout: Layout  # "row": one sample in one ciphertext; "column": one ciphertext per feature
    samples: int
    features: int
    rows: int  # the first layer's outputs the row layout was made for
    ciphertexts: list[bytes]


class EncryptedReply(msgspec.Struct, forbid_unknown_fields=True, frozen=True, tag="he_reply"):
    layout: Layout  # "row": ciphertexts whose values concatenate to the outputs;
    samples: int  # "column": one ciphertext per output, holding every sample
    outputs: int
    ciphertexts: list[bytes]


def row_slots(features: int, rows: int) -> int:
    """Slots a one-sample query takes: rows * (features * rows rounded up to a power of 2)."""
    return rows * (1 << (features * rows - 1).bit_length())


def moduli_for_depth(depth: int) -> list[int]:
    """Coefficient moduli with enough levels for `depth` multiplications at N = 8192."""
    if depth <= 2:
        return LINEAR_MODULI
    if depth == 3:
        return MLP_MODULI
    raise HEError(f"depth {depth} needs N = 16384; only models of depth <= 3 are supported")


class HEKeys:
    """The scientist's CKKS keys. The secret key stays in this object; share `public_context()`."""

    def __init__(self, depth: int = 3, galois_keys: bool = True) -> None:
        """`galois_keys` enable one-sample queries; batches alone need none (~2.6 MB context)."""
        self._context = ts.context(
            ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE, coeff_mod_bit_sizes=moduli_for_depth(depth)
        )
        self._context.global_scale = SCALE
        if galois_keys:
            self._context.generate_galois_keys()
        self._galois = galois_keys
        self._public = self._context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=galois_keys,
            save_relin_keys=True,
        )
        self.digest = hashlib.sha256(self._public).hexdigest()

    def public_context(self) -> bytes:
        """The evaluation half: public, relinearisation and (if made) Galois keys; no secret."""
        return self._public

    def encrypt(self, x: np.ndarray, spec: ModelSpec) -> bytes:
        """A query for one sample (shape (features,)) or a batch (shape (samples, features))."""
        values = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise HEError("inputs hold NaN or infinity")
        if values.shape[-1:] != (spec.features,) or values.ndim > 2:
            raise HEError(f"the model takes {spec.features} features, got shape {values.shape}")
        if values.ndim == 1:
            if not self._galois:
                raise HEError("one-sample queries need keys made with galois_keys=True")
            slots = row_slots(spec.features, spec.rows)
            if slots > SLOTS:
                raise HEError(f"one sample needs {slots} > {SLOTS} slots here: send a batch")
            layout = np.zeros(slots)
            j, k = np.arange(spec.features)[:, None], np.arange(spec.rows)[None, :]
            layout[(j * spec.rows + k) * spec.rows + k] = values[:, None]
            cts = [ts.ckks_vector(self._context, layout.tolist()).serialize()]
            query = EncryptedQuery(self.digest, "row", 1, spec.features, spec.rows, cts)
        else:
            if not 1 <= len(values) <= SLOTS:
                raise HEError(f"a batch holds 1..{SLOTS} samples, got {len(values)}")
            cts = [ts.ckks_vector(self._context, col.tolist()).serialize() for col in values.T]
            query = EncryptedQuery(
                self.digest, "column", len(values), spec.features, spec.rows, cts
            )
        return _encode(query)

    def decrypt(self, reply: bytes) -> np.ndarray:
        """The outputs: shape (outputs,) for one sample, (samples, outputs) for a batch."""
        answer = _decode(reply, EncryptedReply)
        if answer.layout == "row":
            vectors = _load_vectors(self._context, answer.ciphertexts)
            values = np.concatenate([vector.decrypt() for vector in vectors])
            if values.shape != (answer.outputs,):
                raise HEError(f"reply holds {values.size} values, not {answer.outputs} outputs")
            return values
        vectors = _load_vectors(self._context, answer.ciphertexts, answer.outputs, answer.samples)
        return np.array([vector.decrypt() for vector in vectors]).T


class PublicContext:
    """A scientist's public CKKS context, checked, as the domain holds it (cache by digest)."""

    def __init__(self, context: ts.Context, digest: str) -> None:
        self.context = context
        self.digest = digest
        self.levels = context.data.seal_context().first_context_data().chain_index()

    @classmethod
    def load(cls, data: bytes) -> PublicContext:
        """Deserialise and check a context sent by a scientist; refuse anything unexpected."""
        if len(data) > MAX_CONTEXT_BYTES:
            raise HEError(f"public context of {len(data)} bytes exceeds {MAX_CONTEXT_BYTES}")
        try:
            context = ts.context_from(bytes(data))
        except Exception as exc:  # TenSEAL raises ValueError, RuntimeError or its own types
            raise HEError(f"not a TenSEAL context: {exc}") from exc
        if not context.is_public() or context.has_secret_key():
            raise HEError(
                "context holds a secret key: send only the public context "
                "(the domain must never be able to decrypt your data)"
            )
        parms = context.data.seal_context().first_context_data().parms()
        if parms.scheme().name != "CKKS" or parms.poly_modulus_degree() != POLY_MODULUS_DEGREE:
            raise HEError("context must be CKKS with polynomial modulus degree 8192")
        if not context.has_relin_keys():
            raise HEError("context lacks relinearisation keys")
        return cls(context, hashlib.sha256(data).hexdigest())


class EncryptedModel:
    """A linear model or a one-hidden-layer MLP with square activation, evaluated on ciphertexts.

    `layers` are (weight (out, in), bias (out,)) pairs as in torch's nn.Linear; between two
    layers the activation is x ** 2 (the one nonlinearity CKKS evaluates exactly and cheaply).
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        if not 1 <= len(layers) <= 2:
            raise HEError("supported models: one linear layer, or two with a square between")
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        for weight, bias in layers:
            w = np.asarray(weight, dtype=np.float64)
            b = np.asarray(bias, dtype=np.float64)
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise HEError(f"layer weight {w.shape} and bias {b.shape} do not fit")
            if self.layers and w.shape[1] != self.layers[-1][0].shape[0]:
                raise HEError("consecutive layers do not chain")
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise HEError("weights hold NaN or infinity")
            self.layers.append((w, b))
        self.spec = ModelSpec(
            features=self.layers[0][0].shape[1],
            rows=self.layers[0][0].shape[0],
            outputs=self.layers[-1][0].shape[0],
            depth=2 * len(self.layers) - 1,
        )
        if self.spec.features > SLOTS:
            raise HEError(f"at most {SLOTS} input features")

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> EncryptedModel:
        """From a torch state dict (or numpy arrays) of alternating `*.weight`, `*.bias`."""
        names = list(state_dict)
        pairs = list(zip(names[::2], names[1::2], strict=False))
        if len(names) % 2 or not all(w.endswith("weight") and b.endswith("bias") for w, b in pairs):
            raise HEError(f"expected alternating weight and bias entries, got {names}")
        arrays = [_to_numpy(state_dict[name]) for name in names]
        return cls(list(zip(arrays[::2], arrays[1::2], strict=True)))

    def predict(self, context: PublicContext, query: bytes) -> bytes:
        """Evaluate on the query's ciphertexts; the reply holds ciphertexts only."""
        asked = _decode(query, EncryptedQuery)
        spec = self.spec
        if asked.context_digest != context.digest:
            raise HEError("query was encrypted under another context than the one given")
        if (asked.features, asked.rows) != (spec.features, spec.rows):
            raise HEError(
                f"model takes {spec.features} features laid out for {spec.rows} rows, "
                f"query has {asked.features} for {asked.rows}"
            )
        if context.levels < spec.depth:
            raise HEError(
                f"context has {context.levels} levels, the model needs {spec.depth}: "
                f"make keys with HEKeys(depth={spec.depth})"
            )
        try:
            if asked.layout == "row":
                slots = row_slots(spec.features, spec.rows)
                if asked.samples != 1 or slots > SLOTS or not context.context.has_galois_keys():
                    raise HEError(
                        f"a row query holds one sample, in {slots} <= {SLOTS} slots, "
                        "and needs Galois keys"
                    )
                (x,) = _load_vectors(context.context, asked.ciphertexts, 1, slots)
                outputs = self._row(x)
            else:
                if not 1 <= asked.samples <= SLOTS:
                    raise HEError(f"a column query holds 1..{SLOTS} samples")
                columns = _load_vectors(
                    context.context, asked.ciphertexts, spec.features, asked.samples
                )
                outputs = self._columns(columns)
            cts = [vector.serialize() for vector in outputs]
        except (ValueError, RuntimeError, TypeError) as exc:  # SEAL's scale and level errors
            raise HEError(f"evaluation failed on this query: {exc}") from exc
        return _encode(EncryptedReply(asked.layout, asked.samples, spec.outputs, cts))

    def _row(self, x: ts.CKKSVector) -> list[ts.CKKSVector]:
        """First layer by `enc_matmul_plain` (slots 0..rows-1 hold it, the rest is scratch),
        then one dot product per output (a diagonal product would read the scratch slots)."""
        w, b = self.layers[0]
        hidden = x.enc_matmul_plain(w.T.reshape(-1).tolist(), self.spec.rows) + b.tolist()
        if len(self.layers) == 1:
            return [hidden]
        hidden = hidden.square()
        w, b = self.layers[1]
        return [hidden.dot(row.tolist()) + float(bias) for row, bias in zip(w, b, strict=True)]

    def _columns(self, columns: list[ts.CKKSVector]) -> list[ts.CKKSVector]:
        for i, (w, b) in enumerate(self.layers):
            if i:
                columns = [column.square() for column in columns]
            outputs = []
            for row, bias in zip(w, b, strict=True):
                total = columns[0] * float(row[0])
                for column, weight in zip(columns[1:], row[1:], strict=True):
                    total = total + column * float(weight)
                outputs.append(total + float(bias))
            columns = outputs
        return columns


def _to_numpy(value: Any) -> np.ndarray:
    return np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float64)


def _load_vectors(
    context: ts.Context, ciphertexts: list[bytes], count: int | None = None, size: int | None = None
) -> list[ts.CKKSVector]:
    """Ciphertexts linked to `context`, `count` of them of `size` values each if given."""
    if count is not None and len(ciphertexts) != count:
        raise HEError(f"expected {count} ciphertexts, got {len(ciphertexts)}")
    vectors = []
    for data in ciphertexts:
        try:
            vector = ts.ckks_vector_from(context, data)
        except Exception as exc:  # protobuf and SEAL raise assorted types on bad bytes
            raise HEError(f"not a CKKS ciphertext of this context: {exc}") from exc
        if size is not None and vector.size() != size:
            raise HEError(f"ciphertext holds {vector.size()} values, expected {size}")
        vectors.append(vector)
    return vectors


_encoder = msgspec.msgpack.Encoder()


def _encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def _decode(data: bytes, kind: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.msgpack.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise HEError(f"malformed {kind.__name__}: {exc}") from exc
