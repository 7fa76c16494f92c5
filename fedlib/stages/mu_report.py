"""The MU-SplitFed study's report (``python -m fedlib.stages.mu_study report``; fedlib/stages/mu_study.py).

Reads the runs that belong to the current params (a summary whose fingerprint matches the run the sweep
would train now; older or unfinished runs are left out and the table says how many seeds it has), and writes:

* tau_cut.md / tau_cut.csv: per cut x tau, seeds done, diverged, rounds to mu_study.target_accuracy
  (mean ± std over the seeds that reached it), rounds to target - 0.1 and target + 0.1, the mean test accuracy
  over each run's last 10 evaluations, and GAS at the same setting;
* stragglers.md, tau_cut_stragglers.png: the straggler experiment (see mu_study's docstring);
* summary.json: everything above.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fedlib import engine
from fedlib.stages.mu_study import OUT, gas_params, retime, slow_server, study_params, timeline
from fedlib.stages.split import split_federation


def rounds_to(run_dir: Path, target: float) -> int | None:
    """First evaluated round with test accuracy >= target (None: never, or the run diverged first)."""
    for r in csv.DictReader(open(run_dir / "metrics.csv")):
        if r["test_accuracy"] and float(r["test_accuracy"]) >= target:
            return int(r["round"])
    return None


def last_accuracy(run_dir: Path, evaluations: int) -> float:
    """Mean test accuracy over the run's last ``evaluations`` evaluations (0 after a divergence)."""
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["test_accuracy"]]
    s = json.loads((run_dir / "summary.json").read_text())
    if "diverged_round" in s or not rows:
        return 0.0
    return float(np.mean([float(r["test_accuracy"]) for r in rows[-evaluations:]]))


def mean_std(values: list) -> tuple[float | None, float | None]:
    ok = [v for v in values if v is not None]
    return (float(np.mean(ok)), float(np.std(ok))) if ok else (None, None)


def current(run_dir: Path, q: SimpleNamespace, method: str, seed: int) -> dict | None:
    """The run's summary if it is finished with the params q, else None."""
    f = run_dir / "summary.json"
    if not f.exists():
        return None
    s = json.loads(f.read_text())
    return s if s.get("fingerprint") == engine.run_fingerprint(q, method, seed) else None


def targets(m: SimpleNamespace) -> list[float]:
    return [round(m.target_accuracy - 0.1, 4), m.target_accuracy, round(m.target_accuracy + 0.1, 4)]


def report(p: SimpleNamespace) -> dict:
    m, fed = p.mu_study, split_federation(p)
    eta = json.loads((OUT / "grid.json").read_text())["chosen"]
    table, rows = {}, []
    for cut in m.cuts:
        for tau in m.taus:
            dirs = {seed: OUT / f"runs/{cut}-tau{tau}-seed{seed}" for seed in m.seeds}
            done = {seed: current(d, study_params(p, cut, tau, seed, m.rounds, eta), "musplitfed", seed)
                    for seed, d in dirs.items()}
            ok = [seed for seed in m.seeds if done[seed] is not None]
            # per seed (None: not done, or did not reach it), aligned with m.seeds
            rtt = {t: [rounds_to(dirs[s], t) if s in ok else None for s in m.seeds] for t in targets(m)}
            mean, std = mean_std(rtt[m.target_accuracy])
            last = mean_std([last_accuracy(dirs[s], 10) for s in ok])
            cell = {"seeds_done": len(ok), "diverged": sum("diverged_round" in done[s] for s in ok),
                    "rounds_to_target": rtt[m.target_accuracy],
                    "reached": sum(r is not None for r in rtt[m.target_accuracy]),
                    "rounds_to_target_mean": mean, "rounds_to_target_std": std,
                    **{f"rounds_to_{t:g}_mean": mean_std(rtt[t])[0] for t in targets(m) if t != m.target_accuracy},
                    **{f"reached_{t:g}": sum(r is not None for r in rtt[t]) for t in targets(m)},
                    "last10_accuracy_mean": last[0], "last10_accuracy_std": last[1],
                    "best_accuracy_mean": mean_std([done[s]["best_accuracy"] for s in ok])[0]}
            table[f"{cut}-tau{tau}"] = cell
            rows.append({"cut": cut, "tau": tau, **{k: v for k, v in cell.items() if k != "rounds_to_target"},
                         "rounds_to_target": " ".join("-" if r is None else str(r) for r in cell["rounds_to_target"])})
    out = {"target_accuracy": m.target_accuracy, "eta": eta, "rounds": m.rounds, "seeds": m.seeds,
           "table": table, "stragglers": stragglers(p, table, eta, fed), "gas": gas(p, eta)}
    (OUT / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    (OUT / "stragglers.md").write_text(stragglers_markdown(out, m))
    (OUT / "tau_cut.md").write_text(tau_cut_markdown(out, m))
    with open(OUT / "tau_cut.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(p, out)
    return out


def stragglers(p: SimpleNamespace, table: dict, eta: dict, fed) -> dict:
    """Per cut: each seed's rounds to target re-timed at every mean delay, tau = 1 against tau ~ delay."""
    m, res = p.mu_study, {}
    for cut in m.cuts:
        lines = {tau: slow_server(p, *timeline(p, cut, tau, eta, fed)) for tau in m.taus}
        step_s = lines[1][1] if 1 in lines else lines[m.taus[0]][1]
        t1 = lines[m.taus[0]][0]
        cur = {"server_step_s": step_s, "server_flops_per_s": m.straggler_server_flops_per_s,
               "client_round_s": t1.client_s + t1.link_s, "delay_s": [], "tau1": [], "tau_matched": [],
               "tau_used": []}
        for d in m.delay_in_server_steps:
            tau_star = min(m.taus, key=lambda t: abs(t - max(1.0, d)))
            cur["delay_s"].append(d * step_s)
            cur["tau_used"].append(tau_star)
            for label, tau in (("tau1", 1), ("tau_matched", tau_star)):
                times = [None if r is None else retime(p, lines[tau][0], r, seed, d * step_s)
                         for seed, r in zip(m.seeds, table[f"{cut}-tau{tau}"]["rounds_to_target"])]
                mean, std = mean_std(times)                 # over the seeds that reached the target
                cur[label].append({"per_seed": times, "reached": sum(x is not None for x in times),
                                   "mean": mean, "std": std})
        res[cut] = cur
    return res


def gas(p: SimpleNamespace, eta: dict) -> dict:
    """GAS runs finished at the current params: final and best accuracy, rounds to the target."""
    m, res = p.mu_study, {}
    for client in ("zo", "fo"):
        for seed in m.seeds:
            d = OUT / f"gas/{client}-seed{seed}"
            g = current(d, gas_params(p, client, seed, eta), "gas", seed)
            if g is not None:
                res[f"{client}-seed{seed}"] = {"final_accuracy": g["final_accuracy"], "best_accuracy": g["best_accuracy"],
                                               "rounds_to_target": rounds_to(d, m.target_accuracy),
                                               "diverged": "diverged" in g}
    return res


def tau_cut_markdown(out: dict, m: SimpleNamespace) -> str:
    lo, t, hi = targets(m)
    pm = lambda a, b, spec: "—" if a is None else f"{a:{spec}} ± {b:{spec}}"
    n = len(m.seeds)
    lines = [f"MU-SplitFed as published (zeroth order on both sides), {m.model}, η_s = {out['eta']['eta_s']:g}, "
             f"η_c = {out['eta']['eta_c']:g} (grid.json), {m.rounds} rounds, evaluation every {m.eval_every}; "
             f"rounds to accuracy {t:g}: mean ± std over the seeds that reached it (reached/seeds done); "
             f"seeds done: runs finished at the current params, of {n}.", "",
             f"| cut | τ | seeds done | diverged | rounds to {t:g} | rounds to {lo:g} | rounds to {hi:g} | "
             "accuracy, last 10 evaluations | best accuracy |", "|---|---:|---:|---:|---|---:|---:|---|---:|"]
    for key, c in out["table"].items():
        cut, tau = key.rsplit("-tau", 1)
        f = lambda v, spec: "—" if v is None else f"{v:{spec}}"
        lines.append(f"| {cut} | {tau} | {c['seeds_done']}/{n} | {c['diverged']} | "
                     f"{pm(c['rounds_to_target_mean'], c['rounds_to_target_std'], '.0f')} ({c['reached']}/{c['seeds_done']}) | "
                     f"{f(c[f'rounds_to_{lo:g}_mean'], '.0f')} | {f(c[f'rounds_to_{hi:g}_mean'], '.0f')} | "
                     f"{pm(c['last10_accuracy_mean'], c['last10_accuracy_std'], '.3f')} | {f(c['best_accuracy_mean'], '.3f')} |")
    g = out["gas"]
    if g:
        lines += ["", f"GAS at cut {m.grid_cut}, same rounds and η_c (finished runs): " + "; ".join(
            f"{k}: final {v['final_accuracy']:.3f}, best {v['best_accuracy']:.3f}, rounds to {t:g} "
            f"{v['rounds_to_target'] or '—'}" for k, v in g.items()) + "."]
    return "\n".join(lines) + "\n"


def stragglers_markdown(out: dict, m: SimpleNamespace) -> str:
    """Per cut: simulated seconds to the target against the stragglers' mean delay, tau = 1 beside tau ~ delay /
    server step, mean ± std over the seeds that reached it; and how much each grows from no delay to the largest."""
    fmt = lambda c: "—" if c["mean"] is None else f"{c['mean']:.2f} ± {c['std']:.2f} ({c['reached']}/{len(m.seeds)})"
    lines = [f"Straggler experiment (simulated seconds to accuracy {m.target_accuracy:g}; server at "
             f"{m.straggler_server_flops_per_s:.3g} FLOP/s; mean ± std over the seeds that reached it, n/seeds):", "",
             "| cut | server step s | client round s | mean delay (server steps) | tau used | tau = 1 | tau matched |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    growth = []
    for cut, st in out["stragglers"].items():
        for i, d in enumerate(m.delay_in_server_steps):
            lines.append(f"| {cut} | {st['server_step_s']:.3g} | {st['client_round_s']:.3g} | {d:g} | "
                         f"{st['tau_used'][i]} | {fmt(st['tau1'][i])} | {fmt(st['tau_matched'][i])} |")
        g = {k: (st[k][-1]["mean"] / st[k][0]["mean"] if st[k][-1]["mean"] and st[k][0]["mean"] else None)
             for k in ("tau1", "tau_matched")}
        growth.append(f"{cut}: tau = 1 x{g['tau1']:.2f}, matched x{g['tau_matched']:.2f}" if None not in g.values()
                      else f"{cut}: not every setting reached the target")
    return "\n".join(lines + ["", f"Time to target at delay {m.delay_in_server_steps[-1]:g} steps over delay 0 "
                               "(1.00 = independent of the delay): " + "; ".join(growth) + ".", ""])


def plot(p: SimpleNamespace, out: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = p.mu_study
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for cut in m.cuts:
        cells = [out["table"][f"{cut}-tau{t}"] for t in m.taus]
        mean = [np.nan if c["rounds_to_target_mean"] is None else c["rounds_to_target_mean"] for c in cells]
        std = [0 if c["rounds_to_target_std"] is None else c["rounds_to_target_std"] for c in cells]
        axes[0].errorbar(m.taus, mean, yerr=std, marker="o", capsize=3, label=f"cut {cut}")
        st = out["stragglers"][cut]
        for label, style in (("tau1", "--"), ("tau_matched", "-")):
            ys = [np.nan if c["mean"] is None else c["mean"] for c in st[label]]
            axes[1].plot(st["delay_s"], ys, style, marker="o", label=f"cut {cut}, {label.replace('_', ' ')}")
    axes[0].set(xlabel="tau (server steps per round)", ylabel=f"rounds to {m.target_accuracy:g} (mean ± std over seeds)",
                title="MU-SplitFed, ZO on both sides")
    axes[1].set(xlabel="straggler mean delay (simulated s)", ylabel=f"simulated s to {m.target_accuracy:g}",
                title="time to target vs straggler delay")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(OUT / "tau_cut_stragglers.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
