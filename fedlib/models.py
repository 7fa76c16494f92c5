"""Models as ``nn.Sequential`` of named blocks, so a model splits at any of its ``cut_points``:
the client segment runs the blocks up to and including the cut, the server segment the rest.

- ``mlp``: the FedAvg 2NN (two hidden layers of 200).
- ``cnn``: the classic FedAvg CNN (two 5x5 convs 32/64 with max-pool, fc 512); 582,026
  parameters on 28x28 inputs (the FedWMSAM study's model).
- ``cnn_half``: the same CNN at half width (convs 16/32, fc 256); 147,146 parameters on 28x28 inputs, a
  training step ~2.8x faster on one CPU thread (the default pipeline's model, for its time budget).
- ``resnet18``: ResNet-18 with GroupNorm (2 groups) and the CIFAR stem (3x3 conv, no max-pool).
"""
from __future__ import annotations

from collections import OrderedDict
from math import prod

import torch
from torch import nn

from fedlib.split_model import SplitModel  # noqa: F401  (re-exported)


def mlp(input_shape, num_classes: int, hidden: int = 200) -> SplitModel:
    return SplitModel(OrderedDict(
        fc1=nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), hidden), nn.ReLU()),
        fc2=nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        out=nn.Linear(hidden, num_classes),
    ), cut_points=("fc1", "fc2"))


def mlp4(input_shape, num_classes: int, hidden: int = 64) -> SplitModel:
    """A narrow 3-hidden-layer MLP (width 64) with three cut points: small segments on both sides,
    so that MU-SplitFed's zeroth-order server and client problems stay tractable (fc1 cut: server
    8,970 parameters; fc3 cut: server 650)."""
    return SplitModel(OrderedDict(
        fc1=nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), hidden), nn.ReLU()),
        fc2=nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        fc3=nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        out=nn.Linear(hidden, num_classes),
    ), cut_points=("fc1", "fc2", "fc3"))


def cnn(input_shape, num_classes: int, widths: tuple[int, int, int] = (32, 64, 512)) -> SplitModel:
    """widths: the two convolutions' channels and the hidden fully connected layer."""
    (c1, c2, hidden), channels, side = widths, input_shape[0], input_shape[-1]
    pad = 0 if side >= 28 else 2          # small images (8x8 digits) keep their size through the convs
    # pool before ReLU: max-pool and ReLU commute exactly (values and gradients), and the ReLU
    # then touches a quarter of the elements (about 5% of a training step, 12% of an evaluation)
    conv1 = nn.Sequential(nn.Conv2d(channels, c1, 5, padding=pad), nn.MaxPool2d(2), nn.ReLU())
    conv2 = nn.Sequential(nn.Conv2d(c1, c2, 5, padding=pad), nn.MaxPool2d(2), nn.ReLU())
    with torch.no_grad():
        flat = conv2(conv1(torch.zeros(1, *input_shape))).numel()
    return SplitModel(OrderedDict(
        conv1=conv1, conv2=conv2,
        fc1=nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()),
        out=nn.Linear(hidden, num_classes),
    ), cut_points=("conv1", "conv2", "fc1"))


def cnn_half(input_shape, num_classes: int) -> SplitModel:
    return cnn(input_shape, num_classes, widths=(16, 32, 256))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(groups, cout))

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def resnet18(input_shape, num_classes: int, groups: int = 2) -> SplitModel:
    def stage(cin, cout, stride):
        return nn.Sequential(BasicBlock(cin, cout, stride, groups), BasicBlock(cout, cout, 1, groups))

    return SplitModel(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False), nn.GroupNorm(groups, 64), nn.ReLU()),
        layer1=stage(64, 64, 1), layer2=stage(64, 128, 2), layer3=stage(128, 256, 2), layer4=stage(256, 512, 2),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)),
    ), cut_points=("stem", "layer1", "layer2", "layer3", "layer4"))


def minilm(input_shape, num_classes: int, **options) -> SplitModel:
    """The pretrained MiniLM text model (fedlib/lm.py; imported here on use: it needs transformers)."""
    from fedlib.lm import minilm as build
    return build(input_shape, num_classes, **options)


MODELS = {"mlp": mlp, "mlp4": mlp4, "cnn": cnn, "cnn_half": cnn_half, "resnet18": resnet18, "minilm": minilm}


def build_model(name: str, input_shape, num_classes: int, seed: int = 0, **options) -> SplitModel:
    """``options`` go to the model's builder (minilm: lora_rank, head_scale, ...)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    return MODELS[name](input_shape, num_classes, **options)


def auxiliary_head(client: nn.Module, input_shape, num_classes: int, hidden: int = 0, seed: int = 0) -> nn.Sequential:
    """Local-loss head at the cut (CSE-FSL, HERON-SFL): flatten + one linear layer to the classes
    (``hidden = 0``), or flatten + linear(hidden) + ReLU + linear. Sized by a forward of ``client``."""
    with torch.no_grad():
        width = client(torch.zeros(1, *input_shape)).numel()
    torch.manual_seed(seed)
    if hidden == 0:
        return nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flatten_(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-home every trainable parameter and its gradient into two flat buffers, in place.

    Afterwards ``flat`` is x (all parameters as one vector) and ``grad`` is dl/dx: the model's
    parameters are views into them, so global norms, cosines and updates are single vector ops
    and a step needs no per-step allocation. Backward accumulates into ``grad``; zero it first.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    i = 0
    for p in params:
        n = p.numel()
        p.data = flat[i:i + n].view_as(p)
        p.grad = grad[i:i + n].view_as(p)
        i += n
    return flat, grad
