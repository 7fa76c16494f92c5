"""MoFedSAM: FedSAM's local step mixed with the server momentum of FedCM (SPEC section 1).

Client:  G = alpha * grad l(x + e; xi) + (1 - alpha) * m_r,   e = rho * g / ||g||, g = grad l(x; xi).
Server:  as FedCM:  x_{r+1} = x_r + eta_g * Delta_bar;  m_{r+1} = -(1/S) sum_k Delta_k / (K_k * eta_r).
With alpha = 1 it is FedSAM, bit for bit.
"""
from types import SimpleNamespace

from fedlib.algorithms.fedcm import FedCM
from fedlib.algorithms.fedsam import FedSAM
from fedlib.algorithms.sam import Perturbed, momentum_mix
from fedlib.config import Float


class MoFedSAM(FedSAM):
    name = "mofedsam"
    hparams = {**FedSAM.hparams, "alpha": Float(0.1, gt=0, le=1)}
    down_vectors = 2      # x_r and m_r
    metric_names = (*FedSAM.metric_names, "momentum_norm")
    momentum = FedCM.momentum
    server_update = FedCM.server_update

    def begin_client(self, k, info):
        return SimpleNamespace(perturbed=Perturbed(info.x), m=self.momentum(info.x))

    def direction(self, xb, yb, b, ctx):
        loss = self.sam_direction(xb, yb, ctx.perturbed)
        momentum_mix(self.worker.grad, self.hp.alpha, ctx.m)    # G = alpha grad(x + e) + (1 - alpha) m_r
        return loss

    def client_stats(self, ctx):
        return ctx.perturbed.stats()
