"""Split-learning stages: train every split run, measure client costs, and report."""
from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fedlib import costs, engine, partition
from fedlib.stages.common import column, mean_or_none, run_name

SPLIT_SHARED = ("cut", "local_steps", "client_flops_per_s", "server_flops_per_s", "link_bytes_per_s",
                "straggler_share", "straggler_delay_s")


def split_params(p: SimpleNamespace, method: str, seed: int, *, cut: str | None = None, tau: int | None = None,
                 rounds: int | None = None, model: str | None = None) -> SimpleNamespace:
    """A copy of the validated params for one split run: the engine's train.* and partition.* fields
    taken from the `split:` section (so the run's fingerprint covers them) and the shared split
    settings written into methods.<method>; ``cut``, ``tau`` and ``rounds`` override for sweeps. A run
    with ``tau`` (MU-SplitFed's tau x cut sweep) uses split.mu_model; ``model`` overrides both."""
    s, q = p.split, copy.deepcopy(p)
    t = q.train
    t.model = model or (s.mu_model if tau is not None else s.model)
    t.rounds, t.clients_per_round = rounds or s.rounds, s.clients_per_round
    t.batch_size, t.lr, t.eval_every = s.batch_size, s.lr, s.eval_every
    t.eval_batch_size, t.train_loss_samples = s.eval_batch_size, s.train_loss_samples
    t.grad_norm_every = 0        # ||grad f||^2 per round is the FL bound's input (fedlib/analysis), not a split one
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
    """Every split method x seed at split.cut, then MU-SplitFed (split.mu_model) over split.mu_taus x
    split.mu_cuts (first seed, split.mu_rounds)."""
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
        summary = engine.read_summary(out_dir / run["name"])     # with the wall clock of timing.json
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


def read_split_runs(train_dir: Path, methods: list[str], seeds: list[int]) -> dict:
    """{method: {"summaries": [...], "rows": [[row, ...] per seed]}} from split_train's <train_dir>/<method>-<seed>."""
    out = {}
    for m in methods:
        dirs = [Path(train_dir) / run_name(m, seed) for seed in seeds]
        missing = [d for d in dirs if not (d / "summary.json").exists()]
        if missing:
            raise FileNotFoundError(f"no finished split run in {missing[0]}; run `dvc repro split_train`")
        out[m] = {"summaries": [json.loads((d / "summary.json").read_text()) for d in dirs],
                  "rows": [list(csv.DictReader(open(d / "metrics.csv"))) for d in dirs]}
    return out


def sim_time_to(rows: list[dict], target: float) -> float | None:
    """Simulated seconds until the first evaluated round with test accuracy >= target."""
    return next((float(r["sim_time_s"]) for r in rows
                 if r["test_accuracy"] != "" and float(r["test_accuracy"]) >= target), None)


def split_costs_stage(p: SimpleNamespace, out_dir: str | Path) -> dict:
    """Measure each split method's client costs over one round of the default setting (round 0's
    sampled clients): peak memory (one accounting for every method: resident bytes + the peak bytes
    allocated during the client's whole step, fedlib/memory.py), FLOPs per step, bytes per client
    and round, and each client's simulated timeline; MU-SplitFed also for every cut and tau of the sweep."""
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
        w.writerow(["config", "method", "cut", "tau", "client_params", "peak_memory_bytes", "resident_bytes",
                    "transient_bytes", "flops_per_step", *costs.TRAFFIC_COLUMNS])
        for name, r in rows.items():
            m = r["memory"]
            w.writerow([name, r["method"], r["cut"], r["tau"], r["client_params"], m["total"], m["total"] - m["transient"],
                        m["transient"], r["flops_per_step"], *[r[k] for k in costs.TRAFFIC_COLUMNS]])
    return rows


HERON_CLAIMS = {"memory": -0.64, "flops": -0.33}     # HERON-SFL vs CSE-FSL, as the paper states them


def cost_markdown(rows: dict) -> str:
    """Peak memory = resident (parameters, gradient buffers) + the peak bytes allocated during the
    client's whole step, the same accounting for every method (fedlib/memory.py)."""
    head = ["config", "client params", "peak memory (KiB)", "resident (KiB)", "allocated in step (KiB)",
            "MFLOP/step", "cut up (KiB)", "cut down (KiB)", "model up (KiB)", "model down (KiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        m = r["memory"]
        lines.append(f"| {name} | {r['client_params']} | {m['total'] / 1024:.0f} | "
                     f"{(m['total'] - m['transient']) / 1024:.0f} | {m['transient'] / 1024:.0f} | "
                     f"{r['flops_per_step'] / 1e6:.1f} | "
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
    runs = read_split_runs(train_dir, s.methods, s.seeds)
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
                "sim_time_to_target_s": mean_or_none([sim_time_to(rows, s.target_accuracy) for rows in run["rows"]])}
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
            "transient_change": h["memory"]["transient"] / c["memory"]["transient"] - 1}

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
