"""Convergence-bound terms against measurement (SPEC sections 2 and 5).

Measured at snapshots x_r of each method's global model, on a fixed sample set of the pooled
training data (f below is the mean cross-entropy over that set, without weight decay):

- sigma^2     = E_xi ||grad l(x; xi) - grad f(x)||^2, xi a minibatch of B samples drawn from the set;
- sigma_rho^2 = E_xi ||grad l(x + e; xi) - grad f(x)||^2 with e the method's own SAM perturbation,
                set beside the theory's sigma^2 + (L rho)^2;
- L           = the top Hessian eigenvalue (power iteration on Hessian-vector products), cross-checked
                by secants ||grad f(x_r) - grad f(x_{r-1})|| / ||x_r - x_{r-1}|| between consecutive rounds;
- Delta_0     = f(x_0) - f*, with f* estimated by the lowest f any method reached at any snapshot.

The FedWMSAM bound is then evaluated with these constants beside the measured average of
||grad f(x_r)||^2, and its predicted scaling in S, K, R and N beside training sweeps.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter, NullFormatter
from tqdm.auto import tqdm

from fedlib import engine
from fedlib.algorithms.base import Worker
from fedlib.analysis.hessian import Objective, power_iteration
from fedlib.config import load_params
from fedlib.models import build_model
from fedlib.plots import _save, plt

# e = perturbation(x, grad l(x; xi)): the shift applied before the stochastic gradient is taken
Perturbation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

BATCH_ASCENT = ("fedsam", "mofedsam", "fedgamma")   # e = rho g / ||g||, g the batch gradient
TRAJECTORY = ("fedlesam", "fedwmsam")                # e along an ascent direction from the trajectory
SWEEPS = {"S": "sweep_clients_per_round", "E": "sweep_local_epochs", "R": "sweep_rounds", "N": "sweep_num_clients"}


# ----- perturbations -----
def _scaled(d: torch.Tensor, rho: float) -> torch.Tensor:
    """rho d / ||d||, and 0 when d = 0."""
    norm = d.norm()
    return torch.zeros_like(d) if norm == 0 else d * (rho / norm)


def batch_ascent(rho: float) -> Perturbation:
    """FedSAM / MoFedSAM / FedGAMMA: e = rho g / ||g|| with g = grad l(x; xi) on the same batch."""
    return lambda x, g_batch: _scaled(g_batch, rho)


def fixed_direction(rho: float, d: torch.Tensor) -> Perturbation:
    """e = rho d / ||d|| for every batch (an ascent direction that does not depend on xi)."""
    e = _scaled(d, rho)
    return lambda x, g_batch: e


def method_perturbation(method: str, rho: float, x_prev: torch.Tensor, x: torch.Tensor) -> Perturbation | None:
    """The perturbation a method applies at the global model x_r, or None for non-SAM methods.

    FedLESAM: e = rho (-Delta_bar_{r-1}) / ||.||, and -Delta_bar_{r-1} is x_{r-1} - x_r
    (up to the factor eta_g), exactly available from consecutive snapshots.
    FedWMSAM: e_b = rho delta_b / ||delta_b|| with delta_b = (x_r + b u_k) - x_b, the gap to the
    momentum-extrapolated target. u_k ~ m_r = -Delta_bar_{r-1} / (K eta) points uphill, and the
    local iterates x_b move downhill, so delta_b points along u_k to first order in the local
    drift; the analysis takes that first-order direction x_{r-1} - x_r from the snapshots, since
    the clients' local iterates are not stored.
    """
    if method in BATCH_ASCENT:
        return batch_ascent(rho)
    if method in TRAJECTORY:
        return fixed_direction(rho, x_prev - x)
    return None


def method_rho(p: SimpleNamespace, method: str) -> float:
    """methods.<name>.rho when the method declares one, else analysis.default_rho."""
    return float(getattr(getattr(p.methods, method, None), "rho", p.analysis.default_rho))


# ----- sigma^2 and sigma_rho^2 -----
def noise_batches(n: int, batch_size: int, num_batches: int, seed: int) -> list[torch.Tensor]:
    """Index sets of ``num_batches`` minibatches of B distinct samples each, drawn from n samples."""
    if batch_size > n:
        raise ValueError(f"minibatch size {batch_size} exceeds the {n} samples of the analysis set")
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=gen)[:batch_size] for _ in range(num_batches)]


def gradient_noise(obj: Objective, x: torch.Tensor, batches: list[torch.Tensor],
                   perturbation: Perturbation | None = None, g_full: torch.Tensor | None = None) -> dict:
    """sigma^2 = mean_b ||grad l(x; xi_b) - grad f(x)||^2 and, with a perturbation,
    sigma_rho^2 = mean_b ||grad l(x + e_b; xi_b) - grad f(x)||^2 on the same batches; each with
    its standard error over the batches. Without a perturbation sigma_rho^2 = sigma^2."""
    g = obj.grad(x) if g_full is None else g_full
    plain, perturbed = [], []
    for idx in batches:
        xb, yb = obj.x[idx], obj.y[idx]
        gb = obj.batch_grad(x, xb, yb)
        plain.append((gb - g).pow(2).sum().item())
        if perturbation is not None:
            e = perturbation(x, gb)
            perturbed.append((obj.batch_grad(x + e, xb, yb) - g).pow(2).sum().item())
    s2, s2_se = _mean_se(plain)
    r2, r2_se = _mean_se(perturbed) if perturbation is not None else (s2, s2_se)
    return {"sigma2": s2, "sigma2_se": s2_se, "sigma_rho2": r2, "sigma_rho2_se": r2_se}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error (NaN for a single value)."""
    a = np.asarray(xs, dtype=np.float64)
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


# ----- the bound -----
def wmsam_bound(L: float, delta0: float, sigma_rho2: float, S: float, K: float, R: float, N: float) -> float:
    """(1/R) sum_r E||grad f(x_r)||^2 <~ sqrt(L Delta_0 sigma_rho^2 / (S K R)) + (L Delta_0 / R)(1 + N^(2/3) / S).

    The authors' summary prints the first term without the square root; with the root both terms
    have the units of ||grad f||^2, so the square-root form is implemented (SPEC section 2).
    Evaluated with constant 1 in front of each term.
    """
    return float(np.sqrt(L * delta0 * sigma_rho2 / (S * K * R)) + (L * delta0 / R) * (1 + N ** (2 / 3) / S))


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def mean_local_steps(fed: engine.Federation, local_epochs: int, batch_size: int) -> float:
    """K averaged over the clients: each takes epochs * ceil(n_k / B) steps."""
    return float(np.mean([local_epochs * -(-len(y) // batch_size) for y in fed.client_y]))


# ----- measurement along a trajectory -----
def analysis_set(fed: engine.Federation, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of n samples of the federation's pooled training data (seeded permutation)."""
    x, y = torch.cat(fed.client_x), torch.cat(fed.client_y)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def objectives(model_name: str, fed: engine.Federation, a: SimpleNamespace, data_seed: int,
               batch_size: int) -> tuple[Objective, Objective]:
    """(f on ``analysis.samples`` samples, f on the first ``analysis.hessian_samples`` of them for HVPs)."""
    x, y = analysis_set(fed, a.samples, data_seed)
    worker = Worker(build_model(model_name, fed.data.input_shape, fed.data.num_classes))
    h = min(a.hessian_samples, len(y))
    return Objective(worker, x, y, batch_size=batch_size), Objective(worker, x[:h], y[:h], batch_size=batch_size)


def analyse_trajectory(obj: Objective, hess: Objective, snapshots: dict[int, torch.Tensor], points: list[int],
                       method: str, rho: float, a: SimpleNamespace, batch_size: int) -> list[dict]:
    """One row per snapshot round: f, accuracy, ||grad f||^2; at each round r of ``points`` (r-1 must
    be a snapshot too) also lambda_max, the secant to r-1, sigma^2, sigma_rho^2 and (L rho)^2."""
    rounds = sorted(snapshots)
    grads, rows = {}, []
    for r in rounds:
        f, acc = obj.value(snapshots[r])
        grads[r] = obj.grad(snapshots[r])
        rows.append({"round": r, "f": f, "accuracy": acc, "grad_sq": grads[r].pow(2).sum().item()})
    batches = noise_batches(obj.n, batch_size, a.noise_batches, a.seed)
    for row in rows:
        r = row["round"]
        if r not in points:
            continue
        x, x_prev = snapshots[r], snapshots[r - 1]
        (lam,), _, used = power_iteration(hess.hvp(x), hess.dim, iters=a.power_iters, tol=a.power_tol, seed=a.seed)
        step = (x - x_prev).norm().item()
        # secant ||grad f(x_r) - grad f(x_{r-1})|| / ||x_r - x_{r-1}||: a lower estimate of L along the path
        secant = (grads[r] - grads[r - 1]).norm().item() / step if step > 0 else float("nan")
        pert = method_perturbation(method, rho, x_prev, x)
        noise = gradient_noise(obj, x, batches, pert, g_full=grads[r])
        row.update(lambda_max=lam, power_products=used[0], secant=secant, rho=rho if pert else 0.0, **noise,
                   sigma2_plus_L_rho2=noise["sigma2"] + (lam * (rho if pert else 0.0)) ** 2)
    return rows


def mean_over_rounds(rows: list[dict], key: str, R: int) -> float:
    """(1/R) sum_{r=0}^{R-1} of a per-snapshot quantity, linearly interpolated between snapshot rounds
    (exact when every round is a snapshot)."""
    r = np.array([row["round"] for row in rows], float)
    v = np.array([row[key] for row in rows], float)
    return float(np.interp(np.arange(R), r, v).mean())


def pair_ends(rounds: list[int]) -> list[int]:
    """Snapshot rounds r whose predecessor r-1 is a snapshot as well."""
    s = set(rounds)
    return [r for r in sorted(s) if r - 1 in s]


def summarise_method(rows: list[dict], delta0: float, S: int, K: float, R: int, N: int) -> dict:
    """The constants of one method (L = max over its points, sigma's = mean) and its bound."""
    pts = [row for row in rows if "lambda_max" in row]
    L = max(row["lambda_max"] for row in pts)
    s = {
        "L_power": L,
        "L_secant": max(row["secant"] for row in pts),
        "sigma2": float(np.mean([row["sigma2"] for row in pts])),
        "sigma_rho2": float(np.mean([row["sigma_rho2"] for row in pts])),
        "rho": pts[0]["rho"],
    }
    s["L_rho_sq"] = (L * s["rho"]) ** 2
    s["sigma2_plus_L_rho2"] = s["sigma2"] + s["L_rho_sq"]
    s["bound"] = wmsam_bound(L, delta0, s["sigma_rho2"], S, K, R, N)
    s["measured_avg_grad_sq"] = mean_over_rounds(rows, "grad_sq", R)
    s["bound_holds"] = bool(s["measured_avg_grad_sq"] <= s["bound"])
    return s


# ----- scaling sweeps -----
def sweep_settings(a: SimpleNamespace) -> list[dict]:
    """One setting per swept value; the other three parameters stay at their base values."""
    base = sweep_base(a)
    out = []
    for k, key in SWEEPS.items():
        for v in sorted(getattr(a, key)):
            out.append({"param": k, **base, k: v})
    return out


def check_sweeps(p: SimpleNamespace, fed: engine.Federation) -> None:
    """Bad sweep values stop the stage before any work, naming the key and what is allowed."""
    from fedlib.algorithms import REGISTRY

    a = p.analysis
    if a.sweep_method not in REGISTRY:
        raise ValueError(f"params: analysis.sweep_method = {a.sweep_method!r} is not allowed; "
                         f"expected one of {', '.join(sorted(REGISTRY))}")
    if max(a.sweep_num_clients) > fed.num_clients:
        raise ValueError(f"params: analysis.sweep_num_clients = {a.sweep_num_clients} exceeds the partition's "
                         f"{fed.num_clients} clients; allowed: 1..{fed.num_clients}")
    if max(a.sweep_clients_per_round) > min(a.sweep_num_clients):
        raise ValueError(f"params: analysis.sweep_clients_per_round = {a.sweep_clients_per_round} has a value above "
                         f"min(analysis.sweep_num_clients) = {min(a.sweep_num_clients)}; allowed: 1..that")


def run_sweeps(p: SimpleNamespace, params_path: str | Path, fed: engine.Federation, progress: bool = True) -> dict:
    """Train ``analysis.sweep_method`` on ``analysis.sweep_model`` once per sweep setting (engine.train
    with params overrides, every round kept as a snapshot) and measure (1/R) sum_r ||grad f(x_r)||^2.
    Sweeping N keeps the first N clients of the partition, so each client keeps its data and its K.
    The bound's constants are estimated on the base run and held fixed across settings."""
    a, t = p.analysis, p.train
    check_sweeps(p, fed)
    settings = sweep_settings(a)
    unique = {tuple(s[k] for k in SWEEPS): s for s in settings}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, s in tqdm(unique.items(), desc="scaling sweeps", disable=not progress):
            sub = engine.Federation(fed.data, fed.client_x[: s["N"]], fed.client_y[: s["N"]])
            q = load_params(params_path, {
                "train.methods": [a.sweep_method], "train.model": a.sweep_model, "train.rounds": s["R"],
                "train.clients_per_round": s["S"], "train.local_epochs": s["E"],
                "train.snapshot_rounds": list(range(s["R"] + 1)), "train.eval_every": s["R"],
                "train.checkpoint_every": s["R"]})
            run = Path(tmp) / "-".join(map(str, key))
            engine.train(q, a.sweep_method, a.seed, run, fed=sub, model_dir=run, progress=False)
            saved = engine.load_models(run / "models.pt")
            snaps = {**saved["snapshots"], s["R"]: saved["final"]}
            obj, hess = objectives(a.sweep_model, sub, a, p.data.seed, t.eval_batch_size)
            points = [1, s["R"] // 2, s["R"]] if _is_base(s, a) else []
            rows = analyse_trajectory(obj, hess, snaps, sorted(set(points)), a.sweep_method,
                                      method_rho(p, a.sweep_method), a, t.batch_size)
            runs[key] = {"rows": rows, "K": mean_local_steps(sub, s["E"], t.batch_size),
                         "measured": mean_over_rounds(rows, "grad_sq", s["R"]),
                         "f_min": min(r["f"] for r in rows), "f0": rows[0]["f"]}
    base = next(runs[k] for k, s in unique.items() if _is_base(s, a))
    pts = [r for r in base["rows"] if "lambda_max" in r]
    L = max(r["lambda_max"] for r in pts)
    sigma_rho2 = float(np.mean([r["sigma_rho2"] for r in pts]))
    delta0 = base["f0"] - min(r["f_min"] for r in runs.values())
    table = []
    for s in settings:
        run = runs[tuple(s[k] for k in SWEEPS)]
        table.append({**s, "K": run["K"], "measured_avg_grad_sq": run["measured"],
                      "predicted_bound": wmsam_bound(L, delta0, sigma_rho2, s["S"], run["K"], s["R"], s["N"])})
    slopes = {}
    for k in SWEEPS:
        rows = [r for r in table if r["param"] == k]
        x = [r["K"] if k == "E" else r[k] for r in rows]
        slopes["K" if k == "E" else k] = {
            "predicted": loglog_slope(x, [r["predicted_bound"] for r in rows]),
            "measured": loglog_slope(x, [r["measured_avg_grad_sq"] for r in rows])}
    return {"constants": {"L": L, "sigma_rho2": sigma_rho2, "delta0": delta0, "method": a.sweep_method,
                          "model": a.sweep_model}, "table": table, "slopes": slopes}


def sweep_base(a: SimpleNamespace) -> dict:
    """The base setting: the middle value of each sweep list."""
    return {k: sorted(getattr(a, key))[len(getattr(a, key)) // 2] for k, key in SWEEPS.items()}


def _is_base(s: dict, a: SimpleNamespace) -> bool:
    return all(s[k] == v for k, v in sweep_base(a).items())


def plot_scaling(sweep: dict, path=None):
    """Measured (1/R) sum ||grad f(x_r)||^2 and the predicted bound against S, K, R and N, log-log,
    each normalised to its value at the base setting so the slopes can be compared."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), layout="constrained")
    for ax, k in zip(axes, SWEEPS):
        name = "K" if k == "E" else k
        rows = [r for r in sweep["table"] if r["param"] == k]
        x = np.array([r["K"] if k == "E" else r[k] for r in rows], float)
        mid = len(rows) // 2
        for col, style, label in (("measured_avg_grad_sq", "o-", "measured"), ("predicted_bound", "s--", "bound")):
            y = np.array([r[col] for r in rows], float)
            slope = sweep["slopes"][name]["predicted" if label == "bound" else "measured"]
            ax.plot(x, y / y[mid], style, label=f"{label} (slope {slope:+.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{v:.3g}" for v in x])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("relative to the base setting")
    fig.suptitle(f"{sweep['constants']['method']} on {sweep['constants']['model']}: "
                 r"$(1/R)\sum_r\|\nabla f(x_r)\|^2$ and the bound")
    return _save(fig, path)
