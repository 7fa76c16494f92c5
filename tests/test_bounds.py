"""Gradient noise under the methods' perturbations, the bound's fitting and slope code, and the sweeps'
bookkeeping, against closed forms.

The model with a known Hessian and known gradient noise: l_i(w) = (1/2) w^T H w - b_i^T w, so
grad l_i = H w - b_i, every sample's Hessian is H, grad f = H w - mean(b), and a minibatch of B
distinct samples out of n has E||g_B - g||^2 = (n - B) / (B (n - 1)) (1/n) sum_i ||b_i - mean(b)||^2.
"""
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fedlib.algorithms.base import Worker
from fedlib.analysis import bounds, sweeps
from fedlib.analysis.hessian import Objective, power_iteration
from fedlib.analysis.noise import batch_ascent, fixed_direction, gradient_noise, noise_batches, rho_scan


class Quadratic(nn.Module):
    """out_i = (1/2) w^T H w - b_i^T w for the rows b_i of the input."""

    def __init__(self, h: torch.Tensor):
        super().__init__()
        self.h = h
        self.w = nn.Parameter(torch.zeros(len(h)))

    def forward(self, b):
        return 0.5 * self.w @ self.h @ self.w - b @ self.w


def quadratic(n=400, eigs=(5.0, 2.0, 1.0, 0.5), noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g))[0]
    h = q @ torch.diag(torch.tensor(eigs)) @ q.T
    b = torch.randn(len(eigs), generator=g) + noise * torch.randn(n, len(eigs), generator=g)
    obj = Objective(Worker(Quadratic(h)), b, torch.zeros(n), loss=lambda out, y: out.mean(), batch_size=128)
    return obj, h, b


def test_sigma2_and_L_of_the_quadratic_match_their_closed_forms():
    n, B = 400, 8
    obj, h, b = quadratic(n=n)
    x = torch.randn(4)
    assert torch.allclose(obj.grad(x), h @ x - b.mean(0), atol=1e-5)
    (L,), _, _ = power_iteration(obj.hvp(x), obj.dim, iters=500, tol=1e-10)
    assert L == pytest.approx(5.0, rel=1e-4)
    closed = (n - B) / (B * (n - 1)) * (b - b.mean(0)).pow(2).sum(1).mean().item()
    out = gradient_noise(obj, x, noise_batches(n, B, 2000, seed=1))
    assert abs(out["sigma2"] - closed) <= 4 * out["sigma2_se"]


def test_sigma_rho2_along_the_top_eigenvector_exceeds_sigma2_by_L_rho_squared():
    # e fixed: grad l_xi(x + e) - grad f(x) = (g_xi - g) + H e, so sigma_rho^2 = sigma^2 + (L rho)^2 + a zero-mean
    # cross term; the paired excess must cover (L rho)^2 for every rho
    obj, h, _ = quadratic()
    x = torch.randn(4)
    (L,), (v,), _ = power_iteration(obj.hvp(x), obj.dim, iters=500, tol=1e-10)
    batches = noise_batches(obj.n, 8, 600, seed=2)
    rhos = [0.05, 0.2, 0.5, 1.0]
    out = gradient_noise(obj, x, batches, {r: fixed_direction(r, v) for r in rhos})
    for r in rhos:
        ex, se = out["excess"][r]
        assert abs(ex - (L * r) ** 2) <= 4 * se + 1e-6
    # rho_scan uses the method's own perturbation: FedLESAM's e is along x_prev - x
    rows = rho_scan(obj, x, x + v, "fedlesam", rhos, L, batches)
    for row in rows:
        assert row["excess_lo"] <= row["L_rho_sq"] <= row["excess_hi"]
        assert row["theory"] == pytest.approx(row["sigma2"] + row["L_rho_sq"])
    with pytest.raises(ValueError, match="no SAM perturbation"):
        rho_scan(obj, x, x + v, "fedavg", rhos, L, batches)


def test_batch_ascent_at_the_minimum_of_an_isotropic_quadratic():
    # H = L I and grad f(x*) = 0: grad l_xi(x* + rho g_xi/||g_xi||) = g_xi (1 + L rho / ||g_xi||), so
    # sigma_rho^2 = mean (||g_xi|| + L rho)^2 = sigma^2 + 2 L rho E||g_xi|| + (L rho)^2, above sigma^2 + (L rho)^2
    L, rho = 3.0, 0.1
    obj, _, b = quadratic(eigs=(L, L, L, L))
    x_star = b.mean(0) / L
    batches = noise_batches(obj.n, 8, 50, seed=3)
    out = gradient_noise(obj, x_star, batches, {rho: batch_ascent(rho)})
    norms = np.array([(L * x_star - b[i].mean(0)).norm().item() for i in batches])
    assert out["rho"][rho][0] == pytest.approx(np.mean((norms + L * rho) ** 2), rel=1e-4)
    assert out["sigma2"] == pytest.approx(np.mean(norms ** 2), rel=1e-4)
    assert out["rho"][rho][0] > out["sigma2"] + (L * rho) ** 2


def test_bound_terms_and_the_smallest_constants():
    t1, t2 = bounds.bound_terms(2.0, 0.5, 4.0, 2, 5, 10, 8)
    assert t1 == pytest.approx(np.sqrt(2 * 0.5 * 4 / (2 * 5 * 10)))
    assert t2 == pytest.approx(2 * 0.5 / 10 * (1 + 8 ** (2 / 3) / 2))
    m = np.array([1.0, 2.0, 3.0])
    T1, T2 = np.array([1.0, 1.0, 4.0]), np.array([1.0, 3.0, 1.0])
    sm = bounds.smallest_constants(m, T1, T2)
    assert sm == {"common": pytest.approx(0.6), "first_only": pytest.approx(2.0), "second_only": pytest.approx(3.0)}
    assert np.all(m <= sm["common"] * (T1 + T2) + 1e-12)
    assert np.any(m > 0.99 * sm["common"] * (T1 + T2))                   # and no smaller constant works


def test_fit_constants_recovers_known_constants():
    rng = np.random.default_rng(0)
    T1, T2 = rng.uniform(0.1, 2, 12), rng.uniform(0.1, 2, 12)
    fit = bounds.fit_constants(2.5 * T1 + 0.7 * T2, T1, T2)
    assert fit["a"] == pytest.approx(2.5) and fit["b"] == pytest.approx(0.7)
    assert max(abs(r) for r in fit["rel_residuals"]) < 1e-9
    fit = bounds.fit_constants(3.0 * T1, T1, T2)                        # b = 0 is on the boundary: nnls keeps it
    assert fit["a"] == pytest.approx(3.0) and fit["b"] == pytest.approx(0.0, abs=1e-9)


def test_slope_interval_and_the_predicted_range():
    x = np.array([5.0, 10.0, 20.0, 40.0])
    per_seed = np.array([-0.4, -0.5, -0.6])
    y = np.array([3.0 * x ** s for s in per_seed])
    out = bounds.slope_interval(x, y)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert out["slope"] == pytest.approx(-0.5) and out["hi"] - out["slope"] == pytest.approx(half)
    # R sweep: T1 ~ R^(-1/2) and T2 ~ R^(-1); any a, b >= 0 give a slope between
    t1, t2 = bounds.bound_terms(1.0, 1.0, 1.0, 4, 8, x, 50)
    pred = bounds.predicted_slopes(x, t1, t2, a=1.0, b=1.0)
    assert pred["T1"] == pytest.approx(-0.5) and pred["T2"] == pytest.approx(-1.0)
    assert -1.0 <= pred["fitted"] <= -0.5
    assert bounds.slope_verdict(out, pred) == "consistent"
    assert bounds.slope_verdict({"lo": 0.1, "hi": 0.3}, pred) == "above"
    assert bounds.slope_verdict({"lo": -2.0, "hi": -1.5}, pred) == "below"
    assert bounds.slope_verdict({"lo": -3.0, "hi": 1.0}, pred) == "undecided"


def test_run_average_uses_every_round_and_refuses_gaps():
    assert bounds.run_average({0: 4.0, 1: 2.0, 2: 0.0, 3: 100.0}, 3) == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"missing for rounds \[1\]"):
        bounds.run_average({0: 1.0, 2: 1.0}, 3)


def test_sweep_runs_share_the_base_and_keep_K_when_N_moves():
    lst = {"S": [1, 2, 4, 8], "E": [1, 2, 3, 4], "R": [5, 10, 20, 40], "N": [25, 50, 100, 200], "seeds": [0]}
    base = sweeps.base_setting(lst)
    assert base == {"S": 1, "E": 1, "N": 25, "R": 40}
    runs = sweeps.runs(lst)
    assert len(runs) == 10 and runs[0] == base and all(r["R"] == 40 for r in runs)
    for r in runs:                           # E * (pool / N) constant along the N sweep
        if r["N"] != 25:
            assert r["E"] * 4000 / r["N"] == base["E"] * 4000 / 25 and r["S"] == 1
    sweeps.check(lst, 4000, 20, "study")
    with pytest.raises(ValueError, match="study_num_clients.*not an integer"):
        sweeps.check({**lst, "N": [20, 50, 100]}, 4000, 20, "study")
    with pytest.raises(ValueError, match="below train.batch_size"):
        sweeps.check({**lst, "N": [25, 50, 400]}, 4000, 20, "study")
    with pytest.raises(ValueError, match="exceeds min"):
        sweeps.check({**lst, "S": [1, 30]}, 4000, 20, "study")


def test_an_unfinished_study_uses_complete_blocks_only():
    rows = [{"avg_grad_sq_seed0": 1.0, "avg_grad_sq_seed1": 1.0}, {"avg_grad_sq_seed0": 2.0},
            {"avg_grad_sq_seed0": 3.0, "avg_grad_sq_seed1": 2.0}]
    # seed 1 lacks a point: with two seeds only the points both have are used
    used, seeds = sweeps._complete_block(rows, [0, 1])
    assert used == [rows[0], rows[2]] and seeds == [0, 1]
    # three seeds, only seed 0 complete and no point with all three: seed 0 alone (no interval can be formed)
    assert sweeps._complete_block(rows, [0, 1, 2]) == (rows, [0])
    assert sweeps._complete_block(rows[:1] + rows[2:], [0, 1]) == (rows[:1] + rows[2:], [0, 1])


def test_one_seed_tables_say_what_is_missing_instead_of_printing_nan_intervals():
    from fedlib.stages.analysis import flatness_markdown, held_out_text

    assert held_out_text({"held_out_total": 0, "fit_seed": 0}).startswith("No held-out runs (one seed, 0)")
    assert "holds on 3 of 4 held-out runs" in held_out_text(
        {"held_out_total": 4, "held_out_hold": 3, "fit_seed": 0, "common_from_fit_seed": 1.5})
    row = {"method": "fedavg", "seed": 0, "lambda_max": 2.0, "lambda_ratio": 1.5, "trace": 9.0, "trace_se": 0.5,
           "trace_rel_se": 0.05, "test_accuracy": 0.9}
    one = flatness_markdown({"fedavg": {}}, [row], 5, [0])
    assert "One seed (0)" in one and "nan" not in one and "| fedavg | 0 | 2 |" in one


def test_one_seed_headline_shows_values_without_intervals_and_two_seeds_a_sample_std():
    from types import SimpleNamespace as NS

    from fedlib.stages.federated import headline

    p = NS(train=NS(model="cnn_half", clients_per_round=10, local_epochs=2, batch_size=20, rounds=30, seeds=[0]),
           partition=NS(num_clients=100, scheme="dirichlet"))
    row = lambda acc, std: {"final_accuracy": acc, "final_accuracy_std": std, "last10_accuracy": acc,
                            "best_accuracy": acc, "rounds_to_target": {"0.8": 3}, "seconds_per_round": 0.2}
    runs = lambda accs: {s: ({"final_accuracy": a}, []) for s, a in enumerate(accs)}
    one = headline(p, {"scaffold": row(0.9, None), "fedavg": row(0.85, None)},
                   {"scaffold": runs([0.9]), "fedavg": runs([0.85])})
    assert "seed 0." in one and "nan" not in one and "| scaffold | 0.9000 |" in one
    assert "scaffold > fedavg: **cannot tell (n = 1)** (+0.0500, n = 1)" in one
    p.train.seeds = [0, 1]
    two = headline(p, {"scaffold": row(0.9, 0.01), "fedavg": row(0.85, 0.02)},
                   {"scaffold": runs([0.9, 0.92]), "fedavg": runs([0.85, 0.86])})
    t = stats.t.ppf(0.975, 1) * np.std([0.05, 0.06], ddof=1) / np.sqrt(2)
    assert "| scaffold | 0.9000 ± 0.0100 |" in two and f"(+0.0550 [{0.055 - t:+.4f}, {0.055 + t:+.4f}], n = 2)" in two


def test_report_row_has_the_sample_std_over_seeds_and_none_for_one_seed():
    from fedlib.stages.federated import method_row

    run = lambda acc, r: {"final_accuracy": acc, "last10_accuracy": acc - 0.01, "best_accuracy": acc + 0.01,
                          "rounds_to_target": {"0.8": r}, "seconds_per_round": 0.2}
    one = method_row([run(0.9, 5)])
    assert one["final_accuracy_std"] is None and one["final_accuracy"] == 0.9 and one["seeds"] == 1
    two = method_row([run(0.9, 4), run(0.8, None)])
    assert two["final_accuracy_std"] == pytest.approx(np.sqrt(2) * 0.05)      # ddof = 1: 0.0707, not 0.05
    assert two["final_accuracy"] == pytest.approx(0.85) and two["last10_accuracy"] == pytest.approx(0.84)


def test_a_sweep_run_and_its_measurement_are_reused_only_under_the_same_settings(tmp_path, monkeypatch):
    """A finished sweep run is skipped only when its fingerprint matches the settings now (a changed root
    train.batch_size retrains it and drops its measurement); a measurement is reused only under the same
    analysis settings."""
    from tests.conftest import tiny_raw

    from fedlib import engine
    from fedlib.config import validate

    p = validate(tiny_raw())
    data = engine.load_data(p)
    s = {"S": 2, "E": 1, "N": 10, "R": 2}
    trained, real_train = [], engine.train
    monkeypatch.setattr(engine, "train", lambda q, *a, **k: trained.append(q.train.batch_size) or real_train(q, *a, **k))
    out = sweeps.train_one(p, data, s, 0, tmp_path, "fedavg", "mlp", 0.05)
    assert trained == [16] and (out / "fingerprint.txt").exists()
    assert sweeps.train_one(p, data, s, 0, tmp_path, "fedavg", "mlp", 0.05) == out and trained == [16]

    powers, real_power = [], sweeps.power_iteration
    monkeypatch.setattr(sweeps, "power_iteration", lambda *a, **k: powers.append(1) or real_power(*a, **k))
    first = sweeps.measure_one(p, data, out, s, "fedavg", 0.01, 0.05)
    assert sweeps.measure_one(p, data, out, s, "fedavg", 0.01, 0.05) == first and len(powers) == 1
    p.analysis.noise_batches += 1                              # another measurement setting: measured again
    sweeps.measure_one(p, data, out, s, "fedavg", 0.01, 0.05)
    assert len(powers) == 2

    q = validate(tiny_raw(batch_size=8))                       # the root train setting moved: trained again
    assert sweeps.train_one(q, data, s, 0, tmp_path, "fedavg", "mlp", 0.05) == out and trained == [16, 8]
    assert not (out / "analysis.json").exists()
    assert sweeps.train_one(q, data, s, 0, tmp_path, "fedavg", "mlp", 0.05) == out and trained == [16, 8]
