"""What each pipeline stage computes and writes; the notebooks call these and show the results.

Downstream stages read the files written here (JSON, CSV, PNG), never an executed notebook.
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fedlib import costs, engine, partition, plots
from fedlib.config import load_params, to_dict

RESULTS = Path("results")


def run_name(method: str, seed: int) -> str:
    return f"{method}-{seed}"


def partition_stage(p: SimpleNamespace, partition_path: str | Path, out_dir: str | Path) -> dict:
    """Split the training set over the clients; write the indices, per-client class counts and a heat-map."""
    out_dir = Path(out_dir)
    data = engine.load_data(p)
    q = p.partition
    parts = partition.make_partition(data.y_train.numpy(), q.scheme, q.num_clients, alpha=q.alpha,
                                     classes_per_client=q.classes_per_client, min_client_size=q.min_client_size,
                                     seed=q.seed, groups=data.groups)
    partition.save(parts, partition_path, {"data": to_dict(p.data), "partition": to_dict(q)})
    counts = partition.class_counts(data.y_train.numpy(), parts, data.num_classes)
    sizes = counts.sum(1)
    stats = {
        "dataset": data.name, "train_samples": int(len(data.y_train)), "test_samples": int(len(data.y_test)),
        "clients": len(parts), "min_size": int(sizes.min()), "max_size": int(sizes.max()),
        "mean_size": float(sizes.mean()), "mean_classes_per_client": float((counts > 0).sum(1).mean()),
        "class_counts": counts.tolist(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stats.json").write_text(json.dumps(stats) + "\n")
    plots.partition_heatmap(counts, out_dir / "heatmap.png",
                            title=f"{data.name}: {q.scheme} partition over {len(parts)} clients")
    return stats


def load_federation(p: SimpleNamespace, partition_path: str | Path) -> engine.Federation:
    data = engine.load_data(p)
    return engine.federate(data, partition.load(partition_path))


def train_stage(p: SimpleNamespace, method: str, seed: int, partition_path: str | Path,
                out_dir: str | Path, model_dir: str | Path, ckpt_dir: str | Path, progress: bool = True) -> dict:
    fed = load_federation(p, partition_path)
    return engine.train(p, method, seed, out_dir, fed=fed, ckpt_dir=ckpt_dir, model_dir=model_dir,
                        progress=progress)


def read_runs(train_dir: str | Path, methods: list[str], seeds: list[int]) -> dict:
    """{method: {"summaries": [...], "rows": [[row, ...] per seed]}} for the runs present."""
    out = {}
    for m in methods:
        runs = [Path(train_dir) / run_name(m, s) for s in seeds]
        missing = [r for r in runs if not (r / "summary.json").exists()]
        if missing:
            raise FileNotFoundError(f"no finished run in {missing[0]}; run `dvc repro` for the train stages")
        out[m] = {"summaries": [json.loads((r / "summary.json").read_text()) for r in runs],
                  "rows": [list(csv.DictReader(open(r / "metrics.csv"))) for r in runs]}
    return out


def column(rows_per_seed: list[list[dict]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, values with shape (seeds, rounds)) of a metrics column, NaN where not logged."""
    rounds = np.array([int(r["round"]) for r in rows_per_seed[0]])
    vals = np.array([[float(r[name]) if r.get(name, "") != "" else np.nan for r in rows] for rows in rows_per_seed])
    return rounds, vals


def report_stage(p: SimpleNamespace, train_dir: str | Path, out_dir: str | Path) -> dict:
    """Accuracy and loss vs round for every method (mean and min..max over seeds), a final-accuracy
    table, and the wide CSVs that `dvc plots show` draws."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = read_runs(train_dir, p.train.methods, p.train.seeds)
    table = {}
    for m, run in runs.items():
        s = run["summaries"]
        table[m] = {
            "final_accuracy": float(np.mean([x["final_accuracy"] for x in s])),
            "final_accuracy_std": float(np.std([x["final_accuracy"] for x in s])),
            "last10_accuracy": float(np.mean([x["last10_accuracy"] for x in s])),
            "best_accuracy": float(np.mean([x["best_accuracy"] for x in s])),
            "rounds_to_target": {a: _mean_or_none([x["rounds_to_target"][a] for x in s])
                                 for a in s[0]["rounds_to_target"]},
            "seconds_per_round": float(np.mean([x["seconds_per_round"] for x in s])),
            "seeds": len(s),
        }
    for col, label in (("test_accuracy", "test accuracy"), ("train_loss", "training loss")):
        series = {}
        for m, run in runs.items():
            rounds, vals = column(run["rows"], col)
            keep = ~np.isnan(vals).all(0)
            series[m] = vals[:, keep]
        x = rounds[keep]
        plots.curves(series, x, label, out_dir / f"{col}.png",
                     title=f"{label} vs round (mean, band = min..max over {len(p.train.seeds)} seeds)")
        with open(out_dir / f"{col}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["round", *series])
            for i, r in enumerate(x):
                w.writerow([int(r), *[repr(float(np.nanmean(v[:, i]))) for v in series.values()]])
    (out_dir / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown_table(table))
    return table


def _mean_or_none(xs):
    """Mean rounds to a target over seeds; None when any seed never reached it."""
    return None if any(x is None for x in xs) else float(np.mean(xs))


def markdown_table(table: dict) -> str:
    targets = list(next(iter(table.values()))["rounds_to_target"])
    head = ["method", "final acc", "last-10 acc", "best acc", *[f"rounds to {t}" for t in targets], "s/round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, t in table.items():
        rt = ["—" if t["rounds_to_target"][a] is None else f"{t['rounds_to_target'][a]:.0f}" for a in targets]
        lines.append(f"| {m} | {t['final_accuracy']:.4f} ± {t['final_accuracy_std']:.4f} | {t['last10_accuracy']:.4f} "
                     f"| {t['best_accuracy']:.4f} | " + " | ".join(rt) + f" | {t['seconds_per_round']:.3f} |")
    return "\n".join(lines) + "\n"


def _write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV with the union of the rows' keys as columns (blank where a row lacks one)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows({k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def _analysis_models(p: SimpleNamespace, models_dir: str | Path) -> dict[str, dict]:
    """{method: models.pt contents} of every method of train.methods, seed analysis.seed."""
    runs = {m: Path(models_dir) / run_name(m, p.analysis.seed) / "models.pt" for m in p.train.methods}
    missing = [str(r) for r in runs.values() if not r.exists()]
    if missing:
        raise FileNotFoundError(f"no trained model {missing[0]}; run `dvc repro` for the train stages "
                                f"(analysis.seed = {p.analysis.seed} must be one of train.seeds)")
    return {m: engine.load_models(r) for m, r in runs.items()}


def bounds_stage(p: SimpleNamespace, params_path: str | Path, partition_path: str | Path, models_dir: str | Path,
                 out_dir: str | Path, progress: bool = True) -> dict:
    """sigma^2, sigma_rho^2, L (power iteration and secants) and Delta_0 at the snapshots of every method;
    the FedWMSAM bound beside the measured average ||grad f(x_r)||^2; the scaling sweeps (SPEC 2, 5)."""
    from tqdm.auto import tqdm

    from fedlib.analysis import bounds

    a, t = p.analysis, p.train
    rounds = sorted({*t.snapshot_rounds, t.rounds})
    if 0 not in rounds or not bounds.pair_ends(rounds):
        raise ValueError(f"params: train.snapshot_rounds = {t.snapshot_rounds} must contain 0 (for Delta_0) and a "
                         f"pair of consecutive rounds r-1, r (the final round {t.rounds} counts), e.g. [0, 1, 20, 21]")
    fed = load_federation(p, partition_path)
    bounds.check_sweeps(p, fed)
    saved = _analysis_models(p, models_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    rows = {}
    for m in tqdm(t.methods, desc="bound terms", disable=not progress):
        obj, hess = bounds.objectives(saved[m]["model"], fed, a, p.data.seed, t.eval_batch_size)
        snaps = {**saved[m]["snapshots"], t.rounds: saved[m]["final"]}
        rows[m] = bounds.analyse_trajectory(obj, hess, snaps, bounds.pair_ends(sorted(snaps)), m,
                                            bounds.method_rho(p, m), a, t.batch_size)
    f_x0 = rows[t.methods[0]][0]["f"]                 # x_0 is the same initial model for every method
    f_star = min(r["f"] for mr in rows.values() for r in mr)
    setting = {"S": t.clients_per_round, "K": bounds.mean_local_steps(fed, t.local_epochs, t.batch_size),
               "R": t.rounds, "N": fed.num_clients}
    methods = {m: bounds.summarise_method(r, f_x0 - f_star, **setting) for m, r in rows.items()}
    timing = {"methods_s": time.perf_counter() - start}
    sweep = bounds.run_sweeps(p, params_path, fed, progress)
    timing["sweeps_s"] = time.perf_counter() - start - timing["methods_s"]

    result = {"f_x0": f_x0, "f_star": f_star, "delta0": f_x0 - f_star, **setting, "methods": methods,
              "sweep": {"constants": sweep["constants"], "slopes": sweep["slopes"]}}
    (out_dir / "bounds.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")      # wall seconds, not a metric
    _write_rows(out_dir / "points.csv", [{"method": m, **r} for m, mr in rows.items() for r in mr])
    _write_rows(out_dir / "sweep.csv", sweep["table"])
    (out_dir / "table.md").write_text(bounds_markdown(result))
    bounds.plot_scaling(sweep, out_dir / "scaling.png")
    return result


def bounds_markdown(result: dict) -> str:
    head = ["method", "rho", "sigma^2", "sigma_rho^2", "sigma^2+(L rho)^2", "(L rho)^2", "L power", "L secant",
            "bound", "measured avg ||grad f||^2", "holds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in result["methods"].items():
        lines.append(f"| {m} | {s['rho']:g} | {s['sigma2']:.4g} | {s['sigma_rho2']:.4g} | {s['sigma2_plus_L_rho2']:.4g} "
                     f"| {s['L_rho_sq']:.3g} | {s['L_power']:.4g} | {s['L_secant']:.4g} | {s['bound']:.4g} "
                     f"| {s['measured_avg_grad_sq']:.4g} | {'yes' if s['bound_holds'] else 'no'} |")
    lines += ["", f"Delta_0 = f(x_0) - f* = {result['f_x0']:.4f} - {result['f_star']:.4f} = {result['delta0']:.4f}; "
              f"S = {result['S']}, K = {result['K']:.2f}, R = {result['R']}, N = {result['N']}", "",
              "| sweep | predicted slope | measured slope |", "|---|---|---|"]
    lines += [f"| {k} | {v['predicted']:+.3f} | {v['measured']:+.3f} |" for k, v in result["sweep"]["slopes"].items()]
    return "\n".join(lines) + "\n"


def flatness_stage(p: SimpleNamespace, partition_path: str | Path, models_dir: str | Path, out_dir: str | Path,
                   progress: bool = True) -> dict:
    """Flatness of every method's final model: lambda_max, lambda_max / lambda_k (Lanczos), the Hessian
    trace (Hutchinson, with its standard error), 1-D and 2-D filter-normalised loss landscapes (SPEC 5)."""
    from tqdm.auto import tqdm

    from fedlib.algorithms.base import Worker
    from fedlib.analysis import bounds, hessian, landscape
    from fedlib.models import build_model

    a, t = p.analysis, p.train
    fed = load_federation(p, partition_path)
    saved = _analysis_models(p, models_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xs, ys = bounds.analysis_set(fed, max(a.hessian_samples, a.landscape_samples), p.data.seed)
    alphas = np.linspace(-a.landscape_range, a.landscape_range, a.landscape_points_1d)
    grid = np.linspace(-a.landscape_range, a.landscape_range, a.landscape_points_2d)

    table, lines, planes, timing = {}, {}, {}, {}
    for m in tqdm(t.methods, desc="flatness", disable=not progress):
        start = time.perf_counter()
        s = saved[m]
        worker = Worker(build_model(s["model"], s["input_shape"], s["num_classes"]))
        x = s["final"]
        hess = hessian.Objective(worker, xs[:a.hessian_samples], ys[:a.hessian_samples], batch_size=t.eval_batch_size)
        hvp = hess.hvp(x)
        top, vectors = hessian.lanczos(hvp, hess.dim, k=a.top_k, iters=a.lanczos_iters, seed=a.seed)
        trace, trace_se = hessian.hutchinson_trace(hvp, hess.dim, probes=a.hutchinson_probes, seed=a.seed,
                                                   deflate=(top, vectors))
        del hvp
        spectrum_s = time.perf_counter() - start
        test_loss, test_acc = hessian.Objective(worker, fed.data.x_test, fed.data.y_test,
                                                batch_size=t.eval_batch_size).value(x)
        land = hessian.Objective(worker, xs[:a.landscape_samples], ys[:a.landscape_samples],
                                 batch_size=t.eval_batch_size)
        d1 = landscape.filter_normalised_direction(worker.model, x, a.direction_seed)
        d2 = landscape.filter_normalised_direction(worker.model, x, a.direction_seed + 1)
        lines[m], _ = landscape.loss_line(land, x, d1, alphas)
        planes[m] = landscape.loss_plane(land, x, d1, d2, grid, grid)
        table[m] = {"lambda_max": top[0], f"lambda_{a.top_k}": top[-1], "lambda_ratio": top[0] / top[-1],
                    "trace": trace, "trace_se": trace_se, "train_loss": float(lines[m][len(alphas) // 2]),
                    "test_loss": test_loss, "test_accuracy": test_acc}
        timing[m] = {"spectrum_s": spectrum_s, "total_s": time.perf_counter() - start}

    (out_dir / "flatness.json").write_text(json.dumps(table, indent=2) + "\n")
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")      # wall seconds, not a metric
    _write_rows(out_dir / "flatness.csv", [{"method": m, **r} for m, r in table.items()])
    _write_rows(out_dir / "landscape_1d.csv", [{"alpha": float(al), **{m: float(v[i]) for m, v in lines.items()}}
                                                for i, al in enumerate(alphas)])
    _write_rows(out_dir / "landscape_2d.csv", [{"method": m, "alpha": float(al), "beta": float(be), "loss": float(z[j, i])}
                                                for m, z in planes.items() for j, be in enumerate(grid)
                                                for i, al in enumerate(grid)])
    (out_dir / "table.md").write_text(flatness_markdown(table, a.top_k))
    where = f"{a.landscape_samples} training samples, eval mode, direction seed {a.direction_seed}"
    landscape.plot_lines(alphas, lines, out_dir / "landscape_1d.png", title=f"1-D loss landscapes ({where})")
    landscape.plot_planes(grid, grid, planes, out_dir / "landscape_2d.png", title=f"2-D loss landscapes ({where})")
    landscape.plot_sharpness_vs_accuracy(table, out_dir / "sharpness_vs_accuracy.png")
    return table


def flatness_markdown(table: dict, k: int) -> str:
    lines = [f"| method | lambda_max | lambda_max / lambda_{k} | trace ± se | test accuracy |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {r['lambda_max']:.4g} | {r['lambda_ratio']:.3g} | {r['trace']:.4g} ± {r['trace_se']:.2g} "
              f"| {r['test_accuracy']:.4f} |" for m, r in table.items()]
    return "\n".join(lines) + "\n"


# ----- split learning (SPEC sections 3 and 4): split_train -> split_costs -> split_report -----

SPLIT_SHARED = ("cut", "local_steps", "client_flops_per_s", "server_flops_per_s", "link_bytes_per_s",
                "straggler_share", "straggler_delay_s")


def split_params(p: SimpleNamespace, method: str, seed: int, *, cut: str | None = None, tau: int | None = None,
                 rounds: int | None = None) -> SimpleNamespace:
    """A copy of the validated params for one split run: the engine's train.* and partition.* fields
    taken from the `split:` section (so the run's fingerprint covers them) and the shared split
    settings written into methods.<method>; ``cut``, ``tau`` and ``rounds`` override for sweeps."""
    s, q = p.split, copy.deepcopy(p)
    t = q.train
    t.model, t.rounds, t.clients_per_round = s.model, rounds or s.rounds, s.clients_per_round
    t.batch_size, t.lr, t.eval_every = s.batch_size, s.lr, s.eval_every
    t.snapshot_rounds, t.target_accuracies = [], sorted({s.target_accuracy, s.mu_target_accuracy})
    q.partition.scheme, q.partition.num_clients, q.partition.alpha = s.scheme, s.num_clients, s.alpha
    q.partition.seed = s.partition_seed
    hp = getattr(q.methods, method)
    for key in SPLIT_SHARED:
        if hasattr(hp, key):
            setattr(hp, key, getattr(s, key))
    hp.system_seed = seed
    if cut is not None:
        hp.cut = cut
    if tau is not None:
        hp.tau = tau
    return q


def split_federation(p: SimpleNamespace) -> engine.Federation:
    """The split runs' own partition (deterministic, seeded): split.num_clients clients,
    split.scheme with split.alpha, drawn with split.partition_seed (MU-SplitFed's 10-client setting)."""
    s = p.split
    data = engine.load_data(p)
    parts = partition.make_partition(data.y_train.numpy(), s.scheme, s.num_clients, alpha=s.alpha,
                                     classes_per_client=p.partition.classes_per_client,
                                     min_client_size=p.partition.min_client_size, seed=s.partition_seed,
                                     groups=data.groups)
    return engine.federate(data, parts)


def split_runs(p: SimpleNamespace) -> list[dict]:
    """Every split method x seed at split.cut, then MU-SplitFed over split.mu_taus x split.mu_cuts
    (first seed, split.mu_rounds)."""
    s = p.split
    runs = [{"name": run_name(m, seed), "method": m, "seed": seed, "cut": s.cut, "rounds": s.rounds}
            for m in s.methods for seed in s.seeds]
    runs += [{"name": f"musplitfed-{cut}-tau{tau}", "method": "musplitfed", "seed": s.seeds[0], "cut": cut,
              "tau": tau, "rounds": s.mu_rounds} for cut in s.mu_cuts for tau in s.mu_taus]
    return runs


def split_train_stage(p: SimpleNamespace, out_dir: str | Path, ckpt_dir: str | Path, progress: bool = True) -> dict:
    """Train every split run (engine.train); a run whose settings equal an earlier one's is copied.
    Writes <out_dir>/<run>/{metrics,timing}.csv + summary.json and <out_dir>/../train_summary.json."""
    out_dir = Path(out_dir)
    fed = split_federation(p)
    done, table = {}, {}
    for run in split_runs(p):
        q = split_params(p, run["method"], run["seed"], cut=run["cut"], tau=run.get("tau"), rounds=run["rounds"])
        key = engine.run_fingerprint(q, run["method"], run["seed"])
        if key in done:
            shutil.copytree(out_dir / done[key], out_dir / run["name"], dirs_exist_ok=True)
        else:
            engine.train(q, run["method"], run["seed"], out_dir / run["name"], fed=fed,
                         ckpt_dir=Path(ckpt_dir) / run["name"], progress=progress)
            done[key] = run["name"]
        summary = json.loads((out_dir / run["name"] / "summary.json").read_text())
        rows = list(csv.DictReader(open(out_dir / run["name"] / "metrics.csv")))
        target = p.split.mu_target_accuracy if "tau" in run else p.split.target_accuracy
        table[run["name"]] = {**run, "tau": q.methods.musplitfed.tau if run["method"] == "musplitfed" else None,
                              "target_accuracy": target,
                              "final_accuracy": summary["final_accuracy"], "best_accuracy": summary["best_accuracy"],
                              "rounds_to_target": summary["rounds_to_target"][f"{target:g}"],
                              "sim_time_to_target_s": sim_time_to(rows, target),
                              "sim_time_s": float(rows[-1]["sim_time_s"]),
                              "seconds_per_round": summary["seconds_per_round"]}
    (out_dir.parent / "train_summary.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def sim_time_to(rows: list[dict], target: float) -> float | None:
    """Simulated seconds until the first evaluated round with test accuracy >= target."""
    return next((float(r["sim_time_s"]) for r in rows
                 if r["test_accuracy"] != "" and float(r["test_accuracy"]) >= target), None)


def split_costs_stage(p: SimpleNamespace, out_dir: str | Path) -> dict:
    """Measure each split method's client costs over one round of the default setting (round 0's
    sampled clients): peak memory, FLOPs per step, bytes per client and round, and each client's
    simulated timeline; MU-SplitFed also for every cut and tau of the sweep."""
    from fedlib.algorithms.base import ClientData, RoundInfo, derive_seed

    s = p.split
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fed = split_federation(p)
    seed = s.seeds[0]
    configs = [(m, s.cut, None) for m in s.methods]
    configs += [("musplitfed", cut, tau) for cut in s.mu_cuts for tau in s.mu_taus]
    rows = {}
    for method, cut, tau in configs:
        q = split_params(p, method, seed, cut=cut, tau=tau)
        alg, x = engine.make_algorithm(q, method, fed, seed)
        chosen = engine.sample_clients(seed, 0, fed.num_clients, s.clients_per_round)
        clients = [ClientData(int(k), fed.client_x[k], fed.client_y[k],
                              torch.Generator().manual_seed(derive_seed(seed, 0, int(k)))) for k in chosen]
        _, _, metrics = alg.run_round(x, clients, RoundInfo(0, q.train.lr, x))
        hp = getattr(q.methods, method)
        name = method if tau is None else f"musplitfed-{cut}-tau{hp.tau}"
        n = len(clients)
        timeline = {k: float(np.mean([getattr(t, k) for t in alg.last_timelines]))
                    for k in vars(alg.last_timelines[0])}
        rows[name] = {
            "method": method, "cut": cut, "tau": getattr(hp, "tau", None),
            "client_params": alg.n_client + (alg.aux_flat.numel() if alg.uses_aux_head else 0),
            "memory": alg.client_memory(), "flops_per_step": metrics["client_flops_per_step"],
            **{k: metrics[k] / n for k in costs.TRAFFIC_COLUMNS},       # per client and round
            "sim_round_s_no_stragglers": costs.round_s(alg.last_timelines, [0.0] * n, alg.serial_server),
            "timeline": timeline,
            "server_step_s": timeline["overlap_server_s"] / hp.tau if method == "musplitfed" else None,
        }
    (out_dir / "costs.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out_dir / "costs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "method", "cut", "tau", "client_params", "peak_memory_bytes", "activation_bytes",
                    "flops_per_step", *costs.TRAFFIC_COLUMNS])
        for name, r in rows.items():
            w.writerow([name, r["method"], r["cut"], r["tau"], r["client_params"], r["memory"]["total"],
                        r["memory"]["activations"], r["flops_per_step"], *[r[k] for k in costs.TRAFFIC_COLUMNS]])
    return rows


HERON_CLAIMS = {"memory": -0.64, "flops": -0.33}     # HERON-SFL vs CSE-FSL, as the paper states them


def cost_markdown(rows: dict) -> str:
    head = ["config", "client params", "peak memory (KiB)", "activations (KiB)", "MFLOP/step",
            "cut up (KiB)", "cut down (KiB)", "model up (KiB)", "model down (KiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['client_params']} | {r['memory']['total'] / 1024:.0f} | "
                     f"{r['memory']['activations'] / 1024:.0f} | {r['flops_per_step'] / 1e6:.1f} | "
                     + " | ".join(f"{r[k] / 1024:.1f}" for k in costs.TRAFFIC_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def split_report_stage(p: SimpleNamespace, train_dir: str | Path, costs_path: str | Path, out_dir: str | Path) -> dict:
    """Accuracy vs round and vs simulated time; the client cost table with HERON/CSE-FSL ratios beside
    the paper's claims; MU-SplitFed vs tau per cut; time-to-target vs straggler delay."""
    import matplotlib.pyplot as plt

    s, train_dir, out_dir = p.split, Path(train_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cost_rows = json.loads(Path(costs_path).read_text())
    table = json.loads((train_dir.parent / "train_summary.json").read_text())
    runs = read_runs(train_dir, s.methods, s.seeds)
    summary: dict = {"methods": {}, "tau": {}, "stragglers": {}}

    # accuracy vs round and vs simulated time (mean over seeds)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    with open(out_dir / "accuracy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "round", "sim_time_s", "test_accuracy"])
        for m, run in runs.items():
            rounds, acc = column(run["rows"], "test_accuracy")
            _, clock = column(run["rows"], "sim_time_s")
            keep = ~np.isnan(acc).all(0)
            acc_m, clock_m = np.nanmean(acc[:, keep], 0), np.nanmean(clock[:, keep], 0)
            axes[0].plot(rounds[keep], acc_m, label=m)
            axes[1].plot(clock_m, acc_m, label=m)
            w.writerows([m, int(r), repr(float(c)), repr(float(a))] for r, c, a in zip(rounds[keep], clock_m, acc_m))
            summary["methods"][m] = {
                "final_accuracy": float(np.mean([x["final_accuracy"] for x in run["summaries"]])),
                "sim_time_s": float(clock_m[-1]),
                "sim_time_to_target_s": _mean_or_none([sim_time_to(rows, s.target_accuracy) for rows in run["rows"]])}
    axes[0].set(xlabel="round", ylabel="test accuracy", title="accuracy vs round")
    axes[1].set(xlabel="simulated seconds", ylabel="test accuracy",
                title=f"accuracy vs simulated time ({s.straggler_share:.0%} stragglers, mean delay {s.straggler_delay_s:g} s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out_dir / "accuracy.png", dpi=120, bbox_inches="tight")

    # client costs, HERON-SFL / CSE-FSL
    (out_dir / "costs.md").write_text(cost_markdown({k: v for k, v in cost_rows.items() if k in s.methods}))
    if "heron" in cost_rows and "csefsl" in cost_rows:
        h, c = cost_rows["heron"], cost_rows["csefsl"]
        summary["heron_vs_csefsl"] = {
            "memory_change": h["memory"]["total"] / c["memory"]["total"] - 1, "memory_claim": HERON_CLAIMS["memory"],
            "flops_change": h["flops_per_step"] / c["flops_per_step"] - 1, "flops_claim": HERON_CLAIMS["flops"],
            "activation_change": h["memory"]["activations"] / c["memory"]["activations"] - 1}

    # MU-SplitFed vs tau, per cut
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for cut in s.mu_cuts:
        rows = [table[f"musplitfed-{cut}-tau{tau}"] for tau in s.mu_taus]
        summary["tau"][cut] = {str(r["tau"]): {k: r[k] for k in ("final_accuracy", "best_accuracy", "rounds_to_target")}
                               for r in rows}
        axes[0].plot(s.mu_taus, [r["final_accuracy"] for r in rows], "o-", label=f"cut {cut}")
        axes[1].plot(s.mu_taus, [np.nan if r["rounds_to_target"] is None else r["rounds_to_target"] for r in rows],
                     "o-", label=f"cut {cut}")
    axes[0].set(xlabel="tau (server steps per round)", ylabel=f"test accuracy after {s.mu_rounds} rounds",
                title="MU-SplitFed: accuracy vs tau")
    axes[1].set(xlabel="tau", ylabel=f"rounds to {s.mu_target_accuracy:g} accuracy", title="MU-SplitFed: rounds to target")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out_dir / "tau.png", dpi=120, bbox_inches="tight")

    # time-to-target vs straggler mean delay: tau = 1 against tau = delay / server step time
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for cut in s.mu_cuts:
        step_s = cost_rows[f"musplitfed-{cut}-tau{s.mu_taus[0]}"]["server_step_s"]
        curves = {"tau=1": [], "tau=delay/step": []}
        for d in s.delay_in_server_steps:
            tau_star = min(s.mu_taus, key=lambda t: abs(t - max(1.0, d)))
            for label, tau in (("tau=1", 1), ("tau=delay/step", tau_star)):
                curves[label].append(time_to_target(p, table, cost_rows, cut, tau, d * step_s))
        summary["stragglers"][cut] = {"server_step_s": step_s, "delay_s": [d * step_s for d in s.delay_in_server_steps],
                                      **curves}
        for label, ys in curves.items():
            ax.plot([d * step_s for d in s.delay_in_server_steps], [np.nan if y is None else y for y in ys], "o-",
                    label=f"cut {cut}, {label}")
    ax.set(xlabel="straggler mean delay (simulated s)", ylabel=f"simulated s to {s.mu_target_accuracy:g} accuracy",
           title="MU-SplitFed: time to target vs straggler delay")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out_dir / "stragglers.png", dpi=120, bbox_inches="tight")
    plt.close("all")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def time_to_target(p: SimpleNamespace, table: dict, cost_rows: dict, cut: str, tau: int, delay_s: float) -> float | None:
    """Simulated seconds MU-SplitFed (cut, tau) needs to reach split.mu_target_accuracy when the
    stragglers' mean delay is ``delay_s``: the run's rounds to target, each round re-timed with
    the measured per-client timeline and the seeded delays (engine's client sampling)."""
    s = p.split
    name = f"musplitfed-{cut}-tau{tau}"
    rounds = table[name]["rounds_to_target"]
    if rounds is None:
        return None
    seed = table[name]["seed"]
    timeline = costs.ClientTimeline(**cost_rows[name]["timeline"])
    system = costs.System(s.client_flops_per_s, s.server_flops_per_s, s.link_bytes_per_s, s.straggler_share, delay_s)
    slow = costs.stragglers(seed, s.num_clients, s.straggler_share)
    total = 0.0
    for r in range(rounds):
        chosen = engine.sample_clients(seed, r, s.num_clients, s.clients_per_round)
        delays = [costs.straggler_delay(system, seed, r, int(k), slow) for k in chosen]
        total += costs.round_s([timeline] * len(chosen), delays)
    return total


# ----- momentum / SAM family: ablation of FedWMSAM, costs and failure-mode diagnostics for the report -----

ABLATION_SWITCHES = {"personalised_momentum": "PM", "momentum_perturbation": "MP", "adaptive_alpha": "AA"}


def ablation_variants(p: SimpleNamespace) -> dict[str, dict]:
    """name -> methods.fedwmsam overrides: the 8 combinations of the three switches at methods.fedwmsam.rho
    ("none" is FedCM), then every other rho of ablation.rhos with all switches on."""
    rho = p.methods.fedwmsam.rho
    variants = {}
    for bits in itertools.product((False, True), repeat=len(ABLATION_SWITCHES)):
        name = "+".join(short for short, on in zip(ABLATION_SWITCHES.values(), bits) if on) or "none"
        variants[name] = {**dict(zip(ABLATION_SWITCHES, bits)), "rho": rho}
    for r in p.ablation.rhos:
        if r != rho:
            variants[f"rho={r:g}"] = {**dict.fromkeys(ABLATION_SWITCHES, True), "rho": r}
    return variants


def ablation_stage(params_path: str | Path, partition_path: str | Path, out_dir: str | Path,
                   runs_dir: str | Path, progress: bool = True) -> dict:
    """One short FedWMSAM run per variant and seed (ablation.rounds, ablation.seeds; all else from params),
    through engine.train; writes summary.json, table.md and accuracy.png to ``out_dir``. Per-run metrics and
    checkpoints stay in ``runs_dir`` (scratch, resumable)."""
    p = load_params(params_path)
    a = p.ablation
    fed = load_federation(p, partition_path)
    base = {"train.rounds": a.rounds, "train.snapshot_rounds": []}
    table, curves = {}, {}
    for name, hp in ablation_variants(p).items():
        q = load_params(params_path, {**base, **{f"methods.fedwmsam.{k}": v for k, v in hp.items()}})
        runs, rows = [], []
        for seed in a.seeds:
            run_dir = Path(runs_dir) / f"{name}-{seed}"
            runs.append(engine.train(q, "fedwmsam", seed, run_dir, fed=fed, ckpt_dir=run_dir, progress=progress))
            rows.append(engine._read_csv(run_dir / "metrics.csv"))
        table[name] = {**hp, **_family_summary(runs, rows)}
        curves[name] = column(rows, "test_accuracy")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    (out_dir / "table.md").write_text(ablation_markdown(table, p.methods.fedwmsam.rho))
    fig, axes = plots.plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    for ax, names, title in ((axes[0], [n for n in table if not n.startswith("rho=")], "switches"),
                             (axes[1], sorted((n for n, t in table.items() if all(t[k] for k in ABLATION_SWITCHES)),
                                              key=lambda n: table[n]["rho"]), "rho, all switches on")):
        x = curves[names[0]][0]
        label = {n: (f"rho={table[n]['rho']:g}" if ax is axes[1] else n) for n in names}
        plots.curves({label[n]: curves[n][1] for n in names}, x, "test accuracy", ax=ax,
                     title=f"FedWMSAM ablation: {title}")
    fig.savefig(out_dir / "accuracy.png", dpi=120, bbox_inches="tight")
    return table


def _family_summary(summaries: list[dict], rows_per_seed: list[list[dict]], window: int = 10) -> dict:
    """Accuracy and the failure-mode diagnostics of a method, mean over seeds:
    sign_flip_share     share of rounds in the second half with cos(Delta_bar_r, Delta_bar_{r-1}) < 0
    test_loss_swing     max - min of the test loss over the last ``window`` evaluated rounds
    curvature_cos       mean cos(local, global SAM ascent direction) over the rounds it was measured."""
    out = {
        "final_accuracy": float(np.mean([s["final_accuracy"] for s in summaries])),
        "last10_accuracy": float(np.mean([s["last10_accuracy"] for s in summaries])),
        "rounds_to_target": {t: _mean_or_none([s["rounds_to_target"][t] for s in summaries])
                             for t in summaries[0]["rounds_to_target"]},
        "seconds_per_round": float(np.mean([s["seconds_per_round"] for s in summaries])),
    }
    _, loss = column(rows_per_seed, "test_loss")
    out["test_loss_swing"] = float(np.mean([np.ptp(v[~np.isnan(v)][-window:]) for v in loss]))
    for col, key in (("update_cos_prev", "sign_flip_share"), ("curvature_cos", "curvature_cos"),
                     ("alpha", "final_alpha")):
        _, v = column(rows_per_seed, col)
        if np.isnan(v).all():
            out[key] = None
        elif key == "sign_flip_share":
            late = v[:, v.shape[1] // 2:]
            out[key] = float(np.nanmean(np.where(np.isnan(late), np.nan, late < 0)))
        elif key == "final_alpha":
            out[key] = float(np.nanmean(v[:, -1]))
        else:
            out[key] = float(np.nanmean(v))
    return out


def _fmt_or_dash(v, spec=".4f"):
    return "—" if v is None else format(v, spec)


def ablation_markdown(table: dict, rho: float) -> str:
    targets = list(next(iter(table.values()))["rounds_to_target"])
    head = ["variant", *ABLATION_SWITCHES.values(), "rho", "final acc", "last-10 acc",
            *[f"rounds to {t}" for t in targets], "sign flips", "loss swing", "curv. cos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in table.items():
        lines.append("| " + " | ".join([
            name, *["✓" if t[k] else "" for k in ABLATION_SWITCHES], f"{t['rho']:g}",
            f"{t['final_accuracy']:.4f}", f"{t['last10_accuracy']:.4f}",
            *[_fmt_or_dash(t["rounds_to_target"][a], ".0f") for a in targets],
            _fmt_or_dash(t["sign_flip_share"], ".2f"), f"{t['test_loss_swing']:.4f}",
            _fmt_or_dash(t["curvature_cos"], ".3f")]) + " |")
    return (f"PM personalised momentum, MP momentum-guided perturbation, AA adaptive alpha; \"none\" is FedCM "
            f"(alpha = alpha_0). Switch rows at rho = {rho:g}.\n\n" + "\n".join(lines) + "\n")


def family_report(p: SimpleNamespace, train_dir: str | Path, out_dir: str | Path, window: int = 10) -> dict:
    """Costs and failure-mode diagnostics of every method in train.methods: costs.md (backprops per local
    step, wall seconds per round, model traffic per round), diagnostics.md / .json (curvature misalignment,
    momentum-echo sign flips and test-loss swing, final alpha) and figures alpha.png (FedWMSAM's alpha_r),
    curvature.png and echo.png (the diagnostics over rounds, for methods that log them)."""
    from fedlib.algorithms import REGISTRY

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = read_runs(train_dir, p.train.methods, p.train.seeds)
    base_s = np.mean([s["seconds_per_round"] for s in runs["fedavg"]["summaries"]]) if "fedavg" in runs else None
    costs_md = ["| method | backprops / step | s / round | × FedAvg | MB up / round | MB down / round |",
                "|---|---|---|---|---|---|"]
    diag = {}
    for m, run in runs.items():
        s = run["summaries"]
        sec = float(np.mean([x["seconds_per_round"] for x in s]))
        up, down = (np.mean([x[k] / x["rounds"] for x in s]) / 1e6 for k in ("bytes_up", "bytes_down"))
        costs_md.append(f"| {m} | {REGISTRY[m].backprops_per_step} | {sec:.3f} | "
                        f"{_fmt_or_dash(None if base_s is None else sec / base_s, '.2f')} | {up:.1f} | {down:.1f} |")
        diag[m] = _family_summary(s, run["rows"], window)
    (out_dir / "costs.md").write_text("\n".join(costs_md) + "\n")
    (out_dir / "diagnostics.json").write_text(json.dumps(diag, indent=2) + "\n")
    lines = ["| method | curvature cos (local vs global SAM direction) | sign-flip share, 2nd half | "
             f"test-loss swing, last {window} rounds | final alpha |", "|---|---|---|---|---|"]
    for m, d in diag.items():
        lines.append(f"| {m} | {_fmt_or_dash(d['curvature_cos'], '.3f')} | {_fmt_or_dash(d['sign_flip_share'], '.2f')}"
                     f" | {d['test_loss_swing']:.4f} | {_fmt_or_dash(d['final_alpha'], '.4f')} |")
    (out_dir / "diagnostics.md").write_text("\n".join(lines) + "\n")
    n = len(p.train.seeds)
    for col, ylabel, name in (("alpha", "alpha_r", "alpha"),
                              ("curvature_cos", "cos(local, global SAM ascent direction)", "curvature"),
                              ("update_cos_prev", "cos(Delta_bar_r, Delta_bar_{r-1})", "echo")):
        series = {}
        for m, run in runs.items():
            x, v = column(run["rows"], col)
            if not np.isnan(v).all():
                series[m] = v
        if series:
            keep = ~np.all([np.isnan(v).all(0) for v in series.values()], axis=0)
            plots.curves({m: v[:, keep] for m, v in series.items()}, x[keep], ylabel, out_dir / f"{name}.png",
                         title=f"{ylabel} vs round (mean, band = min..max over {n} seeds)")
        else:       # the file is a declared output: say why it is empty
            fig, ax = plots.plt.subplots(figsize=(7, 1.2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"no method in train.methods logs {col}", ha="center", va="center")
            fig.savefig(out_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    return diag
