"""Shamir secret sharing (Shamir 1979) of 32-byte secrets over GF(2^521 - 1).

Secure aggregation shares each domain's mask seed and mask private key with this, so that any
`threshold` domains can rebuild a secret and fewer learn nothing about it (information-
theoretically). The field is the Mersenne prime 2^521 - 1: every 32-byte secret is a field
element as is. Coefficients come from `secrets`, a CSPRNG: predictable coefficients would let
anyone holding threshold - 1 shares solve for the secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


class ShareError(ValueError):
    """A share is malformed or out of range, or shares do not rebuild a 32-byte secret."""


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of `secret` at the nonzero points `xs`; any `threshold` of them rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ShareError(f"secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or not all(x > 0 for x in xs):
        raise ShareError("need 1 <= threshold <= number of distinct, positive points")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in xs}


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret rebuilt from `threshold` of `shares` (Lagrange interpolation at zero)."""
    if len(shares) < threshold:
        raise ShareError(f"need {threshold} shares, got {len(shares)}")
    points = sorted(shares.items())[:threshold]
    ys = [share_value(y) for _, y in points]
    xs = [x for x, _ in points]
    secret = 0
    for i, (x_i, y_i) in enumerate(zip(xs, ys, strict=True)):
        numerator = denominator = 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ShareError("shares do not rebuild a 32-byte secret: some share is wrong")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_value(share: bytes) -> int:
    """The field element in `share`; refuses a wrong length or a value outside the field."""
    if len(share) != SHARE_BYTES:
        raise ShareError(f"share must be {SHARE_BYTES} bytes, got {len(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise ShareError("share is outside the field")
    return value


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result
