"""FedAvg over three clients with Flower, mirroring benchmarks/bench_federated.py's diabetes MLP."""
