"""Shared by the SAM-family tests: tiny params, an engine run, and the engine's round loop with the algorithm in hand."""
import pytest
import torch

from fedlib import engine
from fedlib.algorithms.base import ClientData, RoundInfo, derive_seed
from fedlib.config import validate
from tests.conftest import tiny_raw

NO_DIAG = {"diag_every": 0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and a shared CPU makes threads wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def params(methods: dict | None = None, **train):
    return validate({**tiny_raw(**train), "methods": methods or {}})


def final_model(tmp_path, fed, method, hp=None, rounds=2, **train):
    """Run the engine; return the final global model and the metrics rows."""
    p = params({method: hp or {}}, rounds=rounds, checkpoint_every=100, **train)
    run = tmp_path / f"{method}-{len(list(tmp_path.iterdir()))}"
    engine.train(p, method, 0, run, fed=fed, model_dir=run, progress=False)
    rows = engine._read_csv(run / "metrics.csv")
    return engine.load_models(run / "models.pt")["final"], rows


def drive(fed, method, hp, rounds, observe=None, **train):
    """The engine's client sampling and round calls, with the algorithm object in hand.
    ``observe(alg, info, results, metrics, state_before)`` runs after every round."""
    p = params({method: hp}, **train)
    alg, x = engine.make_algorithm(p, method, fed, 0)
    t = p.train
    for r in range(rounds):
        info = RoundInfo(r, t.lr * t.lr_decay ** r, x)
        chosen = engine.sample_clients(0, r, fed.num_clients, t.clients_per_round)
        clients = [ClientData(int(k), fed.client_x[k], fed.client_y[k],
                              torch.Generator().manual_seed(derive_seed(0, r, int(k)))) for k in chosen]
        before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in alg.state.items() if k != "c_k"}
        x, results, metrics = alg.run_round(x, clients, info)
        if observe:
            observe(alg, info, results, metrics, before)
    return alg, x


def mlp_alg(fed, method, hp):
    """The tiny params' algorithm (diagnostics off) and a 16-sample batch of client 0."""
    p = params({method: {**NO_DIAG, **hp}})
    alg, x = engine.make_algorithm(p, method, fed, 0)
    return alg, x, fed.client_x[0][:16], fed.client_y[0][:16]
