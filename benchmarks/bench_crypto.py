"""Benchmarks of encrypted computation: sealed results, secure aggregation, HE inference.

Secure aggregation is compared with a plaintext sum over the same transport: each domain sends
its float64 vector in the same signed msgpack frame (`secagg_messages.sign`) that carries a
masked input, and the server verifies, decodes and adds it. Network time is left out; it adds
the same per byte to both sides (see the bytes columns). Parties run one after another in this
process; "wall" is the time a deployment with the domains on their own machines would wait:
per round, the slowest domain, plus all of the server's work.

Run: `.venv/bin/python benchmarks/bench_crypto.py` (about a minute).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_diabetes

from jupyter_syft.crypto import secagg_messages as m
from jupyter_syft.crypto.he import EncryptedModel, HEKeys, PublicContext
from jupyter_syft.crypto.seal import (
    open_sealed,
    open_stream,
    result_context,
    seal,
    seal_stream,
    x25519_public_key,
)
from jupyter_syft.crypto.secagg import SecAggClient, SecAggServer
from jupyter_syft.identity import Identity

MiB = 2**20
REPEAT = 3
LENGTH = 1_000_000
console = Console(width=160)


def median_time(action: Callable[[], object], repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed(action: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = action(*args)
    return value, time.perf_counter() - started


# ---- sealed results -------------------------------------------------------------------------


def bench_seal() -> None:
    requester = Identity.generate()
    public = x25519_public_key(requester.peer_id)
    context = result_context("request", "domain", requester.peer_id)
    data = os.urandom(100 * MiB)
    sealed = seal(data, public, context)
    table = Table(
        title="Sealed results: 100 MiB (X25519 + HKDF-SHA256 + AES-256-GCM, 1 MiB chunks)"
    )
    for column in ("operation", "time", "MiB/s", "vs copying the bytes"):
        table.add_column(column, justify="right" if column != "operation" else "left")
    copy = median_time(lambda: bytes(bytearray(data)))
    with tempfile.TemporaryDirectory() as folder:
        plain, boxed = Path(folder, "plain"), Path(folder, "sealed")
        plain.write_bytes(data)

        def seal_file() -> None:
            with plain.open("rb") as src, boxed.open("wb") as dst:
                seal_stream(src, dst, public, context)

        def open_file() -> None:
            with boxed.open("rb") as src, Path(folder, "opened").open("wb") as dst:
                open_stream(src, dst, requester, context)

        rows = [
            ("seal (bytes -> bytes)", median_time(lambda: seal(data, public, context))),
            ("open (bytes -> bytes)", median_time(lambda: open_sealed(sealed, requester, context))),
            ("seal_stream (file -> file)", median_time(seal_file)),
            ("open_stream (file -> file)", median_time(open_file)),
        ]
    for name, seconds in rows:
        table.add_row(
            name, f"{seconds * 1e3:.0f} ms", f"{100 / seconds:.0f}", f"{seconds / copy:.1f}x"
        )
    overhead = len(sealed) - len(data)
    table.caption = (
        f"copying 100 MiB here: {copy * 1e3:.0f} ms; sealed = plaintext + {overhead:,} B"
    )
    console.print(table)


# ---- secure aggregation ---------------------------------------------------------------------


def plaintext_sum(domains: list[Identity], server: Identity, inputs: list[np.ndarray]) -> dict:
    client_times, frames = [], []
    for identity, vector in zip(domains, inputs, strict=True):
        frame, seconds = timed(send_plain, identity, server.peer_id, vector)
        client_times.append(seconds)
        frames.append(frame)
    started = time.perf_counter()
    total = np.zeros(LENGTH)
    for frame in frames:
        np.add(total, np.frombuffer(m.open_frame(frame).message.vector), out=total)
    server_time = time.perf_counter() - started
    return {
        "bytes": sum(map(len, frames)),
        "server": server_time,
        "wall": max(client_times) + server_time,
        "cpu": sum(client_times) + server_time,
        "total": total,
    }


def send_plain(identity: Identity, server: str, vector: np.ndarray) -> bytes:
    return m.sign(identity, "plain", server, m.MaskedInput(vector.tobytes()))


def secure_sum(domains: list[Identity], scientist: Identity, inputs: list[np.ndarray]) -> dict:
    server_time = 0.0
    bytes_sent = 0
    wall = 0.0
    cpu = 0.0

    def on_server(action: Callable[..., Any], *args: Any) -> Any:
        nonlocal server_time
        value, seconds = timed(action, *args)
        server_time += seconds
        return value

    server = on_server(SecAggServer, scientist, [d.peer_id for d in domains], LENGTH)
    outbox = on_server(server.setup_frames)
    identities = {d.peer_id: d for d in domains}
    by_peer = {d.peer_id: x for d, x in zip(domains, inputs, strict=True)}
    clients: dict[str, SecAggClient] = {}

    def join(peer: str, frame: bytes) -> bytes:
        clients[peer] = SecAggClient(identities[peer], frame)
        return clients[peer].advertise_keys()

    rounds = [
        join,
        lambda p, f: clients[p].share_keys(f),
        lambda p, f: clients[p].masked_input(f, by_peer[p]),
        lambda p, f: clients[p].consistency_check(f),
        lambda p, f: clients[p].unmask(f),
    ]
    for run_round in rounds:
        bytes_sent += sum(map(len, outbox.values()))
        slowest = 0.0
        for peer, frame in outbox.items():
            reply, seconds = timed(run_round, peer, frame)
            slowest = max(slowest, seconds)
            cpu += seconds
            bytes_sent += len(reply)
            on_server(server.receive, reply)
        wall += slowest
        outbox = on_server(server.advance)
    total = on_server(server.result)
    return {
        "bytes": bytes_sent,
        "server": server_time,
        "wall": wall + server_time,
        "cpu": cpu + server_time,
        "total": total,
    }


def bench_secagg() -> None:
    scientist = Identity.generate()
    table = Table(title=f"Secure aggregation: sum of {LENGTH:,} floats (median of {REPEAT})")
    columns = [
        "domains",
        "MiB plain",
        "MiB secure",
        "bytes ratio",
        "server plain",
        "server secure",
        "wall plain",
        "wall secure",
        "wall ratio (target <= 3x)",
        "CPU ratio",
        "max error",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    for n in (5, 10):
        domains = [Identity.generate() for _ in range(n)]
        rng = np.random.default_rng(n)
        inputs = [rng.uniform(-1000, 1000, LENGTH) for _ in range(n)]
        runs = [
            (plaintext_sum(domains, scientist, inputs), secure_sum(domains, scientist, inputs))
            for _ in range(REPEAT)
        ]
        plain = {
            k: statistics.median(r[0][k] for r in runs) for k in ("bytes", "server", "wall", "cpu")
        }
        secure = {
            k: statistics.median(r[1][k] for r in runs) for k in ("bytes", "server", "wall", "cpu")
        }
        error = max(np.abs(r[1]["total"] - r[0]["total"]).max() for r in runs)
        ratio = secure["wall"] / plain["wall"]
        table.add_row(
            str(n),
            f"{plain['bytes'] / MiB:.1f}",
            f"{secure['bytes'] / MiB:.1f}",
            f"{secure['bytes'] / plain['bytes']:.3f}x",
            f"{plain['server'] * 1e3:.0f} ms",
            f"{secure['server'] * 1e3:.0f} ms",
            f"{plain['wall'] * 1e3:.0f} ms",
            f"{secure['wall'] * 1e3:.0f} ms",
            f"[{'green' if ratio <= 3 else 'red'}]{ratio:.2f}x[/]",
            f"{secure['cpu'] / plain['cpu']:.2f}x",
            f"{error:.1e}",
        )
    table.caption = (
        "plain: each domain's float64 vector in the same signed frame; wall: slowest domain per "
        "round + all server work; CPU: all parties' time added up"
    )
    console.print(table)


# ---- homomorphic inference ------------------------------------------------------------------


def bench_he() -> None:
    x = load_diabetes().data
    x = (x - x.mean(0)) / x.std(0)
    rng = np.random.default_rng(0)
    models = {
        "linear 10 -> 1": [(rng.normal(0, 10, (1, 10)), np.array([152.0]))],
        "MLP 10 -> 8 -> 1, x^2": [
            (rng.normal(0, 0.3, (8, 10)), rng.normal(0, 0.1, 8)),
            (rng.normal(0, 0.5, (1, 8)), np.zeros(1)),
        ],
    }
    table = Table(title="Homomorphic inference (CKKS, N = 8192), diabetes data (10 features)")
    columns = [
        "model",
        "keys",
        "public context",
        "encrypt",
        "evaluate",
        "decrypt",
        "one sample (target <= 100 ms)",
        "query / reply",
        "batch of 4096",
        "samples/s",
        "max error",
    ]
    for column in columns:
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, layers in models.items():
        table.add_row(name, *he_row(layers, x))
    table.caption = (
        "one sample: one ciphertext, first layer by enc_matmul_plain (Galois keys); batch: "
        "a ciphertext per feature, scalar products; both include encrypt and decrypt"
    )
    console.print(table)


def he_row(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> list[str]:
    model = EncryptedModel(layers)
    keys, keygen = timed(HEKeys, model.spec.depth)
    context = PublicContext.load(keys.public_context())
    query = keys.encrypt(x[0], model.spec)
    reply = model.predict(context, query)
    encrypt = median_time(lambda: keys.encrypt(x[0], model.spec), 10)
    evaluate = median_time(lambda: model.predict(context, query), 10)
    decrypt = median_time(lambda: keys.decrypt(reply), 10)
    one = encrypt + evaluate + decrypt
    batch = np.resize(x, (4096, x.shape[1]))
    batch_time = median_time(
        lambda: keys.decrypt(model.predict(context, keys.encrypt(batch, model.spec)))
    )
    outputs = keys.decrypt(model.predict(context, keys.encrypt(batch, model.spec)))[:, 0]
    expected = batch
    for i, (w, b) in enumerate(layers):
        expected = (expected**2 if i else expected) @ w.T + b
    return [
        f"{keygen:.2f} s",
        f"{len(keys.public_context()) / MiB:.0f} MiB",
        f"{encrypt * 1e3:.1f} ms",
        f"{evaluate * 1e3:.1f} ms",
        f"{decrypt * 1e3:.1f} ms",
        f"[{'green' if one <= 0.1 else 'red'}]{one * 1e3:.0f} ms[/]",
        f"{len(query) / 1024:.0f} / {len(reply) / 1024:.0f} KiB",
        f"{batch_time * 1e3:.0f} ms",
        f"{len(batch) / batch_time:,.0f}",
        f"{np.abs(outputs - expected[:, 0]).max():.1e}",
    ]


if __name__ == "__main__":
    bench_seal()
    bench_secagg()
    bench_he()
