"""The ServerApp: Flower's FedAvg for the configured rounds over all three nodes; it writes
its per-round times and the final weights to the run config's `out` (an .npz path)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedavg_peer.task import initial_state

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's training starts and when its aggregate is ready."""

    def __init__(self) -> None:
        super().__init__(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3
        )
        self.started: list[float] = []
        self.finished: list[float] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.started.append(time.perf_counter())
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result = super().aggregate_train(server_round, replies)
        self.finished.append(time.perf_counter())
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = TimedFedAvg()
    started = time.perf_counter()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state(str(context.run_config["data"]))),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    seconds = time.perf_counter() - started
    rounds = np.array(strategy.finished) - np.array(strategy.started)
    weights = {f"w:{k}": v.numpy() for k, v in result.arrays.to_torch_state_dict().items()}
    np.savez(str(context.run_config["out"]), seconds=seconds, rounds=rounds, **weights)
