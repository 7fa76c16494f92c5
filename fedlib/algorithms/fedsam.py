"""FedSAM: local sharpness-aware minimisation (SPEC section 1).

Client, per step on batch xi:  g = grad l(x; xi);  e = rho * g / ||g||  (global norm);
                               G = grad l(x + e; xi)  (second backprop, same batch).
Server: plain average.  With rho = 0 every step equals FedAvg's, bit for bit.
"""
from fedlib.algorithms.sam import DiagnosedAlgorithm, Perturbed, sam_perturbation
from fedlib.config import Float


class FedSAM(DiagnosedAlgorithm):
    name = "fedsam"
    hparams = {"rho": Float(0.01, ge=0), **DiagnosedAlgorithm.hparams}
    backprops_per_step = 2
    metric_names = (*DiagnosedAlgorithm.metric_names, "perturbation_norm")

    def begin_client(self, k, info):
        return Perturbed(info.x)

    def direction(self, xb, yb, b, ctx):
        return self.sam_direction(xb, yb, ctx)

    def sam_direction(self, xb, yb, ctx: Perturbed) -> float:
        """G = grad l(x + e; xi) into worker.grad; returns l(x; xi), the loss before the ascent."""
        w = self.worker
        loss = w.loss_grad(xb, yb)                       # g = grad l(x; xi)
        sam_perturbation(w.grad, self.hp.rho, ctx.e)     # e = rho g / ||g||
        ctx.loss_grad(w, xb, yb)                         # G = grad l(x + e; xi)
        return loss

    def client_stats(self, ctx):
        return ctx.stats()
