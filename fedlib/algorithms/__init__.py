"""Algorithms by name. Each module holds one method; its class declares its hyper-parameters."""
from fedlib.algorithms.base import Algorithm
from fedlib.algorithms.fedavg import FedAvg
from fedlib.algorithms.fedavgm import FedAvgM

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedAvg, FedAvgM)}
