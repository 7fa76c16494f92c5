"""The momentum / SAM family (docs/methods.md#federated-methods): limiting cases bit for bit, closed forms by hand."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fedlib import engine
from fedlib.algorithms.base import ClientData, ClientResult, RoundInfo, Worker, derive_seed
from fedlib.algorithms.sam import released_perturbation, sam_perturbation
from fedlib.algorithms.scaffold import Scaffold
from fedlib.config import ParamsError, validate
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


# ----- perturbations -----

def _mlp_alg(fed, method, hp):
    p = params({method: {**NO_DIAG, **hp}})
    alg, x = engine.make_algorithm(p, method, fed, 0)
    return alg, x, fed.client_x[0][:16], fed.client_y[0][:16]


def test_sam_perturbation_global_norm_and_batch_gradient_direction(digits_fed):
    alg, x, xb, yb = _mlp_alg(digits_fed, "fedsam", {"rho": 0.05})
    w = alg.worker
    w.load(x)
    w.loss_grad(xb, yb)
    g = w.grad.clone()
    ctx = alg.begin_client(0, RoundInfo(0, 0.05, x))
    alg.direction(xb, yb, 0, ctx)
    e = ctx.e
    assert torch.equal(w.flat, x)                                 # x_b restored exactly
    assert e.norm().item() == pytest.approx(0.05, rel=1e-5)       # ||e|| = rho
    assert torch.allclose(e, 0.05 * g / g.norm(), atol=1e-8)      # along the batch gradient
    sizes = [p.numel() for p in w.model.parameters()]
    per_tensor = [t.norm().item() for t in torch.split(e, sizes)]
    assert max(per_tensor) < 0.05 * (1 - 1e-3)                    # one global norm, not rho per tensor
    G = w.grad.clone()
    w.load(x + e)
    w.loss_grad(xb, yb)
    assert torch.equal(G, w.grad)                                 # G = grad l(x + e; same batch)
    zero = sam_perturbation(torch.zeros(4), 0.1, torch.empty(4))
    assert torch.equal(zero, torch.zeros(4))


def test_fedlesam_perturbs_along_minus_previous_global_update(digits_fed):
    seen = []

    def observe(alg, info, results, metrics, before):
        ctx = alg.begin_client(0, info)                           # the perturbation of the next round
        seen.append((alg.state["prev_delta"], ctx.e.clone()))

    alg, _ = drive(digits_fed, "fedlesam", {**NO_DIAG, "rho": 0.02}, 3, observe)
    for prev, e in seen:
        assert e.norm().item() == pytest.approx(0.02, rel=1e-5)
        assert torch.allclose(e, -0.02 * prev / prev.norm(), atol=1e-8)     # along -Delta_bar_{r-1}
    assert alg.backprops_per_step == 1


def test_fedlesam_round0_has_no_perturbation(digits_fed):
    alg, x, _, _ = _mlp_alg(digits_fed, "fedlesam", {"rho": 0.02})
    assert torch.equal(alg.begin_client(0, RoundInfo(0, 0.05, x)).e, torch.zeros_like(x))


def test_fedwmsam_perturbation_zero_at_b0_then_norm_rho_along_gap(digits_fed):
    records = []
    rho = 0.03

    def observe(alg, info, results, metrics, before):
        if info.r != 2:
            return
        w = alg.worker
        ctx = alg.begin_client(int(results[0].k), info)
        w.load(info.x)
        k = results[0].k
        for b in range(4):
            idx = torch.arange(b * 8, b * 8 + 8) % len(digits_fed.client_y[k])
            xb, yb = digits_fed.client_x[k][idx], digits_fed.client_y[k][idx]
            x_b = w.flat.clone()
            alg.direction(xb, yb, b, ctx)
            assert torch.equal(w.flat, x_b)                       # restored exactly
            records.append((b, x_b, ctx.perturbed.e.clone(), ctx.u, info.x))
            w.sgd_step(info.lr, 0.0, 10.0)

    drive(digits_fed, "fedwmsam", {**NO_DIAG, "rho": rho}, 3, observe)
    for b, x_b, e, u, x_r in records:
        if b == 0:
            assert torch.equal(e, torch.zeros_like(e))            # delta_0 = 0 -> e_0 = 0
        else:
            gap = (x_r + b * u) - x_b                             # delta_b = (x_r + b u_k) - x_b
            assert e.norm().item() == pytest.approx(rho, rel=1e-5)
            assert torch.allclose(e, rho * gap / gap.norm(), atol=1e-7)


def test_fedwmsam_alpha_moves_toward_clipped_mean_dissimilarity(digits_fed):
    lam = 0.3
    checked = []

    def observe(alg, info, results, metrics, before):
        a = before.get("alpha", 0.1)
        assert metrics["alpha"] == a
        prev = before.get("prev_delta")
        if prev is None:
            s = 0.0                                               # s_k = 0 while Delta_bar_{r-1} = 0
        else:
            cos = [torch.nn.functional.cosine_similarity(r.delta, prev, 0).item() for r in results]
            s = float(np.mean([1 - c for c in cos]))
        target = min(max(s, 0.1), 0.9)
        assert alg.state["alpha"] == pytest.approx((1 - lam) * a + lam * target, rel=1e-6)
        checked.append(s)

    drive(digits_fed, "fedwmsam", {**NO_DIAG, "alpha_rate": lam}, 4, observe)
    assert len(checked) == 4 and max(checked) > 0.1


@pytest.mark.parametrize("sign,target", [(-1.0, 0.9), (1.0, 0.1)])
def test_fedwmsam_alpha_clips_mean_dissimilarity_at_both_ends(digits_fed, sign, target):
    """Updates opposed to Delta_bar_{r-1} (s_k = 2) pull alpha toward 0.9, aligned ones (s_k = 0) toward 0.1:
    alpha_{r+1} = (1 - lambda) alpha_r + lambda clip(mean_k s_k, 0.1, 0.9), closed form."""
    lam, a0 = 0.4, 0.5
    alg, x = engine.make_algorithm(params({"fedwmsam": {**NO_DIAG, "alpha0": a0, "alpha_rate": lam}}),
                                   "fedwmsam", digits_fed, 0)
    prev = torch.linspace(-1.0, 1.0, x.numel())
    alg.state["prev_delta"] = prev.clone()
    results = [ClientResult(k, sign * (1.0 + k) * prev, steps=3, n_samples=5, loss=0.0) for k in range(3)]
    alg.server_update(x, results, RoundInfo(1, 0.1, x))
    assert alg.state["alpha"] == pytest.approx((1 - lam) * a0 + lam * target, abs=1e-6)


def test_fedwmsam_personalised_momentum_uses_control_variates(digits_fed):
    def observe(alg, info, results, metrics, before):
        for k in (int(results[0].k), 99 % digits_fed.num_clients):
            ctx = alg.begin_client(k, info)
            a, c = alg.alpha(), alg.state["c"]
            ck = alg.state["c_k"].get(k, torch.zeros_like(c))
            expect = alg.state["m"] + (a / (1 - a)) * (c - ck)    # u_k = m + alpha/(1-alpha) (c - c_k)
            assert torch.allclose(ctx.u, expect, atol=1e-7)
            assert not torch.allclose(ctx.u, alg.state["m"])

    drive(digits_fed, "fedwmsam", NO_DIAG, 3, observe)


def test_released_perturbation_is_a_per_tensor_constant_shift():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))      # tensors of 4, 2, 2, 1 entries: P = 4
    sizes = [p.numel() for p in model.parameters()]
    delta = torch.tensor([1.0, -2.0, 0.5, 1.5, 9.0, 9.0, 9.0, 9.0, 9.0])
    rho = 0.1
    e = released_perturbation(delta, sizes, rho, torch.empty(9))
    denom = 1.0 + 2.0 + 0.5 + 1.5                                 # sum_{i<P} |delta[i]|
    expect = torch.tensor([-rho * 1.0 / denom] * 4 + [rho * 2.0 / denom] * 2 + [-rho * 0.5 / denom] * 2
                          + [-rho * 1.5 / denom])
    assert torch.allclose(e, expect)
    assert torch.equal(released_perturbation(torch.zeros(9), sizes, rho, torch.empty(9)), torch.zeros(9))


def test_fedwmsam_released_mode_shifts_each_tensor_by_a_constant(digits_fed):
    seen = []

    def observe(alg, info, results, metrics, before):
        seen.append(metrics["perturbation_norm"])
        if info.r == 1:
            ctx = alg.begin_client(int(results[0].k), info)
            alg.worker.load(info.x)
            alg.worker.flat.add_(0.01)                            # any x_b != x_r
            alg.direction(digits_fed.client_x[0][:8], digits_fed.client_y[0][:8], 1, ctx)
            for t in torch.split(ctx.perturbed.e, alg.tensor_sizes):
                assert torch.all(t == t[0])

    drive(digits_fed, "fedwmsam", {**NO_DIAG, "perturbation": "released", "rho": 0.01}, 2, observe)
    assert max(seen) > 0.01                                       # far larger than rho on this model


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
    alg, x, _, _ = _mlp_alg(digits_fed, "fedsam", {"diag_samples": 100})
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
