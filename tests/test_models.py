import pytest
import torch

from fedlib.algorithms.base import Worker
from fedlib.models import build_model, num_params


def test_cnn_is_the_classic_fedavg_cnn():
    assert num_params(build_model("cnn", (1, 28, 28), 10)) == 582_026


def test_the_cnn_the_fedwmsam_study_ran_with_is_unchanged_to_its_initial_weights():
    """The study's 60+ committed runs were trained from these exact weights (run fingerprints cannot see model
    code): shapes in order, and the seed-0 initialisation's sums (torch 2.14.1, as of the runs)."""
    m = build_model("cnn", (1, 28, 28), 10, seed=0)
    assert [tuple(p.shape) for p in m.parameters()] == [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (512, 1024),
                                                         (512,), (10, 512), (10,)]
    flat = torch.cat([p.detach().flatten() for p in m.parameters()]).double()
    assert flat.sum().item() == pytest.approx(15.178531806696412, rel=1e-9)
    assert flat.abs().sum().item() == pytest.approx(9301.579168511089, rel=1e-9)


def test_cnn_half_is_the_same_cnn_at_half_width():
    half = build_model("cnn_half", (1, 28, 28), 10)
    assert num_params(half) == 147_146 and half.cut_points == ("conv1", "conv2", "fc1")
    assert [tuple(p.shape) for p in half.parameters()][::2] == [(16, 1, 5, 5), (32, 16, 5, 5), (256, 512), (10, 256)]


@pytest.mark.parametrize("name, shape", [("mlp", (1, 8, 8)), ("cnn", (1, 28, 28)), ("cnn", (1, 8, 8)),
                                         ("cnn_half", (1, 28, 28)),
                                         ("resnet18", (3, 16, 16))])
def test_every_cut_composes_to_the_whole_model(name, shape):
    model = build_model(name, shape, 10).eval()
    x = torch.randn(4, *shape)
    full = model(x)
    for cut in model.cut_points:
        client, server = model.split(cut)
        assert torch.equal(server(client(x)), full)
    with pytest.raises(ValueError, match="allowed"):
        model.split("nope")


def test_flat_buffers_alias_parameters_and_gradients():
    w = Worker(build_model("mlp", (1, 8, 8), 10))
    first = next(w.model.parameters())
    w.flat[0] = 123.0
    assert first.view(-1)[0] == 123.0
    w.loss_grad(torch.randn(5, 1, 8, 8), torch.arange(5))
    assert w.grad.abs().sum() > 0 and first.grad.data_ptr() == w.grad.data_ptr()


def test_config_knows_every_models_cut_points():
    from fedlib.config import MODEL_CUTS
    for name, cuts in MODEL_CUTS.items():
        assert build_model(name, (3, 32, 32), 10).cut_points == cuts
