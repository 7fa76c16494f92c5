"""The long MU-SplitFed study (notebooks/studies/dvc.yaml): ZO on both sides, as published (SPEC 3.2).

1. grid:  tau = 1 at mu_study.grid_cut, first seed, grid_rounds rounds, over grid_eta_s x grid_eta_c;
          the pair with the best test accuracy among the runs that did not diverge (NaN) is chosen
          (ties: final accuracy); a diverged run is recorded with its round.
2. sweep: every cut x tau x seed for mu_study.rounds rounds at the chosen step sizes (resumable:
          a complete run is skipped, a killed one resumes from its checkpoint).
   gas:   GAS (ZO client, and the original first-order client) at grid_cut for comparison.
3. report (fedlib/stages/mu_report.py): rounds to mu_study.target_accuracy per (cut, tau) over seeds, and the straggler
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
    done.unlink(missing_ok=True)              # a stale summary never sits beside a new run's partial metrics
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


def gas_params(p: SimpleNamespace, client: str, seed: int, eta: dict) -> SimpleNamespace:
    """GAS at the study's setting with a ZO ('zo') or first-order ('fo') client at the chosen eta_c."""
    m = p.mu_study
    q = split_params(p, "gas", seed, cut=m.grid_cut, rounds=m.rounds, model=m.model)
    q.train.eval_every, q.train.target_accuracies = m.eval_every, [0.5]
    q.train.grad_norm_every = 0
    hp = q.methods.gas
    hp.client, hp.local_steps, hp.eta_c = client, 1, eta["eta_c"]
    return q


def gas_baseline(p: SimpleNamespace, seeds: list[int]) -> None:
    """GAS at the study's setting (grid_cut, one minibatch per client per round, mu_study.rounds rounds):
    its ZO client (MU-SplitFed's comparison) at the chosen eta_c, and the original first-order client."""
    fed = split_federation(p)
    eta = json.loads((OUT / "grid.json").read_text())["chosen"]
    for seed in seeds:
        for client in ("zo", "fo"):
            q = gas_params(p, client, seed, eta)
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
        from fedlib.stages.mu_report import report
        report(p)


if __name__ == "__main__":
    main()
