"""Measured costs (fedlib/costs.py): FLOPs against closed forms, bytes against tensor sizes,
one memory accounting for zeroth- and first-order client steps (fedlib/memory.py), the round-time rules."""
import torch
from torch import nn

from fedlib import costs
from fedlib.models import cnn
from fedlib.zo import ZOEstimator


def test_linear_flops_closed_form():
    lin, x = nn.Linear(30, 7), torch.randn(5, 30)
    _, fwd = costs.count_flops(lambda: lin(x))
    assert fwd == 2 * 5 * 30 * 7                        # 2 B n_in n_out
    _, both = costs.count_flops(lambda: lin(x.requires_grad_()).sum().backward())
    assert both == 3 * fwd                              # + grad input + grad weight


def test_conv_flops_closed_form():
    conv, x = nn.Conv2d(3, 8, 5), torch.randn(4, 3, 12, 12)
    _, fwd = costs.count_flops(lambda: conv(x))
    assert fwd == 2 * 4 * 8 * 8 * 8 * 3 * 5 * 5       # 2 B C_out H_out W_out C_in k^2


def test_bytes_match_tensor_sizes():
    z, y = torch.zeros(32, 64, 4, 4), torch.zeros(32, dtype=torch.long)
    assert costs.nbytes(z, y) == 32 * 64 * 16 * 4 + 32 * 8
    t = costs.Traffic(cut_up=10, cut_down=3, model_up=5, model_down=7)
    assert (t.up, t.down) == (15, 10)
    assert costs.round_traffic([t, t]) == {"cut_bytes_up": 20, "cut_bytes_down": 6, "model_bytes_up": 10,
                                           "model_bytes_down": 14}


def test_one_accounting_zo_client_below_fo_for_the_same_segment_and_batch():
    """The same meter measures both steps whole; the ZO step holds the widest activation but neither
    gradients nor autograd's saved tensors."""
    client, _ = cnn((1, 28, 28), 10).split("conv2")
    params = list(client.parameters())
    x = torch.randn(32, 1, 28, 28)
    meter = costs.Meter(resident=lambda key, grad: params + ([p.grad for p in params] if grad else []))

    def fo_step():
        client(x).square().mean().backward()
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-0.1)

    est = ZOEstimator(params, 1e-3)

    def zo_step():
        with torch.no_grad():
            est.step_(est.estimate(lambda: float(client(x).square().mean()), 0), 1e-3)

    fo_step()                                                           # gradients exist: resident
    _, fo = meter.step(("client", "fo", 32), fo_step, grad=True)
    _, zo = meter.step(("client", "zo", 32), zo_step, grad=False)
    p_bytes, conv1_out = costs.nbytes(*params), 32 * 32 * 24 * 24 * 4
    assert fo.memory.resident == 2 * p_bytes and zo.memory.resident == p_bytes
    assert conv1_out <= zo.activation_bytes < fo.activation_bytes
    assert zo.peak_bytes < fo.peak_bytes
    assert meter.client_peak() is fo


def test_round_time_rules():
    fast = costs.ClientTimeline(client_s=1.0, link_s=0.5, server_s=0.25)
    assert costs.round_s([fast, fast], [0.0, 2.0]) == 3.75                      # slowest client
    assert costs.round_s([fast, fast], [0.0, 0.0], serial_server=True) == 1.5 + 0.5
    mu = costs.ClientTimeline(client_s=1.0, link_s=0.5, server_s=0.1, first_upload_s=0.3, overlap_server_s=2.0)
    # tau server steps (2 s) hide the straggler's delay up to 2 - 1.5 + 0.3 = 0.8 s
    assert costs.client_round_s(mu, 0.0) == costs.client_round_s(mu, 0.8) == 2.3 + 0.1
    assert costs.client_round_s(mu, 1.8) > 2.4


def test_stragglers_seeded():
    system = costs.System(1e9, 1e10, 1e7, 0.3, 2.0)
    slow = costs.stragglers(0, 10, 0.3)
    assert len(slow) == 3 and (slow == costs.stragglers(0, 10, 0.3)).all()
    d = [costs.straggler_delay(system, 0, r, int(slow[0]), slow) for r in range(200)]
    assert abs(sum(d) / len(d) - 2.0) < 0.5                                    # Exp(mean 2)
    fast = next(k for k in range(10) if k not in slow)
    assert costs.straggler_delay(system, 0, 1, fast, slow) == 0.0


def test_straggler_experiment_slows_only_the_servers_seconds():
    """mu_study.slow_server: server seconds scale by split.server_flops_per_s / straggler_server_flops_per_s;
    client compute, link and the first upload do not change."""
    from types import SimpleNamespace

    from fedlib.stages.mu_study import slow_server

    p = SimpleNamespace(split=SimpleNamespace(server_flops_per_s=1e10),
                        mu_study=SimpleNamespace(straggler_server_flops_per_s=2e7))
    t = costs.ClientTimeline(client_s=0.01, link_s=0.05, server_s=1e-4, first_upload_s=0.03, overlap_server_s=3e-4)
    slow, step = slow_server(p, t, 1e-4)
    assert (slow.client_s, slow.link_s, slow.first_upload_s) == (0.01, 0.05, 0.03)
    assert abs(slow.server_s - 0.05) < 1e-12 and abs(slow.overlap_server_s - 0.15) < 1e-12 and abs(step - 0.05) < 1e-12
