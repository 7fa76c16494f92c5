"""Scaling sweeps of the FedWMSAM bound in S, K, R and N (docs/methods.md#sweeps).

One method on one model, trained once per (setting, seed) at constant step size (lr_decay = 1, the
theory's setting). Each sweep moves one parameter from the base setting:

- S (clients per round) and E (local epochs; K = E * ceil(n_k / B) averaged over clients) directly;
- R by prefixes of the base runs: with a constant step the first R rounds of an R_max run are the
  R-round run (sampling is seeded by (seed, r)), so (1/R) sum_{r<R} ||grad f(x_r)||^2 is read off one log;
- N by re-splitting the same pool (the training set) over N clients with the partition's scheme, so f
  does not change; E is scaled with N (E = E_base N / N_base) so that K stays the same and only N moves.

f is the mean cross-entropy over the engine's train-loss set (train.train_loss_samples samples of the
pool, seeded by data.seed): the engine logs ||grad f(x_r)||^2 on it every round, and L, sigma_rho^2 and
Delta_0 are measured on the same set. Every run lives in its own directory with the engine's
checkpoints and a cached measurement, so a killed sweep resumes where it stopped; both are reused only
while their fingerprints match the settings now (a changed setting retrains, never mixes).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fedlib import engine, partition
from fedlib.algorithms.base import Worker
from fedlib.analysis import bounds, noise
from fedlib.analysis.hessian import Objective, power_iteration
from fedlib.config import set_dotted, to_dict, validate
from fedlib.models import build_model

KEYS = {"S": "clients_per_round", "E": "local_epochs", "R": "rounds", "N": "num_clients"}


def lists(a: SimpleNamespace, prefix: str) -> dict:
    """{"S": [...], "E": [...], "R": [...], "N": [...], "seeds": [...]} of analysis.<prefix>_*."""
    out = {k: sorted(getattr(a, f"{prefix}_{v}")) for k, v in KEYS.items()}
    out["seeds"] = list(getattr(a, f"{prefix}_seeds"))
    return out


def base_setting(lst: dict) -> dict:
    """S, E, N at the smallest value of their lists (the cheapest run; each sweep moves upward from it);
    R at its largest (the other R are prefixes)."""
    return {"S": lst["S"][0], "E": lst["E"][0], "N": lst["N"][0], "R": max(lst["R"])}


def epochs_for(N: int, base: dict) -> int:
    """E = E_base N / N_base keeps K = E n_k / B fixed when the pool is re-split over N clients."""
    return base["E"] * N // base["N"]


def check(lst: dict, pool: int, batch_size: int, prefix: str) -> None:
    """Bad sweep values stop the stage before any work, naming the key and what is allowed."""
    base = base_setting(lst)
    for N in lst["N"]:
        if (base["E"] * N) % base["N"]:
            raise ValueError(f"params: analysis.{prefix}_num_clients = {lst['N']}: N = {N} needs E_base * N / N_base "
                             f"= {base['E']} * {N} / {base['N']} local epochs, not an integer; allowed: N with E_base N a "
                             f"multiple of N_base = min(N)")
        if pool // N < batch_size:
            raise ValueError(f"params: analysis.{prefix}_num_clients = {lst['N']}: N = {N} leaves {pool // N} samples "
                             f"a client, below train.batch_size = {batch_size}; allowed: N <= {pool // batch_size}")
    if max(lst["S"]) > min(lst["N"]):
        raise ValueError(f"params: analysis.{prefix}_clients_per_round = {lst['S']} exceeds min of "
                         f"analysis.{prefix}_num_clients = {min(lst['N'])}; allowed: 1..that")


def runs(lst: dict) -> list[dict]:
    """The distinct runs (R = R_max) as {"S", "E", "N", "R"}, base first."""
    base = base_setting(lst)
    out = [base]
    out += [{**base, "S": s} for s in lst["S"]] + [{**base, "E": e} for e in lst["E"]]
    out += [{**base, "N": n, "E": epochs_for(n, base)} for n in lst["N"]]
    uniq = {}
    for s in out:
        uniq.setdefault((s["S"], s["E"], s["N"]), s)
    return list(uniq.values())


def run_dir(root: Path, s: dict, seed: int) -> Path:
    return Path(root) / f"S{s['S']}-E{s['E']}-N{s['N']}-R{s['R']}-seed{seed}"


def loss_set(data, n: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's train-loss set: the first n of a permutation of the training pool seeded by data.seed."""
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(data_seed))[:n]
    return data.x_train[idx], data.y_train[idx]


def train_one(p: SimpleNamespace, data, s: dict, seed: int, root: Path, method: str, model: str,
              lr: float) -> Path:
    """Train (or resume) one sweep run; returns its directory. A finished run is reused only when its
    fingerprint.txt matches the run's settings now (everything engine.run_fingerprint covers, root train.*
    included); otherwise its summary and measurement are dropped and it is trained again, so a changed
    setting never mixes old runs into a new sweep."""
    out = run_dir(root, s, seed)
    raw = to_dict(p)              # the stage's validated params, not a re-read of a file that may have changed
    for key, value in {
        "partition.num_clients": s["N"], "train.methods": [method], "train.model": model, "train.rounds": s["R"],
        "train.clients_per_round": s["S"], "train.local_epochs": s["E"], "train.lr": lr, "train.lr_decay": 1.0,
        "train.snapshot_rounds": [0, s["R"] - 1], "train.eval_every": 5, "train.checkpoint_every": 5,
        "train.grad_norm_every": 1}.items():
        set_dotted(raw, key, value)
    q = validate(raw)
    fp = engine.run_fingerprint(q, method, seed)
    if (out / "summary.json").exists() and _text(out / "fingerprint.txt") == fp:
        return out
    for stale in ("summary.json", "analysis.json", "fingerprint.txt"):
        (out / stale).unlink(missing_ok=True)
    pt = q.partition
    parts = partition.make_partition(data.y_train.numpy(), pt.scheme, s["N"], alpha=pt.alpha,
                                     classes_per_client=pt.classes_per_client, min_client_size=pt.min_client_size,
                                     seed=pt.seed)
    engine.train(q, method, seed, out, fed=engine.federate(data, parts), model_dir=out, progress=False)
    (out / "fingerprint.txt").write_text(fp + "\n")
    return out


def _text(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def measure_settings(p: SimpleNamespace, out: Path, s: dict, rho: float, lr: float) -> dict:
    """What a cached measurement depends on besides the model it measures: the run (its fingerprint) and the
    analysis settings."""
    a = p.analysis
    return {"run": _text(out / "fingerprint.txt"), "R": s["R"], "rho": rho, "lr": lr,
            "analysis": {k: getattr(a, k) for k in ("hvp_batch", "power_iters", "power_tol", "noise_batches", "seed")}}


def measure_one(p: SimpleNamespace, data, out: Path, s: dict, method: str, rho: float, lr: float) -> dict:
    """Per run (cached in analysis.json): ||grad f(x_r)||^2 for r = 0..R, f(x_r), lambda_max at x_R (power
    iteration on the whole set), sigma^2 and sigma_rho^2 of the method's perturbation at x_R. The cache is
    reused only under the same ``measure_settings``."""
    cache = out / "analysis.json"
    settings = json.loads(json.dumps(measure_settings(p, out, s, rho, lr)))
    if cache.exists() and json.loads(cache.read_text()).get("settings") == settings:
        return json.loads(cache.read_text())
    a, t = p.analysis, p.train
    saved = engine.load_models(out / "models.pt")
    xs, ys = loss_set(data, t.train_loss_samples, p.data.seed)
    obj = Objective(Worker(build_model(saved["model"], saved["input_shape"], saved["num_classes"])), xs, ys,
                    batch_size=a.hvp_batch)
    x0, x_prev, x = saved["snapshots"][0], saved["snapshots"][s["R"] - 1], saved["final"]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    grad_sq = {0: obj.grad(x0).pow(2).sum().item(), **{int(r["round"]): float(r["grad_sq"]) for r in rows}}
    f = {0: obj.value(x0)[0], **{int(r["round"]): float(r["train_loss"]) for r in rows if r["train_loss"] != ""}}
    (lam,), _, _ = power_iteration(obj.hvp(x, keep_graphs=a.keep_graphs), obj.dim, iters=a.power_iters,
                                   tol=a.power_tol, seed=a.seed)
    pert = noise.method_perturbation(method, rho, x_prev, x)
    batches = noise.noise_batches(obj.n, t.batch_size, a.noise_batches, a.seed)
    nz = noise.gradient_noise(obj, x, batches, {rho: pert} if pert else None)
    res = {"grad_sq": grad_sq, "f": f, "lambda_max": lam, "sigma2": nz["sigma2"],
           "sigma_rho2": nz["rho"][rho][0] if pert else nz["sigma2"], "lr": lr, "settings": settings}
    cache.write_text(json.dumps(res))
    return json.loads(cache.read_text())      # int keys become strings, as on a later read


def mean_K(data, p: SimpleNamespace, s: dict) -> float:
    """K averaged over the clients of the N-client split: each takes E * ceil(n_k / B) steps."""
    pt = p.partition
    parts = partition.make_partition(data.y_train.numpy(), pt.scheme, s["N"], alpha=pt.alpha,
                                     classes_per_client=pt.classes_per_client, min_client_size=pt.min_client_size,
                                     seed=pt.seed)
    return float(np.mean([s["E"] * -(-len(q) // p.train.batch_size) for q in parts]))


def analyse(p: SimpleNamespace, data, lst: dict, measured: dict, method: str, model: str, lr: float) -> dict:
    """Constants, the measured averages, the slope of each sweep with its 95 % interval over seeds, the
    slopes the bound allows, the verdicts and the fitted constants. ``measured[(S, E, N, seed)]`` is
    ``measure_one``'s result; runs missing from it (a study still under way) are left out, and each sweep's
    slope uses the seeds that have all its points, or else the points that all seeds have (``used``)."""
    base, seeds = base_setting(lst), lst["seeds"]
    ms = list(measured.values())
    f_star = min(min(m["f"].values()) for m in ms)          # lowest f on any run at any round
    base_runs = [measured[(base["S"], base["E"], base["N"], sd)] for sd in seeds
                 if (base["S"], base["E"], base["N"], sd) in measured]
    f0 = float(np.mean([m["f"]["0"] for m in base_runs]))
    L = max(m["lambda_max"] for m in ms)                    # L is a sup: the largest lambda_max met
    const = {"L": L, "delta0": f0 - f_star, "f_x0": f0, "f_star": f_star, "method": method, "model": model,
             "lr": lr, "sigma2": float(np.mean([m["sigma2"] for m in base_runs])),
             "sigma_rho2": float(np.mean([m["sigma_rho2"] for m in base_runs])),
             "eta_L_max": lr * L, "base": base, "seeds": seeds}
    K, table = {}, []
    for name, values in (("S", lst["S"]), ("K", lst["E"]), ("R", lst["R"]), ("N", lst["N"])):
        for v in values:
            s = dict(base)
            if name == "S":
                s["S"] = v
            elif name == "K":
                s["E"] = v
            elif name == "N":
                s.update(N=v, E=epochs_for(v, base))
            R = v if name == "R" else base["R"]
            key = (s["S"], s["E"], s["N"])
            have = [sd for sd in seeds if (*key, sd) in measured]
            if not have:
                continue
            K.setdefault(key, mean_K(data, p, s))
            ys = {sd: bounds.run_average({int(r): g for r, g in measured[(*key, sd)]["grad_sq"].items()}, R)
                  for sd in have}
            lam = max(measured[(*key, sd)]["lambda_max"] for sd in have)
            t1, t2 = bounds.bound_terms(L, const["delta0"], const["sigma_rho2"], s["S"], K[key], R, s["N"])
            table.append({"param": name, "value": v, "S": s["S"], "E": s["E"], "K": K[key], "R": R, "N": s["N"],
                          "seeds": len(have), **{f"avg_grad_sq_seed{sd}": y for sd, y in ys.items()},
                          "avg_grad_sq": float(np.mean(list(ys.values()))), "T1": float(t1), "T2": float(t2),
                          "lambda_max_final": lam, "eta_L": lr * lam, "eta_K_L": lr * K[key] * lam})
    col = {k: [r[k] for r in table] for k in ("avg_grad_sq", "T1", "T2")}
    fit = bounds.fit_constants(col["avg_grad_sq"], col["T1"], col["T2"])
    smallest = bounds.smallest_constants(col["avg_grad_sq"], col["T1"], col["T2"])
    slopes = {}
    for name in ("S", "K", "R", "N"):
        rows, use = _complete_block([r for r in table if r["param"] == name], seeds)
        if len(rows) < 2:
            continue
        x = [r["K"] if name == "K" else r["value"] for r in rows]
        y = np.array([[r[f"avg_grad_sq_seed{sd}"] for r in rows] for sd in use])
        meas = bounds.slope_interval(x, y)
        pred = bounds.predicted_slopes(x, [r["T1"] for r in rows], [r["T2"] for r in rows], fit["a"], fit["b"])
        slopes[name] = {"measured": meas, "predicted": pred, "verdict": bounds.slope_verdict(meas, pred),
                        "used": {"points": [r["value"] for r in rows], "seeds": use}}
    return {"constants": const, "table": table, "fit": fit, "smallest": smallest, "slopes": slopes}


def _complete_block(rows: list[dict], seeds: list[int]) -> tuple[list[dict], list[int]]:
    """All points with the seeds that have every one of them, when that is at least two seeds; else the
    points that every seed has."""
    full = [sd for sd in seeds if all(f"avg_grad_sq_seed{sd}" in r for r in rows)]
    if len(full) >= 2 or len(full) == len(seeds):
        return rows, full
    common = [r for r in rows if all(f"avg_grad_sq_seed{sd}" in r for sd in seeds)]
    return (common, seeds) if len(common) >= 2 else (rows, full)


def plot(result: dict, path=None):
    """Measured (1/R) sum ||grad f(x_r)||^2 (mean over seeds, 95 % t-interval) against S, K, R and N,
    log-log, with the fitted a T1 + b T2 and the two terms' shapes through the base point."""
    from scipy import stats

    from fedlib.plots import _save, plt

    seeds = result["constants"]["seeds"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), layout="constrained")
    fit = result["fit"]
    for ax, name in zip(axes, ("S", "K", "R", "N")):
        if name not in result["slopes"]:
            ax.set_title(f"{name}: fewer than two points")
            continue
        sl = result["slopes"][name]
        use = sl["used"]["seeds"]
        rows = [r for r in result["table"] if r["param"] == name and r["value"] in sl["used"]["points"]]
        x = np.array([r["K"] if name == "K" else r["value"] for r in rows], float)
        y = np.array([[r[f"avg_grad_sq_seed{sd}"] for sd in use] for r in rows])
        tq = stats.t.ppf(0.975, len(use) - 1) if len(use) > 1 else np.nan
        m = y.mean(1)
        half = tq * y.std(1, ddof=1) / np.sqrt(len(use)) if len(use) > 1 else np.zeros_like(m)
        ax.errorbar(x, m, yerr=half, fmt="o", capsize=3, label=f"measured, slope {sl['measured']['slope']:+.2f} "
                    f"[{sl['measured']['lo']:+.2f}, {sl['measured']['hi']:+.2f}]")
        t1, t2 = np.array([r["T1"] for r in rows]), np.array([r["T2"] for r in rows])
        ax.plot(x, fit["a"] * t1 + fit["b"] * t2, "k-", lw=1,
                label=f"fitted a T1 + b T2, slope {sl['predicted'].get('fitted', np.nan):+.2f}")
        c = result["smallest"]["common"]
        ax.plot(x, c * (t1 + t2), "r-", lw=1, label=f"smallest common c (T1 + T2), c = {c:.3g}")
        mid = (len(x) - 1) // 2 if name != "R" else len(x) - 1
        for t, st, lab in ((t1, "--", "T1"), (t2, ":", "T2")):
            ax.plot(x, t / t[mid] * m[mid], st, color="gray", label=f"{lab} shape, slope {sl['predicted'][lab]:+.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_title(f"{name}: {sl['verdict']}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(r"$(1/R)\sum_r\|\nabla f(x_r)\|^2$")
    c = result["constants"]
    fig.suptitle(f"{c['method']} on {c['model']}, eta = {c['lr']:g} (eta L_max = {c['eta_L_max']:.2f}), "
                 f"{len(seeds)} seeds; bars: 95 % t-intervals over seeds")
    return _save(fig, path)
