"""GAS and FSL-SAGE pinned against small float64 references and closed forms (docs/methods.md#split): GAS's
label statistics, staleness weight, logit adjustment, client steps, schedule and buffer; FSL-SAGE's cut
gradient, alignment and its interval, and the upload interval counted across rounds.
"""
import math

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from fedlib.algorithms.base import RoundInfo
from fedlib.algorithms.fslsage import alignment_loss, cut_gradient
from fedlib.algorithms.gas import LabelStats, logit_adjustment, staleness_weight
from fedlib.algorithms.split import draw_batches, draw_seed
from fedlib.seeding import derive_seed
from fedlib.zo import SeededDirections
from tests.split_helpers import ce, client, digits_federation, flat, make, shift, unflat


@pytest.fixture(scope="module")
def fed():
    return digits_federation()


# ----- GAS -----

def test_gas_label_statistics_are_weighted_moments():
    torch.manual_seed(0)
    z, y, w = torch.randn(40, 3), torch.randint(0, 2, (40,)), torch.rand(40) + 0.1
    for full in (False, True):
        st = LabelStats(3, 3, full)
        st.update(z[:15], y[:15], w[:15])                           # two updates = one update of all data
        st.update(z[15:], y[15:], w[15:])
        for c in range(2):
            zc, wc = z[y == c].double(), w[y == c].double()
            mean = (wc[:, None] * zc).sum(0) / wc.sum()
            d = zc - mean
            cov = (wc[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / wc.sum()
            torch.testing.assert_close(st.mean[c], mean)
            torch.testing.assert_close(st.covariance(c), cov if full else torch.diagonal(cov))
        assert st.weight[2] == 0
    gen = torch.Generator().manual_seed(0)
    draws = st.sample(0, 20000, gen)
    torch.testing.assert_close(draws.mean(0), st.mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), st.covariance(0), atol=0.04, rtol=0)


def test_gas_staleness_and_logit_adjustment():
    assert staleness_weight(5, 5, 1.0) == 1.0 and staleness_weight(7, 5, 1.0) == pytest.approx(1 / 3)
    assert staleness_weight(7, 5, 0.5) == pytest.approx(3 ** -0.5)
    adj = logit_adjustment(torch.tensor([0, 0, 0, 2]), 3, 2.0)
    torch.testing.assert_close(adj.double(), torch.tensor([2 * math.log(0.75), 2 * math.log(1e-8), 2 * math.log(0.25)],
                                                          dtype=torch.float64), rtol=1e-6, atol=1e-5)


def test_gas_fo_client_step_and_server_buffer(fed):
    """One client, first order: each step is SGD on the logit-adjusted loss through the frozen theta_s;
    once buffer_batches batches are buffered the server steps once, on them plus n_max - n_y generated
    activations for every label seen."""
    alg, x = make("gas", fed, model="mlp4", cut="fc2", client="fo", local_steps=2, buffer_batches=2, finish=1,
                  la_tau=1.0)
    got, results, _ = alg.run_round(x, [client(fed, 3)], RoundInfo(0, 0.1, x))
    cs, ss, n_c = alg.client_seg, alg.server_seg, alg.n_client
    ref_data = client(fed, 3)
    adjust = logit_adjustment(ref_data.y, 10, 1.0).double()
    th_c, th_s = unflat(x[:n_c], cs), unflat(x[n_c:], ss)
    labels = []
    for xb, yb in draw_batches(ref_data, 2, 16):
        leaves = {n: v.clone().requires_grad_() for n, v in th_c.items()}
        loss = ce(ss, th_s, functional_call(cs, leaves, (xb.double(),)), yb, adjust)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        th_c = {n: v - 0.1 * (g + 1e-3 * v) for (n, v), g in zip(th_c.items(), grads)}   # x - lr (G + wd x)
        labels.append(yb)
    ref = flat(th_c) - x[:n_c].double()
    assert ((got[:n_c] - x[:n_c]).double() - ref).norm() < 1e-4 * ref.norm()
    counts = torch.bincount(torch.cat(labels), minlength=10)
    assert alg.version == 1 and alg.buffer == []
    assert alg.generated == int(sum(counts.max() - c for c in counts if c > 0))
    assert not torch.allclose(got[n_c:], x[n_c:]) and len(results) == 1


def test_gas_zo_client_step_matches_reference(fed):
    """ZO client: theta_c <- theta_c - eta_c [l_LA(theta_c + mu u) - l_LA(theta_c - mu u)] / (2 mu) u,
    the loss through the current theta_s with the client's logit adjustment; theta_s untouched."""
    alg, x = make("gas", fed, model="mlp4", cut="fc2", client="zo", local_steps=1, buffer_batches=10, finish=1,
                  eta_c=0.05, mu=0.01, la_tau=0.5)
    got, _, _ = alg.run_round(x, [client(fed, 1)], RoundInfo(0, 0.1, x))
    cs, ss, n_c = alg.client_seg, alg.server_seg, alg.n_client
    data = client(fed, 1)
    (xb, yb), = draw_batches(data, 1, 16)
    u = SeededDirections(list(cs.parameters())).materialise(derive_seed(draw_seed(data), 0))
    th_c, th_s = unflat(x[:n_c], cs), unflat(x[n_c:], ss)
    adjust = logit_adjustment(data.y, 10, 0.5).double()
    loss = lambda th: ce(ss, th_s, functional_call(cs, th, (xb.double(),)), yb, adjust).item()
    g = (loss(shift(th_c, u, 0.01)) - loss(shift(th_c, u, -0.01))) / 0.02
    ref = flat(shift(th_c, u, -0.05 * g)) - x[:n_c].double()
    assert ref.norm() > 0 and ((got[:n_c] - x[:n_c]).double() - ref).norm() < 2e-3 * ref.norm()
    assert torch.equal(got[n_c:], x[n_c:]) and len(alg.buffer) == 1          # no server step yet


def test_gas_schedule_buffer_and_aggregation(fed):
    """ZO clients: theta_s moves only in server steps; the round ends when `finish` clients are done and
    only they are averaged; the smallest-clock client always goes next."""
    alg, x = make("gas", fed, model="mlp4", cut="fc2", client="zo", local_steps=2, buffer_batches=3, finish=2,
                  straggler_share=0.5, straggler_delay_s=5.0, system_seed=1)   # clients 0 and 2 straggle
    assert list(alg.slow) == [0, 2]
    order = []
    step = alg.client_step
    alg.client_step = lambda xb, yb, adj, lr, seed: (order.append(len(yb)), step(xb, yb, adj, lr, seed))[1]
    clients = [client(fed, k) for k in range(4)]
    got, results, metrics = alg.run_round(x, clients, RoundInfo(0, 0.1, x))
    assert len(results) == 2
    total_steps = len(order)
    assert alg.version == total_steps // 3 and len(alg.buffer) == total_steps % 3
    want = x[: alg.n_client] + torch.stack([r.delta for r in results]).mean(0)     # eta_g = 1 in make()
    torch.testing.assert_close(got[: alg.n_client], want)
    assert metrics["sim_round_s"] > 0
    assert 4 <= total_steps < 8                                       # not every client finished
    # the schedule, simulated: every step costs a + delay_k / h; the smallest clock (then id) goes next
    from fedlib import costs
    flops = alg.meter.records[("client", "zo", 16)].flops
    a = alg.system.client_s(flops) + alg.system.link_s(16 * 64 * 4 + 16 * 8)
    delay = {k: costs.straggler_delay(alg.system, 1, 0, k, alg.slow) / 2 for k in range(4)}
    assert len(set(delay.values())) > 1                                 # stragglers make the order uneven
    clock, steps, want, done = dict.fromkeys(range(4), 0.0), dict.fromkeys(range(4), 0), [], []
    while len(done) < 2:
        k = min((c for c in clock if steps[c] < 2), key=lambda c: (clock[c], c))
        want.append(k)
        clock[k] += a + delay[k]
        steps[k] += 1
        if steps[k] == 2:
            done.append(k)
    assert alg.schedule == want and sorted(r.k for r in results) == sorted(done)
    # the round lasts until the last of the `finish` clients is done (its model upload included)
    assert metrics["sim_round_s"] == pytest.approx(max(clock[k] for k in done)
                                                   + alg.system.link_s(2 * alg.client_model_bytes()))


# ----- FSL-SAGE -----

def test_fslsage_cut_gradient_is_closed_form_for_a_linear_head():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4)).double()
    z, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 3, 3, 2])
    W, b = head[1].weight, head[1].bias
    want = (torch.softmax(z @ W.T + b, 1) - F.one_hot(y, 4)) @ W         # d l_i/d z_i = W^T (p_i - e_{y_i})
    torch.testing.assert_close(cut_gradient(head, z, y), want.detach())
    target = torch.randn(5, 6, dtype=torch.float64)
    a = alignment_loss(head, z, y, target)
    torch.testing.assert_close(a.detach(), (want.detach() - target).pow(2).sum() / 5)
    (gw,) = torch.autograd.grad(a, [W])
    eps, E = 1e-6, torch.zeros_like(W)
    E[1, 2] = eps
    with torch.no_grad():
        W += E
    up = alignment_loss(head, z, y, target).item()
    with torch.no_grad():
        W -= 2 * E
    down = alignment_loss(head, z, y, target).item()
    assert gw[1, 2].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_fslsage_alignment_fits_the_head_to_the_server_cut_gradients(fed):
    """theta_a <- theta_a - lr dA/dtheta_a (align_steps times), A against the server's true cut gradients."""
    alg, x = make("fslsage", fed, model="mlp4", cut="fc2", align_steps=3, align_lr=0.5, align_batch=8)
    alg.worker.load(x)
    alg.aux_flat.copy_(alg.state["aux"])
    aux0 = alg.aux_flat.clone()
    alg.begin_local(client(fed, 2), RoundInfo(0, 0.1, x))
    data = client(fed, 2)
    idx = torch.randperm(len(data), generator=data.generator)[:8]
    xb, yb = data.x[idx], data.y[idx]
    cs, ss, head, n_c = alg.client_seg, alg.server_seg, alg.aux, alg.n_client
    z = functional_call(cs, unflat(x[:n_c], cs), (xb.double(),)).detach().requires_grad_()
    loss_s = F.cross_entropy(functional_call(ss, unflat(x[n_c:], ss), (z,)), yb, reduction="sum")
    (target,) = torch.autograd.grad(loss_s, z)                        # g_i = d l_i / d z_i at the server
    th = unflat(aux0, head)
    for _ in range(3):
        leaves = {n: v.clone().requires_grad_() for n, v in th.items()}
        zz = z.detach().requires_grad_()
        l_a = F.cross_entropy(functional_call(head, leaves, (zz,)), yb, reduction="sum")
        (g,) = torch.autograd.grad(l_a, zz, create_graph=True)
        a = (g - target).pow(2).sum() / 8
        grads = torch.autograd.grad(a, list(leaves.values()))
        th = {n: v - 0.5 * d for (n, v), d in zip(th.items(), grads)}
    ref = flat(th) - aux0.double()
    assert ref.norm() > 0 and ((alg.aux_flat - aux0).double() - ref).norm() < 1e-4 * ref.norm()


def test_fslsage_aligns_every_few_rounds_and_steps_the_server_every_k(fed):
    alg, x = make("fslsage", fed, model="mlp4", cut="fc2", local_steps=10, align_every=3, align_steps=4,
                  align_lr=0.5)
    aligned_rounds, x_r = [], x
    for r in range(4):
        x_r, _, m = alg.run_round(x_r, [client(fed, 0, r)], RoundInfo(r, 0.1, x_r))
        if "align_before" in m:
            aligned_rounds.append(r)
            assert m["align_after"] < m["align_before"]
            assert m["cut_bytes_down"] == 32 * 64 * 4               # the true cut gradients of 32 samples
        else:
            assert m["cut_bytes_down"] == 0
        assert m["cut_bytes_up"] == (10 // 5) * (16 * 64 * 4 + 16 * 8) + ("align_before" in m) * (32 * 64 * 4 + 32 * 8)
    assert aligned_rounds == [0, 3]
    # with alignment off in a round, the round equals CSE-FSL's with k = 5
    cse, _ = make("csefsl", fed, model="mlp4", cut="fc2", local_steps=10, upload_every=5)
    sage, _ = make("fslsage", fed, model="mlp4", cut="fc2", local_steps=10, align_every=3)
    a, _, _ = cse.run_round(x, [client(fed, 0, 1)], RoundInfo(1, 0.1, x))
    b, _, _ = sage.run_round(x, [client(fed, 0, 1)], RoundInfo(1, 0.1, x))
    torch.testing.assert_close(a, b)


def test_upload_interval_counts_a_clients_steps_across_rounds(fed):
    """k = 5 with h = 2 steps a round: the client uploads at its 5th and 10th step (rounds 3 and 5)."""
    alg, x = make("fslsage", fed, model="mlp4", cut="fc2", local_steps=2, upload_every=5, align_every=100)
    per_upload, align = 16 * 64 * 4 + 16 * 8, 32 * 64 * 4 + 32 * 8
    ups = []
    for r in range(6):
        x, _, m = alg.run_round(x, [client(fed, 2, r)], RoundInfo(r, 0.1, x))
        ups.append(m["cut_bytes_up"] - (align if r == 0 else 0))
    assert ups == [0, 0, per_upload, 0, per_upload, 0]
