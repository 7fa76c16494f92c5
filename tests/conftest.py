import pytest

from fedlib import engine
from fedlib.config import validate
from fedlib.partition import make_partition


def tiny_raw(**train):
    """A small, fast setting: sklearn digits, MLP, 10 clients, 3 a round."""
    return {
        "data": {"dataset": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5, "min_client_size": 5},
        "train": {"methods": ["fedavg"], "seeds": [0], "model": "mlp", "rounds": 4, "clients_per_round": 3,
                  "local_epochs": 1, "batch_size": 16, "lr": 0.05, "checkpoint_every": 1,
                  "train_loss_samples": 200, **train},
    }


@pytest.fixture(scope="session")
def digits_fed():
    p = validate(tiny_raw())
    data = engine.load_data(p)
    parts = make_partition(data.y_train.numpy(), "dirichlet", 10, alpha=0.5, min_client_size=5, seed=0)
    return engine.federate(data, parts)
