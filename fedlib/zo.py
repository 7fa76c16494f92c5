"""The shared zeroth-order estimator (SPEC section 3.3), used by HERON-SFL and MU-SplitFed.

Directions u live over a list of parameter tensors and are never stored: ``SeededDirections``
regenerates u from an integer seed one tensor at a time (a generator seeded by (seed, tensor
index)), so extra memory never exceeds the largest tensor's worth of noise.

    Gaussian:     u ~ N(0, I)                          (no dimension factor)
    unit sphere:  u = g/||g||, g ~ N(0, I)             (estimator carries the factor d = dim)

For q directions u_1..u_q (seeds derived from (seed, j)):
    forward:  g_hat = (1/q) sum_j [l(x + mu u_j) - l(x)] / mu        * u_j   (* d on the sphere)
    central:  g_hat = (1/q) sum_j [l(x + mu u_j) - l(x - mu u_j)] / (2 mu) * u_j   (* d on the sphere)
An estimate is kept as scalars c_j with g_hat = sum_j c_j u_j, and an update
x <- x - lr * g_hat is applied in place by regenerating every u_j from its seed.
Evaluation perturbs in place and restores x exactly from a copy of the parameters.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from fedlib.seeding import derive_seed

DIRECTIONS = ("gaussian", "sphere")
SCHEMES = ("forward", "central")


class SeededDirections:
    """u(seed) over ``params``, generated tensor by tensor."""

    def __init__(self, params: Sequence[torch.Tensor], kind: str = "gaussian"):
        if kind not in DIRECTIONS:
            raise ValueError(f"zo: direction kind {kind!r} is not allowed; expected one of {', '.join(DIRECTIONS)}")
        self.params, self.kind = list(params), kind
        self.dim = sum(p.numel() for p in self.params)
        self._norms: dict[int, float] = {}

    def _raw(self, seed: int, i: int) -> torch.Tensor:
        p = self.params[i]
        g = torch.Generator(device=p.device).manual_seed(derive_seed(seed, i))
        return torch.randn(p.shape, generator=g, dtype=p.dtype, device=p.device)

    def _scale(self, seed: int) -> float:
        """1 for Gaussian; 1/||g|| on the sphere (one extra pass, one tensor at a time)."""
        if self.kind == "gaussian":
            return 1.0
        if seed not in self._norms:
            sq = sum(float(self._raw(seed, i).double().square().sum()) for i in range(len(self.params)))
            self._norms = {seed: sq ** -0.5}      # keep only the latest seed's norm
        return self._norms[seed]

    def tensors(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, its block of u), one block alive at a time."""
        scale = self._scale(seed)
        for i, p in enumerate(self.params):
            u = self._raw(seed, i)
            if scale != 1.0:
                u.mul_(scale)
            yield p, u

    @torch.no_grad()
    def add_(self, seed: int, alpha: float) -> None:
        """params <- params + alpha * u(seed), in place."""
        for p, u in self.tensors(seed):
            p.add_(u, alpha=alpha)

    @contextmanager
    def perturbed(self, seed: int, alpha: float):
        """Inside the block the params are x + alpha * u(seed); afterwards exactly x again."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            self.add_(seed, alpha)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def materialise(self, seed: int) -> list[torch.Tensor]:
        """u(seed) as tensors (for tests and diagnostics only)."""
        return [u for _, u in self.tensors(seed)]


@dataclass
class ZOEstimate:
    """g_hat = sum_j coeffs[j] * u(seeds[j])."""
    seeds: list[int]
    coeffs: list[float]
    loss: float           # l(x) for forward differences, mean of l(x +- mu u) for central
    evaluations: int      # loss evaluations (forward passes) spent


class ZOEstimator:
    """Seeded in-place ZO gradient estimator over a list of tensors."""

    def __init__(self, params: Sequence[torch.Tensor], mu: float, q: int = 1, scheme: str = "forward",
                 directions: str = "gaussian"):
        if scheme not in SCHEMES:
            raise ValueError(f"zo: scheme {scheme!r} is not allowed; expected one of {', '.join(SCHEMES)}")
        if not mu > 0 or q < 1:
            raise ValueError(f"zo: need mu > 0 and q >= 1, got mu={mu}, q={q}")
        self.u = SeededDirections(params, directions)
        self.mu, self.q, self.scheme = mu, q, scheme
        self.factor = self.u.dim if directions == "sphere" else 1.0   # d on the sphere only

    def direction_seeds(self, seed: int) -> list[int]:
        return [derive_seed(seed, j) for j in range(self.q)]

    @torch.no_grad()
    def estimate(self, loss_fn: Callable[[], float], seed: int) -> ZOEstimate:
        """Finite differences of ``loss_fn`` (which reads the params) along q seeded directions."""
        seeds = self.direction_seeds(seed)
        coeffs, losses = [], []
        base = float(loss_fn()) if self.scheme == "forward" else None
        for s in seeds:
            with self.u.perturbed(s, self.mu):
                plus = float(loss_fn())
            if self.scheme == "forward":
                diff = (plus - base) / self.mu                       # [l(x+mu u) - l(x)] / mu
            else:
                with self.u.perturbed(s, -self.mu):
                    minus = float(loss_fn())
                diff = (plus - minus) / (2 * self.mu)                # [l(x+mu u) - l(x-mu u)] / (2 mu)
                losses += [plus, minus]
            coeffs.append(self.factor * diff / self.q)
        loss = base if base is not None else sum(losses) / len(losses)
        return ZOEstimate(seeds, coeffs, loss, len(seeds) * (1 if base is not None else 2) + (base is not None))

    @torch.no_grad()
    def step_(self, est: ZOEstimate, lr: float) -> None:
        """x <- x - lr * g_hat, regenerating each u_j from its seed."""
        for s, c in zip(est.seeds, est.coeffs):
            self.u.add_(s, -lr * c)

    def gradient(self, est: ZOEstimate) -> list[torch.Tensor]:
        """g_hat as tensors (for tests and diagnostics only)."""
        out = [torch.zeros_like(p) for p in self.u.params]
        for s, c in zip(est.seeds, est.coeffs):
            for o, u in zip(out, self.u.materialise(s)):
                o.add_(u, alpha=c)
        return out
