"""Measured costs (fedlib/costs.py): FLOPs against closed forms, bytes against tensor sizes,
activation memory of zeroth-order (no-grad) against first-order steps, the round-time rules."""
import torch
from torch import nn

from fedlib import costs
from fedlib.models import cnn


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


def test_saved_tensor_peak_counts_what_autograd_keeps():
    lin = nn.Linear(50, 20)
    exclude = {p.untyped_storage().data_ptr() for p in lin.parameters()}
    x = torch.randn(8, 50)
    _, peak = costs.saved_tensor_peak(lambda: torch.relu(lin(x)), exclude)
    assert peak == 8 * 50 * 4 + 8 * 20 * 4              # the input (for grad W) and relu's output


def test_zo_client_peak_below_fo_for_the_same_segment_and_batch():
    client, _ = cnn((1, 28, 28), 10).split("conv2")
    exclude = {p.untyped_storage().data_ptr() for p in client.parameters()}
    x = torch.randn(32, 1, 28, 28)
    _, fo = costs.saved_tensor_peak(lambda: client(x).sum().backward(), exclude)
    with torch.no_grad():
        _, zo = costs.live_tensor_peak(lambda: client(x).sum(), exclude)
    conv1_out = 32 * 32 * 24 * 24 * 4
    assert conv1_out <= zo < fo                          # the no-grad peak holds the widest layer, not all of them


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
