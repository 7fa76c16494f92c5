"""Split methods (fedlib/algorithms/{split,splitfed,csefsl,heron,musplitfed}.py) at limiting settings."""
from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from fedlib import config, engine, partition
from fedlib.algorithms.base import RoundInfo, derive_seed
from fedlib.algorithms.split import draw_batches, draw_seed
from fedlib.models import build_model
from tests.split_helpers import client, make_split
from fedlib.zo import SeededDirections


@pytest.fixture(scope="module")
def fed():
    data = engine.load_dataset("digits")
    return engine.federate(data, partition.make_partition(data.y_train.numpy(), "iid", 4, seed=0))


def make(method, fed, model="mlp", cut="fc1", **hp):
    return make_split(method, fed, model, cut, **hp)



@pytest.mark.parametrize("model,cuts", [("cnn", ("conv1", "conv2", "fc1")), ("mlp", ("fc1", "fc2"))])
def test_client_then_server_segment_is_the_model(model, cuts):
    m = build_model(model, (1, 28, 28), 10)
    x = torch.randn(6, 1, 28, 28)
    for cut in cuts:
        c, s = m.split(cut)
        assert torch.equal(s(c(x)), m(x))


def test_splitfed_v2_one_client_is_centralised_sgd(fed):
    alg, x = make("splitfed_v2", fed, local_steps=4)
    x_next, _, metrics = alg.run_round(x, [client(fed, 1)], RoundInfo(0, 0.1, x))
    # centralised SGD on the same batches: x <- x - lr (grad + wd x)
    ref = build_model("mlp", fed.data.input_shape, fed.data.num_classes, seed=0)
    params = list(ref.parameters())
    for xb, yb in draw_batches(client(fed, 1), 4, 16):
        ref.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        with torch.no_grad():
            for p in params:
                p.sub_(0.1 * (p.grad + 1e-3 * p))
    torch.testing.assert_close(x_next, torch.cat([p.detach().reshape(-1) for p in params]), rtol=1e-5, atol=1e-6)
    assert metrics["cut_bytes_up"] == 4 * (16 * 200 * 4 + 16 * 8)       # z (16 x 200 floats) and y per step
    assert metrics["cut_bytes_down"] == 4 * 16 * 200 * 4                 # dl/dz


def test_splitfed_v1_is_fedavg_of_full_models(fed):
    """v1 (a server copy per client) moves every client's full model independently; v2 chains the server."""
    a1, x = make("splitfed_v1", fed, local_steps=2)
    a2, _ = make("splitfed_v2", fed, local_steps=2)
    one = [a1.run_round(x, [client(fed, k)], RoundInfo(0, 0.1, x))[0] - x for k in (0, 2)]
    both, _, _ = a1.run_round(x, [client(fed, 0), client(fed, 2)], RoundInfo(0, 0.1, x))
    torch.testing.assert_close(both, x + (one[0] + one[1]) / 2)
    chained, _, _ = a2.run_round(x, [client(fed, 0), client(fed, 2)], RoundInfo(0, 0.1, x))
    assert not torch.allclose(chained[a2.n_client:], both[a1.n_client:])


def vanilla_zo_splitfed(alg, x, clients, hp):
    """Reference ZO-SplitFed round written out of place: u from the same seeds, tau = 1."""
    cseg, sseg = alg.client_seg, alg.server_seg
    names_c = [n for n, _ in cseg.named_parameters()]
    names_s = [n for n, _ in sseg.named_parameters()]
    n_c = alg.n_client
    deltas = []
    for data in clients:
        (xb, yb), = draw_batches(data, 1, 16)
        sc, ss = draw_seed(data), draw_seed(data)
        theta_c = list(torch.split(x[:n_c], [p.numel() for p in cseg.parameters()]))
        theta_c = [t.view_as(p) for t, p in zip(theta_c, cseg.parameters())]
        theta_s = [t.view_as(p) for t, p in zip(torch.split(x[n_c:], [p.numel() for p in sseg.parameters()]),
                                                 sseg.parameters())]
        u_c = SeededDirections(list(cseg.parameters())).materialise(derive_seed(sc, 0))
        u_s = SeededDirections(list(sseg.parameters())).materialise(derive_seed(ss, 0))
        fc = lambda th: functional_call(cseg, dict(zip(names_c, th)), (xb,))
        fs = lambda th, h: F.cross_entropy(functional_call(sseg, dict(zip(names_s, th)), (h,)), yb).item()
        shift = lambda th, u, a: [torch.add(t, v, alpha=a) for t, v in zip(th, u)]
        with torch.no_grad():
            h = fc(theta_c)
            h_plus, h_minus = fc(shift(theta_c, u_c, hp.lam)), fc(shift(theta_c, u_c, -hp.lam))
            g_s = (fs(shift(theta_s, u_s, hp.lam), h) - fs(shift(theta_s, u_s, -hp.lam), h)) / (2 * hp.lam)
            theta_s = shift(theta_s, u_s, -hp.eta_s * g_s)                       # theta_s - eta_s G_s
            delta = fs(theta_s, h_plus) - fs(theta_s, h_minus)
            theta_c = shift(theta_c, u_c, -hp.eta_c * delta / (2 * hp.lam))     # theta_c - eta_c delta/(2 lam) u_c
        deltas.append(torch.cat([t.reshape(-1) for t in theta_c + theta_s]) - x)
    return x + hp.eta_g * torch.stack(deltas).mean(0)


def test_musplitfed_tau1_is_vanilla_zo_splitfed(fed):
    alg, x = make("musplitfed", fed, tau=1, eta_s=0.05, eta_c=0.05)
    got, _, metrics = alg.run_round(x, [client(fed, 0), client(fed, 3)], RoundInfo(0, 0.1, x))
    want = vanilla_zo_splitfed(alg, x, [client(fed, 0), client(fed, 3)], alg.hp)
    assert not torch.allclose(got, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert metrics["cut_bytes_down"] == 2 * 4                          # one float32 scalar per client
    alg2, _ = make("musplitfed", fed, tau=2, eta_s=0.05, eta_c=0.05)
    assert not torch.allclose(alg2.run_round(x, [client(fed, 0), client(fed, 3)], RoundInfo(0, 0.1, x))[0], want)


def test_heron_client_is_zeroth_order_and_cheaper(fed):
    heron, x = make("heron", fed, model="cnn", cut="conv2", local_steps=2)
    cse, _ = make("csefsl", fed, model="cnn", cut="conv2", local_steps=2)
    _, _, mh = heron.run_round(x, [client(fed, 0)], RoundInfo(0, 0.1, x))
    _, _, mc = cse.run_round(x, [client(fed, 0)], RoundInfo(0, 0.1, x))
    assert heron.client_memory()["grads"] == 0 and cse.client_memory()["grads"] > 0
    assert heron.client_memory()["total"] < cse.client_memory()["total"]
    assert mh["client_flops_per_step"] < mc["client_flops_per_step"]
    assert mh["cut_bytes_down"] == mc["cut_bytes_down"] == 0           # no gradient downlink


@pytest.mark.parametrize("method", ["heron", "musplitfed", "splitfed_v1"])
def test_split_run_resumes_to_the_same_metrics(tmp_path, fed, method):
    raw = {"data": {"dataset": "digits"}, "partition": {"scheme": "iid", "num_clients": 4},
           "train": {"methods": [method], "model": "mlp", "rounds": 4, "clients_per_round": 2, "batch_size": 16,
                     "eval_every": 2, "checkpoint_every": 1, "train_loss_samples": 50},
           "methods": {method: {"cut": "fc1"}}}
    p = config.validate(raw)
    full = engine.train(p, method, 0, tmp_path / "a", fed=fed, progress=False)
    engine.train(p, method, 0, tmp_path / "b", fed=fed, progress=False, stop_after=2)
    resumed = engine.train(p, method, 0, tmp_path / "b", fed=fed, progress=False)
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    assert full["final_accuracy"] == resumed["final_accuracy"]


def test_bad_cut_is_named():
    with pytest.raises(config.ParamsError, match="methods.heron.cut"):
        config.validate({"methods": {"heron": {"cut": "conv9"}}})
    with pytest.raises(ValueError, match="unknown cut point 'conv1'"):
        make("csefsl", SimpleNamespace(data=SimpleNamespace(input_shape=(1, 8, 8), num_classes=10), num_clients=4,
                                       client_y=[0] * 4), model="mlp", cut="conv1")


def test_split_params_build_the_engine_params_from_the_split_section():
    from fedlib.stages import split as stages

    p = config.validate({"split": {"rounds": 7, "batch_size": 8, "local_steps": 3, "cut": "conv1",
                                   "straggler_delay_s": 2.5}})
    q = stages.split_params(p, "heron", 1)
    assert (q.train.rounds, q.train.batch_size, q.partition.num_clients) == (7, 8, p.split.num_clients)
    assert (q.methods.heron.cut, q.methods.heron.local_steps, q.methods.heron.straggler_delay_s) == ("conv1", 3, 2.5)
    assert q.methods.heron.system_seed == 1 and p.train.rounds != 7          # p itself is untouched
    mu = stages.split_params(p, "musplitfed", 0, cut="conv2", tau=3)
    assert (mu.methods.musplitfed.cut, mu.methods.musplitfed.tau) == ("conv2", 3)
    assert not hasattr(mu.methods.musplitfed, "local_steps")                 # one batch per round
    assert engine.run_fingerprint(mu, "musplitfed", 0) != engine.run_fingerprint(
        stages.split_params(p, "musplitfed", 0, cut="conv2", tau=2), "musplitfed", 0)


def test_mu_study_picks_the_best_run_that_did_not_diverge(tmp_path, monkeypatch):
    import json

    from fedlib.stages import mu_study

    monkeypatch.setattr(mu_study, "OUT", tmp_path)
    p = config.validate({"mu_study": {"grid_eta_s": [0.01, 0.1], "grid_eta_c": [0.03]}})
    for es, best, div in ((0.01, 0.40, None), (0.1, 0.45, 300)):          # the better one diverged
        d = tmp_path / f"grid/eta_s{es:g}-eta_c0.03"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"final_accuracy": best, "best_accuracy": best,
                                                    "diverged_round": div}))
        (d / "metrics.csv").write_text("round,test_accuracy\n10,\n20,0.2\n30,0.41\n")
    assert mu_study.choose(p)["chosen"] == {"eta_s": 0.01, "eta_c": 0.03}
    from fedlib.stages.mu_report import rounds_to
    assert rounds_to(tmp_path / "grid/eta_s0.01-eta_c0.03", 0.4) == 30
    assert rounds_to(tmp_path / "grid/eta_s0.01-eta_c0.03", 0.5) is None


def test_mu_report_counts_only_runs_finished_at_the_current_params(tmp_path, monkeypatch):
    import json

    import numpy as np

    from fedlib.stages import mu_report, mu_study

    for mod in (mu_study, mu_report):
        monkeypatch.setattr(mod, "OUT", tmp_path)
    monkeypatch.setattr(mu_report, "split_federation", lambda p: None)
    monkeypatch.setattr(mu_report, "stragglers", lambda p, table, eta, fed: {"table": table})
    monkeypatch.setattr(mu_report, "stragglers_markdown", lambda out, m: "")
    monkeypatch.setattr(mu_report, "plot", lambda p, out: None)
    p = config.validate({"mu_study": {"cuts": ["fc2"], "taus": [1, 2], "seeds": [0, 1, 2], "rounds": 40,
                                      "eval_every": 10, "target_accuracy": 0.5}})
    eta = {"eta_s": 0.003, "eta_c": 0.002}
    (tmp_path / "grid.json").write_text(json.dumps({"chosen": eta}))
    accs = {0: [0.3, 0.45, 0.55, 0.65], 1: [0.2, 0.3, 0.62, 0.7], 2: [0.1, 0.2, 0.3, 0.35]}
    for tau in (1, 2):
        for seed, acc in accs.items():
            d = tmp_path / f"runs/fc2-tau{tau}-seed{seed}"
            d.mkdir(parents=True)
            d.joinpath("metrics.csv").write_text("round,test_accuracy\n" + "".join(
                f"{10 * (i + 1)},{a}\n" for i, a in enumerate(acc)))
            fp = engine.run_fingerprint(mu_study.study_params(p, "fc2", tau, seed, 40, eta), "musplitfed", seed)
            stale = tau == 2 and seed == 1                                   # made with other params: left out
            d.joinpath("summary.json").write_text(json.dumps({"best_accuracy": max(acc), "fingerprint":
                                                              "old" if stale else fp}))
    out = mu_report.report(p)
    c1, c2 = out["table"]["fc2-tau1"], out["table"]["fc2-tau2"]
    assert c1["rounds_to_target"] == [30, 30, None] and c1["reached"] == 2 and c1["seeds_done"] == 3
    assert c2["rounds_to_target"] == [30, None, None] and c2["seeds_done"] == 2      # seed 1 stale, aligned by seed
    assert c1["rounds_to_target_mean"] == 30 and c1["rounds_to_0.4_mean"] == 25 and c1["reached_0.6"] == 2
    assert c1["last10_accuracy_mean"] == pytest.approx(np.mean([np.mean(a) for a in accs.values()]))
    md = (tmp_path / "tau_cut.md").read_text()
    assert "| fc2 | 1 | 3/3 | 0 | 30 ± 0 (2/3) | 25 | 35 |" in md and "| fc2 | 2 | 2/3 |" in md


def test_the_committed_heron_study_runs_match_the_code_that_would_rebuild_them():
    """Every run in results/studies/heron/runs carries the fingerprint the current code computes for it, so
    `dvc repro notebooks/studies/dvc.yaml` reuses them (a change to the split stage's settings, e.g. the
    per-round gradient norm split_params turns off, must not silently orphan the committed study)."""
    import json

    from fedlib.stages import heron_study

    p = config.load_params("params.yaml")
    runs = [(heron_study.run_dir(name, seed) / "summary.json", method, over, seed)
            for name, method, over in heron_study.configs(p) for seed in p.heron_study.seeds]
    assert all(f.exists() for f, *_ in runs)
    for f, method, over, seed in runs:
        fp = engine.run_fingerprint(heron_study.run_params(p, method, over, seed), method, seed)
        assert json.loads(f.read_text())["fingerprint"] == fp, f
