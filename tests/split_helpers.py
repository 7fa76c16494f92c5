"""Shared by the split-learning tests: a split algorithm with its declared defaults, a seeded client, and the
float64 helpers of the rule references (named parameters read from a flat vector, shifted, evaluated)."""
from types import SimpleNamespace

import torch
from torch.func import functional_call
from torch.nn import functional as F

from fedlib import engine, partition
from fedlib.algorithms import REGISTRY
from fedlib.algorithms.base import ClientData, Worker
from fedlib.models import build_model
from fedlib.seeding import derive_seed


def make_split(method, fed, model, cut, **hp):
    """A split algorithm with its declared defaults, ``hp`` overriding; SGD settings of the references."""
    h = SimpleNamespace(**{k: f.default for k, f in REGISTRY[method].hparams.items()})
    h.cut = cut
    vars(h).update(hp)
    train = SimpleNamespace(lr=0.1, weight_decay=1e-3, clip=1e9, batch_size=16, server_lr=1.0)
    worker = Worker(build_model(model, fed.data.input_shape, fed.data.num_classes, seed=0))
    return REGISTRY[method](h, train, worker, fed), worker.flat.clone()


def client(fed, k, r=0, seed=0):
    return ClientData(k, fed.client_x[k], fed.client_y[k], torch.Generator().manual_seed(derive_seed(seed, r, k)))


def make(method, fed, model="mlp4", cut="fc2", **hp):
    """make_split at the rule tests' default model and cut."""
    return make_split(method, fed, model, cut, **hp)


def digits_federation():
    """The digits data over 4 iid clients (the split rule tests' federation)."""
    data = engine.load_dataset("digits")
    return engine.federate(data, partition.make_partition(data.y_train.numpy(), "iid", 4, seed=0))


def unflat(vec, module):
    """Named float64 tensors of ``module``'s shapes, read from the flat vector ``vec``."""
    out, i = {}, 0
    for name, p in module.named_parameters():
        out[name] = vec[i:i + p.numel()].view_as(p).double()
        i += p.numel()
    return out


def flat(named):
    return torch.cat([t.reshape(-1) for t in named.values()])


def shift(named, u, a):
    return {n: t + a * v.double() for (n, t), v in zip(named.items(), u)}


def ce(module, named, inp, y, adjust=0.0):
    return F.cross_entropy(functional_call(module, named, (inp.double(),)) + adjust, y)
