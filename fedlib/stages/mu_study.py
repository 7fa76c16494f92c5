"""The long MU-SplitFed study (notebooks/studies/dvc.yaml): ZO on both sides, as published (SPEC 3.2).

1. grid:  tau = 1 at mu_study.grid_cut, first seed, grid_rounds rounds, over grid_eta_s x grid_eta_c;
          the pair with the best test accuracy among the runs that did not diverge (NaN) is chosen
          (ties: final accuracy); a diverged run is recorded with its round.
2. sweep: every cut x tau x seed for mu_study.rounds rounds at the chosen step sizes (resumable:
          a complete run is skipped, a killed one resumes from its checkpoint).
   gas:   GAS (ZO client, and the original first-order client) at grid_cut for comparison.
3. report: rounds to mu_study.target_accuracy per (cut, tau) over seeds, and the straggler
          experiment: each run's rounds to target re-timed with a measured per-client timeline (server
          work at mu_study.straggler_server_flops_per_s, a compute-poor server) and seeded exponential
          delays of mean d * (server step time), tau = 1 against tau ~ max(1, d).

Run as ``python -m fedlib.stages.mu_study grid|sweep|report [--seed S]`` from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fedlib import config, costs, engine
from fedlib.algorithms.base import ClientData, RoundInfo, derive_seed
from fedlib.stages.split import split_federation, split_params

OUT = Path("results/studies/musplitfed")
CKPT = Path("runs/studies/musplitfed")


def study_params(p: SimpleNamespace, cut: str, tau: int, seed: int, rounds: int, eta: dict | None) -> SimpleNamespace:
    m = p.mu_study
    q = split_params(p, "musplitfed", seed, cut=cut, tau=tau, rounds=rounds, model=m.model)
    q.train.eval_every = m.eval_every
    q.train.grad_norm_every = 0            # f is logged at evaluations only: thousands of cheap rounds
    q.train.target_accuracies = [0.5]      # fixed, so that a new mu_study.target_accuracy reuses the runs
    hp = q.methods.musplitfed
    hp.server = "zo"
    if eta:
        hp.eta_s, hp.eta_c = eta["eta_s"], eta["eta_c"]
    return q


def run_once(q: SimpleNamespace, seed: int, out: Path, ckpt: Path, fed) -> dict:
    """engine.train unless out/summary.json already holds this run; a divergence is recorded, not raised."""
    done = out / "summary.json"
    if done.exists():
        s = json.loads(done.read_text())
        if s.get("rounds") == q.train.rounds and s.get("fingerprint") == engine.run_fingerprint(q, "musplitfed", seed):
            return s
    try:
        s = engine.train(q, "musplitfed", seed, out, fed=fed, ckpt_dir=ckpt, progress=False)
    except engine.DivergenceError as e:
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        accs = [float(r["test_accuracy"]) for r in rows if r["test_accuracy"]]
        s = {"diverged_round": len(rows) + 1, "message": str(e), "final_accuracy": 0.0,
             "best_accuracy": max(accs, default=0.0), "rounds": q.train.rounds, "rounds_to_target": {}}
    s["fingerprint"] = engine.run_fingerprint(q, "musplitfed", seed)
    done.write_text(json.dumps(s, indent=2) + "\n")
    return s


def grid(p: SimpleNamespace, workers: tuple[int, int] = (0, 1)) -> dict:
    """Step-size search; writes grid.json / grid.csv (the choice is made by ``choose``)."""
    m, fed = p.mu_study, split_federation(p)
    rows = []
    for i, (es, ec) in enumerate([(es, ec) for es in m.grid_eta_s for ec in m.grid_eta_c]):
        name = f"grid/eta_s{es:g}-eta_c{ec:g}"
        if i % workers[1] != workers[0]:
            continue
        q = study_params(p, m.grid_cut, 1, m.seeds[0], m.grid_rounds, {"eta_s": es, "eta_c": ec})
        s = run_once(q, m.seeds[0], OUT / name, CKPT / name, fed)
        rows.append({"eta_s": es, "eta_c": ec, **{k: s.get(k) for k in ("final_accuracy", "best_accuracy",
                                                                           "diverged_round")}})
    return {"rows": rows}


def choose(p: SimpleNamespace) -> dict:
    """Read every grid run and pick (eta_s, eta_c) by best accuracy, then final accuracy."""
    m = p.mu_study
    rows = []
    for es in m.grid_eta_s:
        for ec in m.grid_eta_c:
            f = OUT / f"grid/eta_s{es:g}-eta_c{ec:g}" / "summary.json"
            s = json.loads(f.read_text())
            rows.append({"eta_s": es, "eta_c": ec, "final_accuracy": s["final_accuracy"],
                         "best_accuracy": s["best_accuracy"], "diverged_round": s.get("diverged_round")})
    best = max(rows, key=lambda r: (r["diverged_round"] is None, r["best_accuracy"], r["final_accuracy"]))
    out = {"cut": m.grid_cut, "tau": 1, "rounds": m.grid_rounds, "seed": m.seeds[0], "rows": rows,
           "chosen": {"eta_s": best["eta_s"], "eta_c": best["eta_c"]}}
    (OUT / "grid.json").write_text(json.dumps(out, indent=2) + "\n")
    with open(OUT / "grid.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def sweep(p: SimpleNamespace, seeds: list[int], taus: list[int] | None = None, cuts: list[str] | None = None) -> None:
    m, fed = p.mu_study, split_federation(p)
    eta = json.loads((OUT / "grid.json").read_text())["chosen"]
    for seed in seeds:
        for tau in taus or m.taus:
            for cut in cuts or m.cuts:
                name = f"runs/{cut}-tau{tau}-seed{seed}"
                run_once(study_params(p, cut, tau, seed, m.rounds, eta), seed, OUT / name, CKPT / name, fed)


def gas_baseline(p: SimpleNamespace, seeds: list[int]) -> None:
    """GAS at the study's setting (grid_cut, one minibatch per client per round, mu_study.rounds rounds):
    its ZO client (MU-SplitFed's comparison) at the chosen eta_c, and the original first-order client."""
    m, fed = p.mu_study, split_federation(p)
    eta = json.loads((OUT / "grid.json").read_text())["chosen"]
    for seed in seeds:
        for client in ("zo", "fo"):
            q = split_params(p, "gas", seed, cut=m.grid_cut, rounds=m.rounds, model=m.model)
            q.train.eval_every, q.train.target_accuracies = m.eval_every, [0.5]
            hp = q.methods.gas
            hp.client, hp.local_steps, hp.eta_c = client, 1, eta["eta_c"]
            name = f"gas/{client}-seed{seed}"
            out, done = OUT / name, OUT / name / "summary.json"
            fp = engine.run_fingerprint(q, "gas", seed)
            if done.exists() and json.loads(done.read_text()).get("fingerprint") == fp:
                continue
            try:
                s = engine.train(q, "gas", seed, out, fed=fed, ckpt_dir=CKPT / name, progress=False)
            except engine.DivergenceError as e:
                s = {"diverged": str(e), "final_accuracy": 0.0, "best_accuracy": 0.0}
            s["fingerprint"] = fp
            done.write_text(json.dumps(s, indent=2) + "\n")


def timeline(p: SimpleNamespace, cut: str, tau: int, eta: dict, fed) -> tuple[costs.ClientTimeline, float]:
    """Mean per-client timeline of one measured round (round 0, first seed) and the server step time."""
    seed = p.mu_study.seeds[0]
    q = study_params(p, cut, tau, seed, 1, eta)
    alg, x = engine.make_algorithm(q, "musplitfed", fed, seed)
    chosen = engine.sample_clients(seed, 0, fed.num_clients, q.train.clients_per_round)
    clients = [ClientData(int(k), fed.client_x[k], fed.client_y[k],
                          torch.Generator().manual_seed(derive_seed(seed, 0, int(k)))) for k in chosen]
    alg.run_round(x, clients, RoundInfo(0, q.train.lr, x))
    t = costs.ClientTimeline(**{k: float(np.mean([getattr(c, k) for c in alg.last_timelines]))
                                for k in vars(alg.last_timelines[0])})
    return t, t.overlap_server_s / tau


def slow_server(p: SimpleNamespace, t: costs.ClientTimeline, step_s: float) -> tuple[costs.ClientTimeline, float]:
    """The timeline and server step with the server's work at mu_study.straggler_server_flops_per_s instead of
    split.server_flops_per_s (time = FLOPs / speed, so the server's seconds scale by the speed ratio)."""
    k = p.split.server_flops_per_s / p.mu_study.straggler_server_flops_per_s
    return (costs.ClientTimeline(t.client_s, t.link_s, t.server_s * k, t.first_upload_s, t.overlap_server_s * k),
            step_s * k)


def retime(p: SimpleNamespace, t: costs.ClientTimeline, rounds: int, seed: int, delay_s: float) -> float:
    """Simulated seconds of ``rounds`` rounds: each lasts its slowest sampled client (costs.round_s)."""
    s = p.split
    system = costs.System(s.client_flops_per_s, s.server_flops_per_s, s.link_bytes_per_s, s.straggler_share, delay_s)
    slow = costs.stragglers(seed, s.num_clients, s.straggler_share)
    total = 0.0
    for r in range(rounds):
        chosen = engine.sample_clients(seed, r, s.num_clients, s.clients_per_round)
        total += costs.round_s([t] * len(chosen), [costs.straggler_delay(system, seed, r, int(k), slow) for k in chosen])
    return total


def rounds_to(run_dir: Path, target: float) -> int | None:
    """First evaluated round with test accuracy >= target (None: never, or the run diverged first)."""
    for r in csv.DictReader(open(run_dir / "metrics.csv")):
        if r["test_accuracy"] and float(r["test_accuracy"]) >= target:
            return int(r["round"])
    return None


def last_accuracy(run_dir: Path, window: int) -> float:
    """Mean test accuracy over the evaluations in the run's last ``window`` rounds (0 after a divergence)."""
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["test_accuracy"]]
    s = json.loads((run_dir / "summary.json").read_text())
    if "diverged_round" in s or not rows:
        return 0.0
    end = int(rows[-1]["round"])
    return float(np.mean([float(r["test_accuracy"]) for r in rows if int(r["round"]) > end - window]))


def mean_reached(values: list) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


def report(p: SimpleNamespace) -> dict:
    m, fed = p.mu_study, split_federation(p)
    eta = json.loads((OUT / "grid.json").read_text())["chosen"]
    table, rows = {}, []
    for cut in m.cuts:
        for tau in m.taus:
            per_seed = []
            for seed in m.seeds:
                f = OUT / f"runs/{cut}-tau{tau}-seed{seed}" / "summary.json"
                per_seed.append(json.loads(f.read_text()) if f.exists() else None)
            done = [s for s in per_seed if s is not None]
            dirs = [OUT / f"runs/{cut}-tau{tau}-seed{seed}" for seed, s in zip(m.seeds, per_seed) if s is not None]
            rtt = [rounds_to(d, m.target_accuracy) for d in dirs]
            reached = [r for r in rtt if r is not None]
            last = [last_accuracy(d, 100) for d in dirs]
            cell = {"seeds_done": len(done), "rounds_to_target": rtt, "reached": len(reached),
                    # mean and std over the seeds that reached the target ("reached" of them)
                    "rounds_to_target_mean": float(np.mean(reached)) if reached else None,
                    "rounds_to_target_std": float(np.std(reached)) if reached else None,
                    "diverged": sum("diverged_round" in s for s in done),
                    "last100_accuracy_mean": float(np.mean(last)) if last else None,
                    "last100_accuracy_std": float(np.std(last)) if last else None,
                    "best_accuracy_mean": float(np.mean([s["best_accuracy"] for s in done])) if done else None,
                    **{f"reached_{t:g}": sum(rounds_to(d, t) is not None for d in dirs) for t in (0.25, 0.3, 0.35, 0.4)},
                    **{f"rounds_to_{t:g}_mean": mean_reached([rounds_to(d, t) for d in dirs]) for t in (0.25, 0.3, 0.4)}}
            table[f"{cut}-tau{tau}"] = cell
            rows.append({"cut": cut, "tau": tau, **{k: v for k, v in cell.items() if k != "rounds_to_target"},
                         "rounds_to_target": " ".join("-" if r is None else str(r) for r in rtt)})
    stragglers = {}
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
                times = []
                for seed, r in zip(m.seeds, table[f"{cut}-tau{tau}"]["rounds_to_target"]):
                    times.append(None if r is None else retime(p, lines[tau][0], r, seed, d * step_s))
                ok = [x for x in times if x is not None]        # mean over the seeds that reached the target
                cur[label].append({"per_seed": times, "reached": len(ok), "mean": float(np.mean(ok)) if ok else None,
                                   "std": float(np.std(ok)) if ok else None})
        stragglers[cut] = cur
    gas = {}
    for client in ("zo", "fo"):
        for seed in m.seeds:
            d = OUT / f"gas/{client}-seed{seed}"
            if (d / "summary.json").exists():
                g = json.loads((d / "summary.json").read_text())
                gas[f"{client}-seed{seed}"] = {"final_accuracy": g["final_accuracy"], "best_accuracy": g["best_accuracy"],
                                               "rounds_to_target": rounds_to(d, m.target_accuracy),
                                               "diverged": "diverged" in g}
    out = {"target_accuracy": m.target_accuracy, "eta": eta, "rounds": m.rounds, "seeds": m.seeds,
           "table": table, "stragglers": stragglers, "gas": gas}
    (OUT / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    (OUT / "stragglers.md").write_text(stragglers_markdown(out, m))
    with open(OUT / "tau_cut.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(p, out)
    return out


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["grid", "choose", "sweep", "gas", "report"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", type=int, action="append", help="sweep only these seeds (default: all)")
    ap.add_argument("--tau", type=int, action="append", help="sweep only these taus (default: all)")
    ap.add_argument("--cut", action="append", help="sweep only these cuts, in this order (default: all)")
    ap.add_argument("--part", default="0/1", help="grid: this worker's share i/n")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = config.load_params(a.params)
    OUT.mkdir(parents=True, exist_ok=True)
    if a.step == "grid":
        i, n = map(int, a.part.split("/"))
        grid(p, (i, n))
        if n == 1:
            choose(p)
    elif a.step == "choose":
        choose(p)
    elif a.step == "sweep":
        sweep(p, a.seed or p.mu_study.seeds, a.tau, a.cut)
    elif a.step == "gas":
        gas_baseline(p, a.seed or p.mu_study.seeds)
    else:
        report(p)


if __name__ == "__main__":
    main()
