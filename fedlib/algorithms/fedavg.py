"""FedAvg: plain local SGD, server averages the updates (SPEC section 1)."""
from fedlib.algorithms.base import Algorithm


class FedAvg(Algorithm):
    name = "fedavg"
