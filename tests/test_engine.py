import filecmp

import numpy as np
import pytest
import torch

from fedlib import engine
from fedlib.algorithms.base import ClientData, ClientResult, RoundInfo, mean_delta
from fedlib.config import validate
from fedlib.engine import DivergenceError, sample_clients
from fedlib.models import build_model
from tests.conftest import tiny_raw


def test_sampling_exactly_s_distinct_and_seeded():
    a = sample_clients(0, 5, 100, 10)
    assert len(a) == 10 and len(set(a)) == 10 and a.max() < 100
    assert np.array_equal(a, sample_clients(0, 5, 100, 10))
    assert not np.array_equal(a, sample_clients(0, 6, 100, 10))
    assert not np.array_equal(a, sample_clients(1, 5, 100, 10))
    counts = np.bincount(np.concatenate([sample_clients(0, r, 20, 5) for r in range(400)]), minlength=20)
    assert counts.min() > 60 and counts.max() < 140        # each client ~100 of 400 rounds


def _results(*deltas):
    return [ClientResult(k, torch.tensor(d, dtype=torch.float32), 1, 1, 0.0) for k, d in enumerate(deltas)]


def test_fedavg_and_fedavgm_aggregation_by_hand(digits_fed):
    p = validate(tiny_raw(server_lr=0.5))
    alg, x0 = engine.make_algorithm(p, "fedavg", digits_fed, 0)
    x = torch.tensor([1.0, 2.0])
    info = RoundInfo(0, 0.1, x)
    assert torch.equal(mean_delta(_results([1, 2], [3, -4])), torch.tensor([2.0, -1.0]))
    new, _ = alg.server_update(x, _results([1, 2], [3, -4]), info)
    assert torch.allclose(new, torch.tensor([2.0, 1.5]))            # x + 0.5 * mean
    m, _ = engine.make_algorithm(validate({**tiny_raw(), "methods": {"fedavgm": {"beta": 0.5}}}), "fedavgm",
                                 digits_fed, 0)
    x1, _ = m.server_update(x, _results([2, 0]), info)               # v = [2, 0]
    x2, _ = m.server_update(x1, _results([0, 2]), info)              # v = 0.5*[2,0] + [0,2] = [1, 2]
    assert torch.allclose(x1, torch.tensor([3.0, 2.0])) and torch.allclose(x2, torch.tensor([4.0, 4.0]))


@pytest.mark.parametrize("clip", [10.0, 0.05])
def test_one_client_one_step_is_one_sgd_step(digits_fed, clip):
    """FedAvg with one client taking one step equals torch's SGD (with weight decay) on that batch,
    after global-norm clipping of the gradient."""
    p = validate(tiny_raw(lr=0.1, weight_decay=0.01, clip=clip, batch_size=10_000, server_lr=1.0))
    alg, x0 = engine.make_algorithm(p, "fedavg", digits_fed, 0)
    data = ClientData(3, digits_fed.client_x[3], digits_fed.client_y[3], torch.Generator().manual_seed(0))
    x1, results, _ = alg.run_round(x0, [data], RoundInfo(0, 0.1, x0))
    assert results[0].steps == 1

    ref = build_model("mlp", (1, 8, 8), 10, seed=0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.01)
    torch.nn.functional.cross_entropy(ref(data.x), data.y).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
    opt.step()
    expected = torch.cat([q.detach().reshape(-1) for q in ref.parameters()])
    assert torch.allclose(x1, expected, atol=1e-6)


def test_local_steps_and_batches(digits_fed):
    data = ClientData(0, digits_fed.client_x[0], digits_fed.client_y[0], torch.Generator().manual_seed(1))
    batches = list(data.batches(2, 16))
    assert len(batches) == data.num_steps(2, 16)
    seen = torch.cat([y for _, y in batches[: len(batches) // 2]])
    assert sorted(seen.tolist()) == sorted(data.y.tolist())          # one epoch = every sample once


def _run(tmp_path, name, **train):
    p = validate(tiny_raw(**train))
    out = tmp_path / name
    return engine.train(p, "fedavgm", 0, out, fed=_FED, progress=False, model_dir=out / "models"), out


@pytest.fixture(autouse=True)
def _fed(digits_fed):
    global _FED
    _FED = digits_fed


def test_deterministic_metrics(tmp_path):
    _, a = _run(tmp_path, "a")
    _, b = _run(tmp_path, "b")
    assert filecmp.cmp(a / "metrics.csv", b / "metrics.csv", shallow=False)


def test_resume_equals_uninterrupted(tmp_path):
    full, a = _run(tmp_path, "a", rounds=6, snapshot_rounds=[0, 2])
    p = validate(tiny_raw(rounds=6, snapshot_rounds=[0, 2]))
    out = tmp_path / "b"
    engine.train(p, "fedavgm", 0, out, fed=_FED, progress=False, stop_after=3)     # "killed" after round 3
    assert (out / "checkpoint.pt").exists()
    resumed = engine.train(p, "fedavgm", 0, out, fed=_FED, progress=False, model_dir=out / "models")
    assert filecmp.cmp(a / "metrics.csv", out / "metrics.csv", shallow=False)
    assert resumed["final_accuracy"] == full["final_accuracy"]
    ma, mb = engine.load_models(a / "models" / "models.pt"), engine.load_models(out / "models" / "models.pt")
    assert torch.equal(ma["final"], mb["final"]) and sorted(mb["snapshots"]) == [0, 2]
    assert all(torch.equal(ma["snapshots"][r], mb["snapshots"][r]) for r in (0, 2))


def test_checkpoint_of_other_params_is_not_reused(tmp_path):
    p = validate(tiny_raw(rounds=4))
    out = tmp_path / "c"
    engine.train(p, "fedavgm", 0, out, fed=_FED, progress=False, stop_after=2)
    q = validate(tiny_raw(rounds=4, lr=0.02))
    engine.train(q, "fedavgm", 0, out, fed=_FED, progress=False)
    _, ref = _run(tmp_path, "ref", rounds=4, lr=0.02)
    assert filecmp.cmp(ref / "metrics.csv", out / "metrics.csv", shallow=False)


def test_divergence_stops_with_message_and_keeps_good_state(tmp_path, monkeypatch):
    from fedlib.algorithms.fedavg import FedAvg
    real = FedAvg.client_update

    def poisoned(self, data, info):          # the loss turns NaN in round 3
        res = real(self, data, info)
        res.loss = float("nan") if info.r == 2 else res.loss
        return res

    monkeypatch.setattr(FedAvg, "client_update", poisoned)
    p = validate(tiny_raw(rounds=6))
    out = tmp_path / "nan"
    with pytest.raises(DivergenceError, match=r"diverged in round 3.*last good checkpoint"):
        engine.train(p, "fedavg", 0, out, fed=_FED, progress=False)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["round"] == 2 and torch.isfinite(ck["x"]).all()
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_summary_by_hand():
    rows = [{"round": str(r), "test_accuracy": a, "test_loss": "0.5", "bytes_up": "10", "bytes_down": "20"}
            for r, a in [(1, "0.5"), (2, ""), (3, "0.85"), (4, "0.8")]]
    timing = [{"train_s": "1.0", "eval_s": "0.5"}] * 4
    s = engine.summarise(rows, timing, [0.8, 0.9])
    assert s["final_accuracy"] == 0.8 and s["best_accuracy"] == 0.85 and s["best_round"] == 3
    assert s["rounds_to_target"] == {"0.8": 3, "0.9": None}
    assert s["last10_accuracy"] == pytest.approx((0.5 + 0.85 + 0.8) / 3)
    assert s["bytes_up"] == 40 and s["total_seconds"] == 6.0


def test_logged_train_loss_and_grad_sq_match_a_float64_reference(tmp_path, digits_fed):
    """Each row's train_loss and grad_sq are f(x_r) and ||grad f(x_r)||^2 on the fixed train-loss set (one pass),
    for any eval chunk size; checked against autograd in float64 at the saved final model."""
    from torch.func import functional_call

    rows = {}
    for chunk in (7, 1000):
        p = validate(tiny_raw(rounds=2, grad_norm_every=1, train_loss_samples=60, eval_batch_size=chunk))
        s = engine.train(p, "fedavg", 0, tmp_path / str(chunk), fed=digits_fed, model_dir=tmp_path / f"m{chunk}")
        rows[chunk] = engine._read_csv(tmp_path / str(chunk) / "metrics.csv")[-1]
        assert s["final_accuracy"] == float(rows[chunk]["test_accuracy"])
    saved = engine.load_models(tmp_path / "m7" / "models.pt")
    model = build_model(p.train.model, digits_fed.data.input_shape, digits_fed.data.num_classes).double().eval()
    idx = torch.randperm(len(digits_fed.data.y_train), generator=torch.Generator().manual_seed(p.data.seed))[:60]
    xs, ys = digits_fed.data.x_train[idx].double(), digits_fed.data.y_train[idx]
    names = [n for n, _ in model.named_parameters()]
    flat = saved["final"].double().requires_grad_(True)
    params, i = {}, 0
    for n, q in model.named_parameters():
        params[n] = flat[i:i + q.numel()].view_as(q)
        i += q.numel()
    assert i == flat.numel() and names
    f = torch.nn.functional.cross_entropy(functional_call(model, params, (xs,)), ys)
    g, = torch.autograd.grad(f, flat)
    for chunk, row in rows.items():
        assert abs(float(row["train_loss"]) - f.item()) < 1e-5 * max(1.0, f.item()), chunk
        assert abs(float(row["grad_sq"]) - g.pow(2).sum().item()) < 1e-4 * g.pow(2).sum().item(), chunk
