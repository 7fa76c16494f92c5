"""The momentum / SAM family (docs/methods.md#federated-methods): limiting cases bit for bit, closed forms by hand,
diagnostics and bookkeeping (the perturbations: test_sam_perturbations.py)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fedlib import engine
from fedlib.algorithms.base import ClientData, RoundInfo, Worker
from fedlib.algorithms.scaffold import Scaffold
from fedlib.config import ParamsError
from tests.sam_helpers import NO_DIAG, final_model, mlp_alg, one_thread, params  # noqa: F401  (one_thread: autouse)


# ----- limiting cases, bit for bit, through the engine -----

def test_fedsam_rho0_equals_fedavg_bit_for_bit(tmp_path, digits_fed):
    x_avg, rows_avg = final_model(tmp_path, digits_fed, "fedavg")
    x_sam, rows_sam = final_model(tmp_path, digits_fed, "fedsam", {"rho": 0.0})
    assert torch.equal(x_avg, x_sam)
    assert [r["client_loss"] for r in rows_avg] == [r["client_loss"] for r in rows_sam]
    assert all(float(r["perturbation_norm"]) == 0.0 for r in rows_sam)
    x_sam1, _ = final_model(tmp_path, digits_fed, "fedsam", {"rho": 0.05})
    assert not torch.equal(x_avg, x_sam1)                        # rho does act


def test_mofedsam_alpha1_equals_fedsam(tmp_path, digits_fed):
    x_sam, _ = final_model(tmp_path, digits_fed, "fedsam", {"rho": 0.05})
    x_mo, _ = final_model(tmp_path, digits_fed, "mofedsam", {"rho": 0.05, "alpha": 1.0})
    assert torch.equal(x_sam, x_mo)
    x_mo9, _ = final_model(tmp_path, digits_fed, "mofedsam", {"rho": 0.05, "alpha": 0.5})
    assert not torch.equal(x_sam, x_mo9)


def test_fedcm_alpha1_equals_fedavg(tmp_path, digits_fed):
    x_avg, _ = final_model(tmp_path, digits_fed, "fedavg")
    x_cm, _ = final_model(tmp_path, digits_fed, "fedcm", {"alpha": 1.0})
    assert torch.equal(x_avg, x_cm)


def test_fedwmsam_all_switches_off_equals_fedcm(tmp_path, digits_fed):
    off = {"personalised_momentum": False, "momentum_perturbation": False, "adaptive_alpha": False,
           "alpha0": 0.3}
    x_cm, rows_cm = final_model(tmp_path, digits_fed, "fedcm", {"alpha": 0.3}, rounds=3)
    x_wm, rows_wm = final_model(tmp_path, digits_fed, "fedwmsam", off, rounds=3)
    assert torch.equal(x_cm, x_wm)
    assert [r["momentum_norm"] for r in rows_cm] == [r["momentum_norm"] for r in rows_wm]
    x_on, _ = final_model(tmp_path, digits_fed, "fedwmsam", {**off, "personalised_momentum": True}, rounds=3)
    assert not torch.equal(x_cm, x_on)


# ----- SCAFFOLD option II by hand on a two-client quadratic -----

class QuadraticWorker(Worker):
    """l_k(x) = 1/2 (x - b_k)^T A_k (x - b_k); the batch labels carry the client id k."""

    def __init__(self, A, b):
        model = nn.Module()
        model.x = nn.Parameter(torch.zeros(len(b[0])))
        super().__init__(model)
        self.A, self.b = A, b

    def loss_grad(self, xb, yb):
        k = int(yb[0])
        d = self.flat - self.b[k]
        self.grad.copy_(self.A[k] @ d)
        return 0.5 * float(d @ self.A[k] @ d)


def test_scaffold_control_variates_by_hand():
    A = [torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.5], [0.5, 3.0]])]
    b = [torch.tensor([1.0, -1.0]), torch.tensor([-2.0, 0.5])]
    steps = {0: 3, 1: 5}                          # different K per client
    N, lr = 3, 0.1                                # client 2 is never sampled: c divides by N = 3
    train = SimpleNamespace(local_epochs=1, batch_size=1, weight_decay=0.0, clip=1e9, server_lr=1.0,
                            eval_batch_size=10)
    hp = params({"scaffold": NO_DIAG}).methods.scaffold
    alg = Scaffold(hp, train, QuadraticWorker(A, b), SimpleNamespace(num_clients=N))
    x = torch.zeros(2)

    # reference, float64, written from the equations in docs/methods.md
    An, bn = [a.double().numpy() for a in A], [v.double().numpy() for v in b]
    xr, c, ck = np.zeros(2), np.zeros(2), {0: np.zeros(2), 1: np.zeros(2)}
    for r in range(3):
        clients = [ClientData(k, torch.zeros(steps[k], 1), torch.full((steps[k],), k), torch.Generator())
                   for k in (0, 1)]
        x, _, _ = alg.run_round(x, clients, RoundInfo(r, lr, x))
        deltas = {}
        for k in (0, 1):
            y = xr.copy()
            for _ in range(steps[k]):
                y = y - lr * (An[k] @ (y - bn[k]) + c - ck[k])        # G = grad + c - c_k
            deltas[k] = y - xr
        new = {k: ck[k] - c - deltas[k] / (steps[k] * lr) for k in (0, 1)}   # c_k+ = c_k - c - Delta_k/(K eta)
        c = c + sum(new[k] - ck[k] for k in (0, 1)) / N                       # c += sum (c_k+ - c_k) / N
        ck = new
        xr = xr + (deltas[0] + deltas[1]) / 2
        np.testing.assert_allclose(alg.state["c"].numpy(), c, rtol=1e-5, atol=1e-6)
        for k in (0, 1):
            np.testing.assert_allclose(alg.state["c_k"][k].numpy(), ck[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x.numpy(), xr, rtol=1e-5, atol=1e-6)
    assert set(alg.state["c_k"]) == {0, 1}          # c_k stored only for sampled clients
    assert np.abs(c).max() > 0.1


# ----- diagnostics, bookkeeping, bad input -----

def test_diagnostics_logged(tmp_path, digits_fed):
    _, rows = final_model(tmp_path, digits_fed, "fedwmsam", {"diag_every": 2}, rounds=4)
    curv = [r["curvature_cos"] for r in rows]
    assert [c != "" for c in curv] == [True, False, True, False]  # rounds 0 and 2 (0-based)
    assert all(-1 <= float(c) <= 1 for c in curv if c)
    assert rows[0]["update_cos_prev"] == "" and all(-1 <= float(r["update_cos_prev"]) <= 1 for r in rows[1:])
    assert float(rows[0]["alpha"]) == 0.1 and float(rows[-1]["momentum_norm"]) > 0


def test_diagnostics_do_not_change_training(tmp_path, digits_fed):
    x_on, _ = final_model(tmp_path, digits_fed, "fedsam", {"diag_every": 1})
    x_off, _ = final_model(tmp_path, digits_fed, "fedsam", {"diag_every": 0})
    assert torch.equal(x_on, x_off)


def test_costs_declared():
    from fedlib.algorithms import REGISTRY
    two = {m for m, c in REGISTRY.items() if c.backprops_per_step == 2}
    assert two == {"fedsam", "mofedsam", "fedgamma", "fedsmoo"}
    assert REGISTRY["fedwmsam"].up_vectors == 1 and REGISTRY["scaffold"].up_vectors == 2


def test_bad_hyperparameters_rejected():
    with pytest.raises(ParamsError, match="methods.fedwmsam.perturbation"):
        params({"fedwmsam": {"perturbation": "authors"}})
    with pytest.raises(ParamsError, match="methods.fedsam.rho"):
        params({"fedsam": {"rho": -0.1}})
    with pytest.raises(ParamsError, match="methods.fedwmsam.alpha0"):
        params({"fedwmsam": {"alpha0": 1.0}})


def test_fedwmsam_resume_matches_uninterrupted_run(tmp_path, digits_fed):
    p = params({"fedwmsam": {"diag_every": 2}}, rounds=4, checkpoint_every=1)
    engine.train(p, "fedwmsam", 0, tmp_path / "a", fed=digits_fed, progress=False)
    engine.train(p, "fedwmsam", 0, tmp_path / "b", fed=digits_fed, progress=False, stop_after=2)
    engine.train(p, "fedwmsam", 0, tmp_path / "b", fed=digits_fed, progress=False)   # resumes at round 2
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


def test_global_gradient_is_chunk_independent(digits_fed):
    alg, x, _, _ = mlp_alg(digits_fed, "fedsam", {"diag_samples": 100})
    alg.worker.load(x)
    whole = alg.global_gradient()
    alg.train = SimpleNamespace(**{**vars(alg.train), "eval_batch_size": 7})
    assert torch.allclose(alg.global_gradient(), whole, atol=1e-6)
    assert whole.norm() > 0


def test_fedsmoo_switches_off_equals_fedsam_bit_for_bit(tmp_path, digits_fed):
    off = {"rho": 0.05, "dynamic_regulariser": False, "perturbation_correction": False}
    x_sam, rows_sam = final_model(tmp_path, digits_fed, "fedsam", {"rho": 0.05}, rounds=3)
    x_smoo, rows_smoo = final_model(tmp_path, digits_fed, "fedsmoo", off, rounds=3)
    assert torch.equal(x_sam, x_smoo)
    assert [r["client_loss"] for r in rows_sam] == [r["client_loss"] for r in rows_smoo]
    for on in ({"dynamic_regulariser": True}, {"perturbation_correction": True}):   # each part does act
        x_on, _ = final_model(tmp_path, digits_fed, "fedsmoo", {**off, **on}, rounds=3)
        assert not torch.equal(x_sam, x_on)
