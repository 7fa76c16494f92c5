"""Each split rule pinned against a small float64 reference written out of place (docs/methods.md#split):
MU-SplitFed and the auxiliary-head methods (CSE-FSL, HERON-SFL) here, GAS and FSL-SAGE in
test_split_rules_gas_fslsage.py.

A one-line change in a method (the sign of a step, which parameters are perturbed, the upload
interval k, the number tau of server steps, the delta scalar, eta_g) moves its round away from these references.
"""
import pytest
import torch
from torch.func import functional_call

from fedlib.algorithms.base import RoundInfo
from fedlib.algorithms.split import draw_batches, draw_seed
from fedlib.seeding import derive_seed
from fedlib.zo import SeededDirections
from tests.split_helpers import ce, client, digits_federation, flat, make, shift, unflat


@pytest.fixture(scope="module")
def fed():
    return digits_federation()


# ----- MU-SplitFed -----

def musplitfed_reference(alg, x, clients, hp):
    """tau ZO (or FO) server steps on h, delta at theta_s^tau on h+-, client step, eta_g aggregation."""
    cs, ss, n_c = alg.client_seg, alg.server_seg, alg.n_client
    new = []
    for data in clients:
        (xb, yb), = draw_batches(data, 1, alg.train.batch_size)
        sc = draw_seed(data)
        server_seeds = [draw_seed(data) for _ in range(hp.tau)]
        th_c, th_s = unflat(x[:n_c], cs), unflat(x[n_c:], ss)
        u_c = SeededDirections(list(cs.parameters())).materialise(derive_seed(sc, 0))
        h = functional_call(cs, th_c, (xb.double(),)).detach()
        h_p = functional_call(cs, shift(th_c, u_c, hp.lam), (xb.double(),)).detach()
        h_m = functional_call(cs, shift(th_c, u_c, -hp.lam), (xb.double(),)).detach()
        for s in server_seeds:
            if hp.server == "fo":
                th = {n: t.clone().requires_grad_() for n, t in th_s.items()}
                grads = torch.autograd.grad(ce(ss, th, h, yb), list(th.values()))
                th_s = {n: t - hp.eta_s * g for (n, t), g in zip(th_s.items(), grads)}
            else:
                u_s = SeededDirections(list(ss.parameters())).materialise(derive_seed(s, 0))
                g = (ce(ss, shift(th_s, u_s, hp.lam), h, yb) - ce(ss, shift(th_s, u_s, -hp.lam), h, yb)) / (2 * hp.lam)
                th_s = shift(th_s, u_s, -hp.eta_s * g.item())                       # theta_s - eta_s G_s
        delta = (ce(ss, th_s, h_p, yb) - ce(ss, th_s, h_m, yb)).item()             # the scalar sent back
        th_c = shift(th_c, u_c, -hp.eta_c * delta / (2 * hp.lam))                  # theta_c - eta_c delta/(2 lam) u_c
        new.append(torch.cat([flat(th_c), flat(th_s)]))
    x64 = x.double()
    return x64 + hp.eta_g * (torch.stack(new) - x64).mean(0)


@pytest.mark.parametrize("cut,tau,server", [("fc1", 3, "zo"), ("fc2", 2, "zo"), ("fc3", 4, "fo")])
def test_musplitfed_round_matches_reference(fed, cut, tau, server):
    alg, x = make("musplitfed", fed, model="mlp4", cut=cut, tau=tau, server=server, eta_s=0.2, eta_c=0.1,
                  lam=0.01, eta_g=0.7)
    cl = [client(fed, 0), client(fed, 2)]
    got, _, _ = alg.run_round(x, cl, RoundInfo(0, 0.1, x))
    want = musplitfed_reference(alg, x, [client(fed, 0), client(fed, 2)], alg.hp)
    step, ref = (got - x).double(), want - x.double()
    assert ref[: alg.n_client].norm() > 0 and ref[alg.n_client:].norm() > 0
    assert (step - ref).norm() < 2e-3 * ref.norm()
    # tau - 1 server steps is far from the reference
    fewer, _ = make("musplitfed", fed, model="mlp4", cut=cut, tau=tau - 1, server=server, eta_s=0.2, eta_c=0.1,
                    lam=0.01, eta_g=0.7)
    other = (fewer.run_round(x, [client(fed, 0), client(fed, 2)], RoundInfo(0, 0.1, x))[0] - x).double()
    assert (other - ref).norm() > 20 * (step - ref).norm()


def test_musplitfed_forwards_restore_the_client(fed):
    alg, x = make("musplitfed", fed, model="mlp4", cut="fc2", lam=0.01)
    alg.worker.load(x)
    data = client(fed, 1)
    (xb, _), = draw_batches(data, 1, 16)
    passes = []
    add = alg.zo_client.u.add_
    alg.zo_client.u.add_ = lambda seed, alpha: (passes.append(alpha / 0.01), add(seed, alpha))
    h, pairs = alg.client_forwards(xb, 123)
    assert passes == [1.0, -2.0, 1.0]                                   # MeZO's three noise passes, q = 1
    assert (alg.worker.flat - x).abs().max() < 1e-6                     # perturb, evaluate, restore
    (h_plus, h_minus), = pairs
    th = unflat(x[: alg.n_client], alg.client_seg)
    u = SeededDirections(list(alg.client_seg.parameters())).materialise(derive_seed(123, 0))
    for got, a in ((h, 0.0), (h_plus, 0.01), (h_minus, -0.01)):         # h = f_c(theta_c), h+- = f_c(theta_c +- lam u)
        want = functional_call(alg.client_seg, shift(th, u, a), (xb.double(),))
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ----- CSE-FSL and HERON-SFL: local steps, upload every k, one server step per upload -----

def aux_reference(alg, x, aux0, data, lr, zo):
    """One client of CSE-FSL (first order) or HERON (zo, forward differences over (theta_c, theta_a))."""
    hp, t = alg.hp, alg.train
    cs, ss, head, n_c = alg.client_seg, alg.server_seg, alg.aux, alg.n_client
    th_c, th_s, th_a = unflat(x[:n_c], cs), unflat(x[n_c:], ss), unflat(aux0, head)
    batches = draw_batches(data, hp.local_steps, t.batch_size)
    params = list(cs.parameters()) + list(head.parameters())

    def local_loss(c, a, xb, yb):
        return ce(head, a, functional_call(cs, c, (xb.double(),)), yb)

    def sgd(named, grads):                                          # x - lr (clip(G) + wd x)
        norm = torch.cat([g.reshape(-1) for g in grads]).norm()
        scale = t.clip / (norm + 1e-6) if norm > t.clip else 1.0
        return {n: v - lr * (scale * g + t.weight_decay * v) for (n, v), g in zip(named.items(), grads)}

    servers = 0
    for b, (xb, yb) in enumerate(batches):
        z = functional_call(cs, th_c, (xb.double(),)).detach()      # base-point smashed data
        if zo:
            u = SeededDirections(params).materialise(derive_seed(draw_seed(data), 0))
            u_c, u_a = u[: len(th_c)], u[len(th_c):]
            l0 = local_loss(th_c, th_a, xb, yb)
            l1 = local_loss(shift(th_c, u_c, hp.mu), shift(th_a, u_a, hp.mu), xb, yb)
            g = ((l1 - l0) / hp.mu).item()                          # g_hat = ((l1 - l0)/mu) u
            th_c, th_a = shift(th_c, u_c, -hp.eta_c * g), shift(th_a, u_a, -hp.eta_c * g)
        else:
            both = {**{("c", n): v for n, v in th_c.items()}, **{("a", n): v for n, v in th_a.items()}}
            leaves = {k: v.clone().requires_grad_() for k, v in both.items()}
            loss = local_loss({n: leaves[("c", n)] for n in th_c}, {n: leaves[("a", n)] for n in th_a}, xb, yb)
            stepped = sgd(both, torch.autograd.grad(loss, list(leaves.values())))
            th_c = {n: stepped[("c", n)] for n in th_c}
            th_a = {n: stepped[("a", n)] for n in th_a}
        if (b + 1) % hp.upload_every == 0:                           # every k steps: one server step on (z, y)
            leaves = {n: v.clone().requires_grad_() for n, v in th_s.items()}
            th_s = sgd(th_s, torch.autograd.grad(ce(ss, leaves, z, yb), list(leaves.values())))
            servers += 1
    return flat(th_c), flat(th_a), flat(th_s), servers


@pytest.mark.parametrize("method,steps,k", [("heron", 3, 2), ("csefsl", 5, 2), ("heron", 4, 4)])
def test_aux_head_methods_match_reference(fed, method, steps, k):
    kw = dict(eta_c=0.05, mu=0.01) if method == "heron" else {}
    alg, x = make(method, fed, model="mlp4", cut="fc2", local_steps=steps, upload_every=k, **kw)
    alg.train.clip = 2.0                                             # the clip is active in the FO steps
    aux0 = alg.state["aux"].clone()
    got, _, metrics = alg.run_round(x, [client(fed, 1)], RoundInfo(0, 0.1, x))
    c, a, s, servers = aux_reference(alg, x, aux0, client(fed, 1), 0.1, zo=method == "heron")
    assert servers == steps // k
    n_c = alg.n_client
    for got_part, ref, base in ((got[:n_c], c, x[:n_c]), (alg.state["aux"], a, aux0), (got[n_c:], s, x[n_c:])):
        ref_step = ref - base.double()
        assert ref_step.norm() > 0
        assert ((got_part.double() - base.double()) - ref_step).norm() < 2e-3 * ref_step.norm()
    assert metrics["cut_bytes_up"] == servers * (16 * 64 * 4 + 16 * 8)      # (z, y) only at uploads
