"""Encrypted computation: the cryptographic core, free of networking.

- `seal`: results encrypted to the requester's key (X25519 + HKDF-SHA256 + AES-256-GCM).
- `secagg` (+ `secagg_messages`, `shamir`): secure aggregation across domains (Bonawitz et al.,
  CCS 2017) as two pure state machines, `SecAggClient` and `SecAggServer`.
- `he`: homomorphic inference with CKKS (TenSEAL): the scientist holds the secret key, the
  domain evaluates its private model on ciphertexts.

Each module's docstring states its protocol and threat model. Importing this package imports
none of them, so `seal` stays cheap and TenSEAL loads only where `he` is used.
"""
