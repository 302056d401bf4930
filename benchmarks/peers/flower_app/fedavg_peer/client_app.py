"""The ClientApp: local training on this node's partition of the diabetes rows."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedavg_peer.task import Progression, partition, train

app = ClientApp()


@app.train()
def fit(msg: Message, context: Context) -> Message:
    model = Progression()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = partition(str(context.run_config["data"]), int(context.node_config["partition-id"]))
    config = context.run_config
    loss = train(
        model, x, y, int(config["local-epochs"]), float(config["lr"]), int(config["batch-size"])
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg
    )
