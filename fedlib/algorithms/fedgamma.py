"""FedGAMMA: FedSAM's local step with SCAFFOLD's drift correction (SPEC section 1).

Client:  G = grad l(x + e; xi) + c - c_k,   e = rho * g / ||g||, g = grad l(x; xi)  (two backprops).
Server:  as SCAFFOLD option II.
"""
from types import SimpleNamespace

from fedlib.algorithms.fedsam import FedSAM
from fedlib.algorithms.sam import Perturbed, control_correction
from fedlib.algorithms.scaffold import Scaffold


class FedGAMMA(FedSAM):
    name = "fedgamma"
    down_vectors = Scaffold.down_vectors
    up_vectors = Scaffold.up_vectors
    server_update = Scaffold.server_update

    def begin_client(self, k, info):
        return SimpleNamespace(perturbed=Perturbed(info.x), correction=control_correction(self.state, k, info.x))

    def direction(self, xb, yb, b, ctx):
        loss = self.sam_direction(xb, yb, ctx.perturbed)
        self.worker.grad.add_(ctx.correction)                   # G = grad l(x + e) + c - c_k
        return loss

    def client_stats(self, ctx):
        return ctx.perturbed.stats()
