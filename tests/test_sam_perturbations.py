"""SAM perturbations of the family pinned exactly (docs/methods.md#federated-methods): FedSAM's global-norm step
along the batch gradient, FedLESAM's step along minus the previous global update, FedWMSAM's step along the gap
x_r + b u_k - x_b and its alpha rule at both clip ends, and the released per-tensor constant shift."""
import numpy as np
import pytest
import torch
from torch import nn

from fedlib import engine
from fedlib.algorithms.base import ClientResult, RoundInfo
from fedlib.algorithms.sam import released_perturbation, sam_perturbation
from tests.sam_helpers import NO_DIAG, drive, mlp_alg, one_thread, params  # noqa: F401  (one_thread: autouse)


# ----- perturbations -----

def test_sam_perturbation_global_norm_and_batch_gradient_direction(digits_fed):
    alg, x, xb, yb = mlp_alg(digits_fed, "fedsam", {"rho": 0.05})
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
    alg, x, _, _ = mlp_alg(digits_fed, "fedlesam", {"rho": 0.02})
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
