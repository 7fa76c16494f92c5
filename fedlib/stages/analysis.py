"""Analysis stages: convergence-bound terms (bounds) and flatness of the trained models."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fedlib import engine
from fedlib.stages.common import load_federation, run_dir, write_rows


def bounds_stage(p: SimpleNamespace, partition_path: str | Path, models_dir: str | Path, train_dir: str | Path,
                 out_dir: str | Path, progress: bool = True) -> dict:
    """Every method x seed of train: the measured (1/R) sum_r ||grad f(x_r)||^2 (logged by training) beside the
    bound's two terms with the run's own constants (fedlib/analysis/methods.py), the smallest constants that make
    the bound hold, constants fitted on analysis.seed's runs and tested on the other seeds; and sigma_rho^2
    against sigma^2 + (L rho)^2 over analysis.rhos at the final models of the SAM methods (SPEC 2, 5)."""
    import csv

    from tqdm.auto import tqdm

    from fedlib.analysis import methods as am
    from fedlib.analysis import noise

    a, t = p.analysis, p.train
    fed = load_federation(p, partition_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs, scan = {}, []
    for m in tqdm(t.methods, desc="bound terms", disable=not progress):
        for sd in t.seeds:
            saved = _load_model(models_dir, m, sd)
            metrics = list(csv.DictReader(open(run_dir(train_dir, m, sd) / "metrics.csv")))
            runs[(m, sd)] = am.measure_run(p, fed.data, saved, metrics, m, _method_rho(p, m))
            if sd == a.seed and noise.method_perturbation(m, 1.0, saved["final"], saved["final"]) is not None:
                R = t.rounds
                if R - 1 not in saved["snapshots"]:
                    raise ValueError(f"params: train.snapshot_rounds must contain {R - 1} (the round before the "
                                     f"last) for the trajectory perturbations of the sigma_rho^2 scan")
                obj = am.objective(p, fed.data, saved)
                x = saved["final"]
                batches = noise.noise_batches(obj.n, t.batch_size, a.noise_batches, a.seed)
                scan += noise.rho_scan(obj, x, saved["snapshots"][R - 1], m, a.rhos, am.lambda_max(p, obj, x), batches)
    setting = {"S": t.clients_per_round, "K": _mean_local_steps(fed, t.local_epochs, t.batch_size), "R": t.rounds,
               "N": fed.num_clients}
    table = am.bound_table(runs, **setting, fit_seed=a.seed)
    result = {**setting, "eta0": t.lr, "fit_seed": a.seed, "f_star": table["f_star"], "smallest": table["smallest"], "fit": table["fit"],
              "common_from_fit_seed": table["common_from_fit_seed"], "held_out_hold": table["held_out_hold"],
              "held_out_total": table["held_out_total"],
              "eta_L_max": t.lr * max(r["L"] for r in table["rows"]), "rows": table["rows"]}
    (out_dir / "bounds.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "timing.json").write_text(json.dumps({"total_s": time.perf_counter() - start}, indent=2) + "\n")
    write_rows(out_dir / "points.csv", [{"method": m, "seed": sd, **q} for (m, sd), v in runs.items()
                                        for q in v["points"]])
    write_rows(out_dir / "rho_scan.csv", scan)
    (out_dir / "table.md").write_text(bounds_markdown(result, scan))
    _plot_rho_scan(scan, out_dir / "rho_scan.png")
    return result


def held_out_text(result: dict) -> str:
    """The out-of-sample check of the common constant: fitted on one seed's runs, tried on the other seeds'."""
    if not result["held_out_total"]:
        return f"No held-out runs (one seed, {result['fit_seed']}): add seeds to train.seeds to test the fit out of sample."
    return (f"The common constant fitted on the seed-{result['fit_seed']} runs ({result['common_from_fit_seed']:.3g}) "
            f"holds on {result['held_out_hold']} of {result['held_out_total']} held-out runs.")


def bounds_markdown(result: dict, scan: list[dict]) -> str:
    sm = result["smallest"]
    lines = [f"S = {result['S']}, K = {result['K']:.2f}, R = {result['R']}, N = {result['N']}, eta_0 = {result['eta0']:g}; "
             f"f* = {result['f_star']:.4f}; eta_0 L up to {result['eta_L_max']:.2f}", "",
             f"Smallest constants that make the bound hold for every run: common a = b = {sm['common']:.3g}; "
             f"a alone (b = 0) {sm['first_only']:.3g}; b alone (a = 0) {sm['second_only']:.3g}. " + held_out_text(result),
             "",
             "| method | seed | rho | L power | L secant | sigma^2 | sigma_rho^2 | Delta_0 | T1 | T2 | measured avg "
             "||grad f||^2 | measured / (T1 + T2) |", "|" + "---|" * 12]
    lines += [f"| {r['method']} | {r['seed']} | {r['rho']:g} | {r['L']:.4g} | {r['L_secant']:.4g} | {r['sigma2']:.4g} "
              f"| {r['sigma_rho2']:.4g} | {r['delta0']:.4f} | {r['T1']:.4g} | {r['T2']:.4g} | {r['avg_grad_sq']:.4g} "
              f"| {r['ratio']:.3g} |" for r in result["rows"]]
    lines += ["", "| method | rho | sigma_rho^2 [95 % CI] | sigma^2 + (L rho)^2 [95 % CI] | sigma_rho^2 - sigma^2 "
              "[95 % CI] | (L rho)^2 |", "|---|---|---|---|---|---|"]
    lines += [f"| {q['method']} | {q['rho']:g} | {q['sigma_rho2']:.4g} [{q['sigma_rho2_lo']:.4g}, {q['sigma_rho2_hi']:.4g}] "
              f"| {q['theory']:.4g} [{q['theory_lo']:.4g}, {q['theory_hi']:.4g}] | {q['excess']:.3g} "
              f"[{q['excess_lo']:.3g}, {q['excess_hi']:.3g}] | {q['L_rho_sq']:.3g} |" for q in scan]
    return "\n".join(lines) + "\n"


def _plot_rho_scan(scan: list[dict], path) -> None:
    """sigma_rho^2 - sigma^2 (paired, 95 % CI) against rho per SAM method, beside (L rho)^2."""
    from fedlib.plots import _save, plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, m in enumerate(dict.fromkeys(q["method"] for q in scan)):
        rows = [q for q in scan if q["method"] == m]
        rho = np.array([q["rho"] for q in rows])
        ex = np.array([q["excess"] for q in rows])
        err = np.array([[q["excess"] - q["excess_lo"] for q in rows], [q["excess_hi"] - q["excess"] for q in rows]])
        line = ax.errorbar(rho * (1 + 0.03 * i), ex, yerr=err, fmt="o-", capsize=3, label=f"{m}: measured")
        ax.plot(rho, [q["L_rho_sq"] for q in rows], "--", color=line[0].get_color(), label=f"{m}: (L rho)^2")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("rho")
    ax.set_ylabel(r"$\sigma_\rho^2 - \sigma^2$")
    ax.grid(alpha=0.3, which="both")
    if scan:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.set_title("no SAM method in train.methods")
    _save(fig, path)


def _load_model(models_dir, m: str, sd: int) -> dict:
    path = run_dir(models_dir, m, sd) / "models.pt"
    if not path.exists():
        raise FileNotFoundError(f"no trained model {path}; run `dvc repro` for the train stages")
    return engine.load_models(path)


def _mean_local_steps(fed: engine.Federation, local_epochs: int, batch_size: int) -> float:
    """K averaged over the clients: each takes epochs * ceil(n_k / B) steps."""
    return float(np.mean([local_epochs * -(-len(y) // batch_size) for y in fed.client_y]))


def sweeps_stage(p: SimpleNamespace, params_path: str | Path, out_dir: str | Path, work_dir: str | Path,
                 prefix: str = "sweep", progress: bool = True, only_finished: bool = False) -> dict:
    """The bound's S, K, R, N scaling sweeps (fedlib/analysis/sweeps.py) over analysis.<prefix>_*; every run is
    trained into ``work_dir`` (resumable) and measured once (cached there). ``only_finished`` trains nothing
    and analyses the runs already measured (an interim look at a study under way)."""
    from tqdm.auto import tqdm

    from fedlib.analysis import sweeps

    a, t = p.analysis, p.train
    data = engine.load_data(p)
    lst = sweeps.lists(a, prefix)
    sweeps.check(lst, len(data.y_train), t.batch_size, prefix)
    rho = _method_rho(p, a.sweep_method)
    todo = [(s, sd) for sd in lst["seeds"] for s in sweeps.runs(lst)]
    measured, start = {}, time.perf_counter()
    for s, sd in tqdm(todo, desc=f"{prefix} runs", disable=not progress):
        if only_finished and not (sweeps.run_dir(work_dir, s, sd) / "analysis.json").exists():
            continue
        out = sweeps.train_one(p, data, s, sd, Path(work_dir), a.sweep_method, a.sweep_model, a.sweep_lr)
        measured[(s["S"], s["E"], s["N"], sd)] = sweeps.measure_one(p, data, out, s, a.sweep_method, rho, a.sweep_lr)
    result = sweeps.analyse(p, data, lst, measured, a.sweep_method, a.sweep_model, a.sweep_lr)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows(out_dir / "sweep.csv", result["table"])
    summary = {k: result[k] for k in ("constants", "fit", "smallest", "slopes")}
    (out_dir / "sweeps.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "timing.json").write_text(json.dumps({"total_s": time.perf_counter() - start}, indent=2) + "\n")
    (out_dir / "table.md").write_text(sweeps_markdown(result))
    sweeps.plot(result, out_dir / "scaling.png")
    return result


def sweeps_markdown(result: dict) -> str:
    c = result["constants"]
    lines = [f"{c['method']} on {c['model']}, constant eta = {c['lr']:g}, seeds {c['seeds']}, base {c['base']} "
             f"(S, E, N at their first values; R sweep = prefixes of the base runs); "
             f"L = {c['L']:.4g} (largest lambda_max over all final models), eta L = {c['eta_L_max']:.3f}, "
             f"Delta_0 = {c['delta0']:.4f}, sigma^2 = {c['sigma2']:.4g}, sigma_rho^2 = {c['sigma_rho2']:.4g}", "",
             "| sweep | points | seeds | measured slope [95 % CI] | T1 slope | T2 slope | fitted-bound slope | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in result["slopes"].items():
        m, pr = v["measured"], v["predicted"]
        lines.append(f"| {k} | {v['used']['points']} | {v['used']['seeds']} | {m['slope']:+.3f} [{m['lo']:+.3f}, "
                     f"{m['hi']:+.3f}] | {pr['T1']:+.3f} | {pr['T2']:+.3f} | {pr.get('fitted', float('nan')):+.3f} "
                     f"| {v['verdict']} |")
    f, sm = result["fit"], result["smallest"]
    lines += ["", f"fitted a = {f['a']:.4g}, b = {f['b']:.4g} (relative least squares over every sweep point; "
              f"largest |relative residual| {max(abs(r) for r in f['rel_residuals']):.2f}); smallest constants "
              f"making the bound hold at every point: common {sm['common']:.4g}, T1 alone {sm['first_only']:.4g}, "
              f"T2 alone {sm['second_only']:.4g}", "",
              "| sweep | value | K | R | N | seeds | avg ||grad f||^2 | T1 | T2 | eta lambda_max | eta K lambda_max |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['param']} | {r['value']} | {r['K']:.2f} | {r['R']} | {r['N']} | {r['seeds']} | {r['avg_grad_sq']:.4g} | "
              f"{r['T1']:.4g} | {r['T2']:.4g} | {r['eta_L']:.3f} | {r['eta_K_L']:.2f} |" for r in result["table"]]
    return "\n".join(lines) + "\n"


def _method_rho(p: SimpleNamespace, method: str) -> float:
    """methods.<name>.rho when the method declares one, else analysis.default_rho."""
    return float(getattr(getattr(p.methods, method, None), "rho", p.analysis.default_rho))


def flatness_stage(p: SimpleNamespace, partition_path: str | Path, models_dir: str | Path, out_dir: str | Path,
                   progress: bool = True) -> dict:
    """Flatness of every method's final model for every seed of train.seeds: lambda_max, lambda_max / lambda_k
    (Lanczos), the Hessian trace (Hutchinson, probes until its se <= analysis.trace_rel_se of it), all on the
    analysis set that defines f; per method the mean and 95 % t-interval over seeds; 1-D and 2-D
    filter-normalised landscapes of the analysis.seed models (SPEC 5)."""
    from tqdm.auto import tqdm

    from fedlib.analysis import hessian, landscape
    from fedlib.analysis import methods as am

    a, t = p.analysis, p.train
    fed = load_federation(p, partition_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    alphas = np.linspace(-a.landscape_range, a.landscape_range, a.landscape_points_1d)
    grid = np.linspace(-a.landscape_range, a.landscape_range, a.landscape_points_2d)

    rows, lines, planes, timing = [], {}, {}, {}
    for m in tqdm(t.methods, desc="flatness", disable=not progress):
        for sd in t.seeds:
            start = time.perf_counter()
            s = _load_model(models_dir, m, sd)
            obj, x = am.objective(p, fed.data, s), s["final"]
            hvp = obj.hvp(x, keep_graphs=a.keep_graphs)
            top, vectors = hessian.lanczos(hvp, obj.dim, k=a.top_k, iters=a.lanczos_iters, seed=a.seed)
            trace, trace_se = hessian.hutchinson_trace(hvp, obj.dim, probes=a.hutchinson_probes, seed=a.seed,
                                                       deflate=(top, vectors), rel_se=a.trace_rel_se,
                                                       max_probes=a.max_probes)
            del hvp
            spectrum_s = time.perf_counter() - start
            test_loss, test_acc = hessian.Objective(obj.worker, fed.data.x_test, fed.data.y_test,
                                                    batch_size=t.eval_batch_size).value(x)
            rows.append({"method": m, "seed": sd, "lambda_max": top[0], f"lambda_{a.top_k}": top[-1],
                         "lambda_ratio": top[0] / top[-1], "trace": trace, "trace_se": trace_se,
                         "trace_rel_se": trace_se / abs(trace), "train_loss": obj.value(x)[0],
                         "test_loss": test_loss, "test_accuracy": test_acc})
            if sd == a.seed:
                xs, ys = obj.x[:a.landscape_samples], obj.y[:a.landscape_samples]
                land = hessian.Objective(obj.worker, xs, ys, batch_size=t.eval_batch_size)
                d1 = landscape.filter_normalised_direction(obj.worker.model, x, a.direction_seed)
                d2 = landscape.filter_normalised_direction(obj.worker.model, x, a.direction_seed + 1)
                lines[m], _ = landscape.loss_line(land, x, d1, alphas)
                planes[m] = landscape.loss_plane(land, x, d1, d2, grid, grid)
            timing[f"{m}-{sd}"] = {"spectrum_s": spectrum_s, "total_s": time.perf_counter() - start}
    table = {m: _over_seeds([r for r in rows if r["method"] == m], ("lambda_max", "lambda_ratio", "trace",
                                                                      "test_accuracy")) for m in t.methods}
    (out_dir / "flatness.json").write_text(json.dumps(table, indent=2) + "\n")
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")      # wall seconds, not a metric
    write_rows(out_dir / "flatness.csv", rows)
    write_rows(out_dir / "landscape_1d.csv", [{"alpha": float(al), **{m: float(v[i]) for m, v in lines.items()}}
                                                for i, al in enumerate(alphas)])
    write_rows(out_dir / "landscape_2d.csv", [{"method": m, "alpha": float(al), "beta": float(be), "loss": float(z[j, i])}
                                                for m, z in planes.items() for j, be in enumerate(grid)
                                                for i, al in enumerate(grid)])
    (out_dir / "table.md").write_text(flatness_markdown(table, rows, a.top_k, t.seeds))
    where = f"{a.landscape_samples} training samples, eval mode, direction seed {a.direction_seed}, seed {a.seed}"
    landscape.plot_lines(alphas, lines, out_dir / "landscape_1d.png", title=f"1-D loss landscapes ({where})")
    landscape.plot_planes(grid, grid, planes, out_dir / "landscape_2d.png", title=f"2-D loss landscapes ({where})")
    landscape.plot_sharpness_vs_accuracy(rows, out_dir / "sharpness_vs_accuracy.png")
    return table


def _over_seeds(rows: list[dict], keys) -> dict:
    """Mean and 95 % t-interval half-width over seeds of each key (None for one seed: strict JSON, no NaN)."""
    from scipy import stats

    out = {"seeds": len(rows)}
    for k in keys:
        v = np.array([r[k] for r in rows], float)
        half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
        out[k], out[f"{k}_ci95"] = float(v.mean()), half
    return out


def flatness_markdown(table: dict, rows: list[dict], k: int, seeds: list[int]) -> str:
    if len(seeds) < 2:
        lines = [f"One seed ({seeds[0]}): no interval over seeds (add seeds to train.seeds); the Hutchinson trace "
                 "carries its own standard error."]
    else:
        lines = [f"Mean over seeds {seeds} ± 95 % t-interval half-width (t with {len(seeds) - 1} df)", "",
                 f"| method | lambda_max | lambda_max / lambda_{k} | trace | test accuracy |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {r['lambda_max']:.4g} ± {r['lambda_max_ci95']:.2g} | {r['lambda_ratio']:.3g} ± "
                  f"{r['lambda_ratio_ci95']:.2g} | {r['trace']:.4g} ± {r['trace_ci95']:.2g} | {r['test_accuracy']:.4f} ± "
                  f"{r['test_accuracy_ci95']:.2g} |" for m, r in table.items()]
    lines += ["", "| method | seed | lambda_max | lambda_max / lambda_k | trace ± se (Hutchinson) | se / trace | "
              "test accuracy |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['seed']} | {r['lambda_max']:.4g} | {r['lambda_ratio']:.3g} | {r['trace']:.4g} ± "
              f"{r['trace_se']:.2g} | {r['trace_rel_se']:.3f} | {r['test_accuracy']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


# ----- split learning (docs/methods.md#split and #costs): split_train -> split_costs -> split_report -----
