"""System costs, measured (SPEC section 4): bytes, FLOPs, client peak memory, simulated wall-clock.

- Bytes: the sizes of the tensors that actually cross the network, split into cut traffic
  (smashed data, labels, gradients, scalars) and model traffic (weights).
- FLOPs: counted by instrumenting the operators (torch.utils.flop_counter.FlopCounterMode:
  matrix products and convolutions, forward and backward).
- Activation memory on CPU: for a first-order step, the peak bytes held by autograd's saved
  tensors (saved_tensors_hooks); for a no-grad zeroth-order step, the peak bytes of live tensors
  produced by operators (a dispatch mode that tracks every output storage until it is freed).
  Parameter storages are excluded from both; they are counted once as parameter bytes.
  On CUDA both are the allocator's peak above the memory held before the step.
- Simulated wall-clock: compute seconds = FLOPs / speed, transfer seconds = bytes / link rate,
  plus an exponential straggler delay for a seeded share of the clients.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fedlib.zo import derive_seed

TRAFFIC_COLUMNS = ("cut_bytes_up", "cut_bytes_down", "model_bytes_up", "model_bytes_down")
TIME_COLUMNS = ("sim_round_s", "sim_time_s")


def nbytes(*tensors: torch.Tensor) -> int:
    """Bytes of the tensors as sent (numel x element size)."""
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Traffic:
    """One client's bytes in one round."""
    cut_up: int = 0
    cut_down: int = 0
    model_up: int = 0
    model_down: int = 0

    @property
    def up(self) -> int:
        return self.cut_up + self.model_up

    @property
    def down(self) -> int:
        return self.cut_down + self.model_down


def round_traffic(per_client: list[Traffic]) -> dict[str, int]:
    """Metric columns: totals over the round's clients."""
    return {"cut_bytes_up": sum(t.cut_up for t in per_client), "cut_bytes_down": sum(t.cut_down for t in per_client),
            "model_bytes_up": sum(t.model_up for t in per_client),
            "model_bytes_down": sum(t.model_down for t in per_client)}


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn(), FLOPs of its matrix products and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def saved_tensor_peak(fn: Callable[[], Any], exclude: set[int] = frozenset()) -> tuple[Any, int]:
    """(fn(), peak bytes of autograd's saved tensors while fn runs).

    Every saved tensor stays alive until backward frees it, so the sum over distinct storages
    packed up to any moment is the running total; its maximum is the peak. Storages in
    ``exclude`` (the parameters) are not activations."""
    live: dict[int, int] = {}
    peak = [0]

    def pack(t):
        key = _storage_key(t)
        if key not in exclude and key not in live and key != 0:
            live[key] = t.untyped_storage().nbytes()
            peak[0] = max(peak[0], sum(live.values()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, peak[0]


class LiveTensorPeak(TorchDispatchMode):
    """Tracks the bytes of live operator outputs (distinct storages) and their peak."""

    def __init__(self, exclude: set[int] = frozenset()):
        super().__init__()
        self.exclude, self.live, self.current, self.peak = set(exclude), {}, 0, 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key in self.exclude or key == 0:
                continue
            if key not in self.live:
                self.live[key] = [t.untyped_storage().nbytes(), 0]
                self.current += self.live[key][0]
                self.peak = max(self.peak, self.current)
            self.live[key][1] += 1
            weakref.finalize(t, self._release, key)
        return out


def live_tensor_peak(fn: Callable[[], Any], exclude: set[int] = frozenset()) -> tuple[Any, int]:
    """(fn(), peak bytes of live intermediate tensors while fn runs)."""
    with LiveTensorPeak(exclude) as tracker:
        out = fn()
    return out, tracker.peak


def cuda_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn(), allocator peak above what was allocated before the step)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - before


@dataclass
class StepCost:
    flops: int
    activation_bytes: int


@dataclass
class Meter:
    """Measures each kind of step once (FLOPs and activation peak on its first call) and caches it:
    steps of one kind and batch shape run the same operators."""
    records: dict[tuple, StepCost] = field(default_factory=dict)
    exclude: set[int] = field(default_factory=set)    # parameter storages
    device: str = "cpu"

    def step(self, key: tuple, fn: Callable[[], Any], grad: bool) -> tuple[Any, StepCost]:
        if key in self.records:
            return fn(), self.records[key]

        def tracked():
            if self.device.startswith("cuda"):
                return cuda_peak(fn)
            return saved_tensor_peak(fn, self.exclude) if grad else live_tensor_peak(fn, self.exclude)

        (out, act), flops = count_flops(tracked)
        self.records[key] = StepCost(flops, act)
        return out, self.records[key]


# ----- simulated wall-clock -----

@dataclass(frozen=True)
class System:
    client_flops_per_s: float
    server_flops_per_s: float
    link_bytes_per_s: float
    straggler_share: float
    straggler_delay_s: float      # mean of the exponential extra delay

    def client_s(self, flops: float) -> float:
        return flops / self.client_flops_per_s

    def server_s(self, flops: float) -> float:
        return flops / self.server_flops_per_s

    def link_s(self, nbytes_: float) -> float:
        return nbytes_ / self.link_bytes_per_s


def stragglers(seed: int, num_clients: int, share: float) -> np.ndarray:
    """The fixed set of straggling clients: round(share * N) of them, drawn from a generator seeded by seed."""
    n = int(round(share * num_clients))
    return np.sort(np.random.default_rng(derive_seed(seed, 7919)).choice(num_clients, n, replace=False))


def straggler_delay(system: System, seed: int, r: int, k: int, slow: np.ndarray) -> float:
    """Extra delay of client k in round r: Exp(mean) for a straggler (seeded by (seed, r, k)), else 0."""
    if k not in slow or system.straggler_delay_s <= 0:
        return 0.0
    return float(np.random.default_rng(derive_seed(seed, r, k, 104729)).exponential(system.straggler_delay_s))


@dataclass
class ClientTimeline:
    """One client's seconds in one round, before its straggler delay.

    client_s: client compute; link_s: all its transfers; server_s: server compute the client
    waits for (0 for decoupled methods); overlap: MU-SplitFed's (first_upload_s, server_s_overlap)
    — the server's tau steps start once h has arrived and run while h+- are computed and sent."""
    client_s: float
    link_s: float
    server_s: float = 0.0
    first_upload_s: float = 0.0
    overlap_server_s: float = 0.0


def client_round_s(t: ClientTimeline, delay: float) -> float:
    """Seconds until this client has finished its round.

    Without overlap: client_s + link_s + server_s + delay.
    With overlap (MU-SplitFed): the straggler's delay falls on its perturbed forwards and uploads,
    the server's tau steps on h run meanwhile; the scalar delta waits for both:
      max(first_upload_s + overlap_server_s, client_s + link_s + delay) + server_s."""
    serial = t.client_s + t.link_s + delay
    if t.overlap_server_s:
        return max(t.first_upload_s + t.overlap_server_s, serial) + t.server_s
    return serial + t.server_s


def round_s(timelines: list[ClientTimeline], delays: list[float], serial_server: bool = False) -> float:
    """A synchronous round lasts as long as its slowest client. With ``serial_server`` (SplitFed v2,
    one server segment) the server's work for the clients is done one client after another:
      max_k(client_s + link_s + delay) + sum_k server_s."""
    if serial_server:
        return (max(t.client_s + t.link_s + d for t, d in zip(timelines, delays))
                + sum(t.server_s for t in timelines))
    return max(client_round_s(t, d) for t, d in zip(timelines, delays))
