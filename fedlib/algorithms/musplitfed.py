"""MU-SplitFed (docs/methods.md#musplitfed): zeroth-order on both sides, tau server steps per round.

Client m, one minibatch (x, y) per round, direction u_c from a seed (q directions in general):
    h = f_c(x; theta_c),  h+ = f_c(x; theta_c + lam u_c),  h- = f_c(x; theta_c - lam u_c)  -> server
Server copy for client m, starting from theta_s^t, tau ZO steps on h while h+- are in flight:
    G_s = [F(theta_s + lam u_s; h, y) - F(theta_s - lam u_s; h, y)] / (2 lam) * u_s
    theta_s <- theta_s - eta_s G_s
(``server: fo`` replaces G_s by the first-order gradient of F at theta_s on (h, y).)
Scalar back to the client:  delta = F(theta_s^tau; h+, y) - F(theta_s^tau; h-, y)
Client:                     theta_c <- theta_c - eta_c (delta / (2 lam)) u_c   (u_c regenerated)
Aggregation, both segments: theta <- theta + eta_g * mean_m(theta_m - theta).
tau = 1 is vanilla ZO-SplitFed.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from fedlib import costs
from fedlib.algorithms.base import ClientResult
from fedlib.algorithms.split import SPLIT_HPARAMS, SplitAlgorithm, draw_batches, draw_seed, trainable
from fedlib.schema import Choice, Float, Int
from fedlib.zo import DIRECTIONS, ZOEstimate, ZOEstimator


class MUSplitFed(SplitAlgorithm):
    name = "musplitfed"
    hparams = {
        **{k: v for k, v in SPLIT_HPARAMS.items() if k != "local_steps"},   # one minibatch per client per round
        "tau": Int(1, ge=1),                              # server steps per round
        "eta_g": Float(0.3, gt=0),
        "eta_s": Float(0.01, gt=0),
        "eta_c": Float(0.005, gt=0),
        "lam": Float(0.005, gt=0),                        # smoothing lambda
        "q": Int(1, ge=1),                                # directions per ZO estimate (client and server)
        "directions": Choice("gaussian", *DIRECTIONS),
        "server": Choice("zo", "zo", "fo"),
    }
    zeroth_order_client = True

    def __init__(self, hp, train, worker, fed):
        super().__init__(hp, train, worker, fed)
        self.zo_client = ZOEstimator(trainable(self.client_seg), hp.lam, hp.q, "central", hp.directions)
        self.zo_server = ZOEstimator(trainable(self.server_seg), hp.lam, hp.q, "central", hp.directions)

    def server_loss(self, h: torch.Tensor, y: torch.Tensor) -> float:
        return F.cross_entropy(self.server_seg(h), y).item()

    @torch.no_grad()
    def client_forwards(self, xb: torch.Tensor, seed: int):
        """h and, per direction u_j, (h+_j, h-_j): 2q + 1 forwards, no graph; each pair costs three passes
        of regenerated noise (+lam u, -2 lam u, +lam u), as in every other ZO estimate (fedlib/zo.py)."""
        h = self.client_seg(xb)
        pairs = [self.zo_client.u.central(s, self.hp.lam, lambda: self.client_seg(xb))
                 for s in self.zo_client.direction_seeds(seed)]
        return h, pairs

    def server_step(self, h: torch.Tensor, yb: torch.Tensor, seed: int) -> None:
        """theta_s <- theta_s - eta_s G_s on (h, y)."""
        if self.hp.server == "fo":
            self.gs.zero_()
            F.cross_entropy(self.server_seg(h), yb).backward()
            self.xs.add_(self.gs, alpha=-self.hp.eta_s)
            return
        est = self.zo_server.estimate(lambda: self.server_loss(h, yb), seed)
        self.zo_server.step_(est, self.hp.eta_s)

    def run_round(self, x, clients, info):
        w, hp = self.worker, self.hp
        results, traffic, timelines, flops_steps = [], [], [], []
        model_bytes = costs.nbytes(self.xc)
        for data in clients:
            w.load(x)                                                # theta_c^t, server copy from theta_s^t
            (xb, yb), = draw_batches(data, 1, self.train.batch_size)
            client_seed = draw_seed(data)
            server_seeds = [draw_seed(data) for _ in range(hp.tau)]
            bs = len(yb)
            (h, pairs), fwd = self.meter.step(("client", "zo", bs), lambda: self.client_forwards(xb, client_seed),
                                              grad=False)
            server_flops = 0
            for s in server_seeds:                                   # tau server steps on h
                _, c = self.meter.step(("server", hp.server, bs), lambda: self.server_step(h, yb, s),
                                       grad=hp.server == "fo")
                server_flops += c.flops
            with torch.no_grad():                                    # F(theta_s^tau; h+_j), F(theta_s^tau; h-_j)
                pm_losses, dc = self.meter.step(
                    ("server", "delta", bs),
                    lambda: [(self.server_loss(p, yb), self.server_loss(m, yb)) for p, m in pairs], grad=False)
            deltas = [lp - lm for lp, lm in pm_losses]               # delta_j, the scalars sent back
            coeffs = [self.zo_client.factor * d / (2 * hp.lam) / hp.q for d in deltas]
            est = ZOEstimate(self.zo_client.direction_seeds(client_seed), coeffs, 0.0, 0)
            self.meter.step(("client", "update", bs), lambda: self.zo_client.step_(est, hp.eta_c), grad=False)

            delta = w.flat - x
            loss = sum(lp + lm for lp, lm in pm_losses) / (2 * len(pm_losses))
            results.append(ClientResult(data.k, delta, 1, len(data), loss))
            smashed = costs.nbytes(h, yb) + sum(costs.nbytes(p, m) for p, m in pairs)
            scalars = costs.nbytes(torch.tensor(deltas, dtype=torch.float32))
            tr = costs.Traffic(cut_up=smashed, cut_down=scalars, model_up=model_bytes, model_down=model_bytes)
            traffic.append(tr)
            flops_steps.append(fwd.flops)
            forward_s = self.system.client_s(fwd.flops / (2 * hp.q + 1))
            timelines.append(costs.ClientTimeline(
                client_s=self.system.client_s(fwd.flops), link_s=self.system.link_s(tr.up + tr.down),
                server_s=self.system.server_s(dc.flops),
                first_upload_s=forward_s + self.system.link_s(model_bytes + costs.nbytes(h, yb)),
                overlap_server_s=self.system.server_s(server_flops)))
        # theta <- theta + eta_g * mean_m (theta_m - theta), both segments
        x_next = x + hp.eta_g * torch.stack([r.delta for r in results]).mean(0)
        return self.finish_round(x_next, results, traffic, timelines, info, sum(flops_steps) / len(flops_steps))
