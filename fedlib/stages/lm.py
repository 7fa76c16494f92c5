"""Language-model stages (issue 14): MiniLM on SST-2 through the existing engine and algorithms.

A run is a *label* of ``LM_METHODS``: an algorithm of fedlib/algorithms and whether the model carries
LoRA adapters (then x is the adapters + heads and every other weight is frozen). ``lm_params`` writes the
`lm:` section into a copy of the validated params (train.*, partition.*, methods.<algorithm>, and data.*
so that the engine's run fingerprint covers the text settings), exactly as the split stage does.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fedlib import engine, partition, text
from fedlib.config import to_dict
from fedlib.stages.common import claim, column, fmt_or_dash, run_name

# label -> (algorithm, LoRA adapters on every block)
LM_METHODS = {
    "fedavg": ("fedavg", False),             # full fine-tuning, non-split reference
    "fedlora": ("fedavg", True),             # FedAvg of LoRA adapters, non-split reference
    "splitfed_v2": ("splitfed_v2", False),
    "splitlora": ("splitfed_v2", True),      # SplitFed v2 with LoRA on both segments
    "csefsl": ("csefsl", False),
    "heron": ("heron", False),               # ZO client (all client weights) + aux, FO server
    "heron_lora": ("heron", True),           # ZO over the client's LoRA adapters + aux only
    "musplitfed": ("musplitfed", False),     # ZO both sides, tau server steps
    "musplitfed_lora": ("musplitfed", True),
}


def lm_params(p: SimpleNamespace, label: str, seed: int, *, cut: str | None = None, tau: int | None = None,
              rounds: int | None = None) -> tuple[SimpleNamespace, str]:
    """(params for one LM run, its algorithm); ``cut``, ``tau`` and ``rounds`` override for the study."""
    lm, q = p.lm, copy.deepcopy(p)
    method, lora = LM_METHODS[label]
    q.data = SimpleNamespace(dataset="sst2", root=lm.root, train_samples=lm.train_samples,
                             test_samples=lm.test_samples, length_quantile=lm.length_quantile,
                             max_length=lm.max_length, seed=lm.data_seed)
    q.partition.scheme, q.partition.num_clients, q.partition.alpha = lm.scheme, lm.num_clients, lm.alpha
    q.partition.seed = lm.partition_seed
    t = q.train
    t.model = "minilm"
    t.model_options = {"lora_rank": lm.lora_rank if lora else 0, "lora_alpha": lm.lora_alpha,
                       "head_scale": lm.head_scale}
    t.rounds, t.clients_per_round, t.local_epochs = rounds or lm.rounds, lm.clients_per_round, 1
    t.batch_size, t.lr = lm.batch_size, lm.lr_lora if lora else lm.lr
    t.lr_decay, t.weight_decay, t.clip, t.server_lr = 1.0, 0.0, lm.clip, 1.0
    t.eval_every, t.checkpoint_every, t.snapshot_rounds = lm.eval_every, 1, []
    t.target_accuracies, t.train_loss_samples, t.eval_batch_size = [lm.target_accuracy], lm.train_loss_samples, 100
    hp = getattr(q.methods, method)
    for key, value in {"cut": cut or lm.cut, "local_steps": lm.local_steps, "system_seed": seed,
                       "aux_hidden": lm.aux_hidden}.items():
        if hasattr(hp, key):
            setattr(hp, key, value)
    if method == "heron":
        hp.eta_c, hp.mu = (lm.heron_eta_c_lora if lora else lm.heron_eta_c), lm.zo_mu
    if method == "musplitfed":
        hp.eta_c = lm.mu_eta_c_lora if lora else lm.mu_eta_c
        hp.eta_s = lm.mu_eta_s_lora if lora else lm.mu_eta_s
        hp.lam, hp.eta_g, hp.server, hp.tau = lm.zo_mu, lm.mu_eta_g, lm.mu_server, tau or lm.tau
    return q, method


def lm_federation(p: SimpleNamespace) -> engine.Federation:
    """SST-2 subsets tokenised at the data-chosen length, partitioned over lm.num_clients clients
    (iid, or Dirichlet(lm.alpha) over the two labels) with fedlib/partition.py."""
    lm = p.lm
    data = text.load_sst2(lm.root, train_samples=lm.train_samples, test_samples=lm.test_samples,
                          seed=lm.data_seed, quantile=lm.length_quantile, max_length=lm.max_length)
    parts = partition.make_partition(data.y_train.numpy(), lm.scheme, lm.num_clients, alpha=lm.alpha,
                                     min_client_size=lm.batch_size, seed=lm.partition_seed)
    return engine.federate(data, parts)


# lm keys a run does not read as they stand: the study's own keys, the lists of runs, and the three a study
# overrides per run (rounds, tau, cut), whose effective values enter the fingerprint through q instead
NOT_RUN_KEYS = ("methods", "seeds", "rounds", "tau", "cut")


def lm_fingerprint(p: SimpleNamespace, q: SimpleNamespace, method: str, label: str, seed: int) -> str:
    """What determines an LM run: the lm section (less NOT_RUN_KEYS and study_*), the algorithm's
    hyper-parameters after the overrides (cut, tau), the effective rounds, the label and the seed. train.* keys
    of other stages do not enter, and changing the default run's lm.rounds / lm.tau / lm.cut leaves the
    studies' runs (which override them) valid."""
    keys = {k: v for k, v in vars(p.lm).items() if not k.startswith("study_") and k not in NOT_RUN_KEYS}
    keys.update(hp=to_dict(getattr(q.methods, method)), label=label, seed=seed, rounds=q.train.rounds)
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_lm(p: SimpleNamespace, label: str, seed: int, out_dir: Path, ckpt_dir: Path, fed: engine.Federation,
           progress: bool = True, **overrides) -> dict | None:
    """Train one LM run unless ``out_dir`` already holds its finished result (same fingerprint):
    long studies resume run by run, and a killed run resumes from its round checkpoint. A run being trained
    holds ``ckpt_dir``/lock, so processes started on the same study share its runs; None: another live
    process is training this one."""
    q, method = lm_params(p, label, seed, **overrides)
    fingerprint = lm_fingerprint(p, q, method, label, seed)
    done = out_dir / "fingerprint.txt"
    if (out_dir / "summary.json").exists() and done.exists() and done.read_text().strip() == fingerprint:
        return engine.read_summary(out_dir)        # summary.json with the wall clock of timing.json
    if not claim(Path(ckpt_dir) / "lock"):
        return None
    try:
        summary = engine.train(q, method, seed, out_dir, fed=fed, ckpt_dir=ckpt_dir, progress=progress)
        done.write_text(fingerprint + "\n")
    finally:
        (Path(ckpt_dir) / "lock").unlink(missing_ok=True)
    return summary


def run_or_wait(*args, poll_s: float = 20.0, **kwargs) -> dict:
    """run_lm, waiting while another process trains the run (and taking it over if that process dies)."""
    while (s := run_lm(*args, **kwargs)) is None:
        time.sleep(poll_s)
    return s


def lm_train_stage(p: SimpleNamespace, out_dir: str | Path, ckpt_dir: str | Path, progress: bool = True) -> dict:
    """Every lm.methods label x lm.seeds at lm.cut; writes <out_dir>/train/<run>/ and the summary table."""
    lm, out_dir = p.lm, Path(out_dir)
    fed = lm_federation(p)
    table = {}
    for label in lm.methods:
        for seed in lm.seeds:
            name = run_name(label, seed)
            s = run_or_wait(p, label, seed, out_dir / "train" / name, Path(ckpt_dir) / name, fed, progress)
            table[name] = {"label": label, "seed": seed, **{k: s[k] for k in (
                "final_accuracy", "best_accuracy", "rounds_to_target", "seconds_per_round", "num_params")}}
    meta = {"sequence_length": int(fed.data.input_shape[-1]), "train_samples": len(fed.data.y_train),
            "test_samples": len(fed.data.y_test), "client_sizes": [len(y) for y in fed.client_y]}
    (out_dir / "summary.json").write_text(json.dumps({"data": meta, "runs": table}, indent=2) + "\n")
    return {"data": meta, "runs": table}


def accuracy_table(p: SimpleNamespace, runs: dict) -> str:
    """Markdown: per label, mean final and best accuracy over seeds and rounds to the target."""
    lm = p.lm
    lines = [f"| method | algorithm | LoRA | final acc | best acc | rounds to {lm.target_accuracy:g} | s/round |",
             "|---|---|---|---|---|---|---|"]
    for label in lm.methods:
        rs = [runs[run_name(label, s)] for s in lm.seeds]
        reach = [r["rounds_to_target"][f"{lm.target_accuracy:g}"] for r in rs]
        method, lora = LM_METHODS[label]
        lines.append(f"| {label} | {method} | {'yes' if lora else 'no'} | "
                     f"{np.mean([r['final_accuracy'] for r in rs]):.4f} | {np.mean([r['best_accuracy'] for r in rs]):.4f} | "
                     f"{fmt_or_dash(None if None in reach else float(np.mean(reach)), '.1f')} | "
                     f"{np.mean([r['seconds_per_round'] for r in rs]):.1f} |")
    return "\n".join(lines) + "\n"


def accuracy_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """One line per label: (rounds, accuracy mean over seeds)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (rounds, acc) in curves.items():
        keep = ~np.isnan(acc)
        ax.plot(rounds[keep], acc[keep], "o-", ms=3, label=label)
    ax.set(xlabel="round", ylabel="SST-2 dev accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def read_curves(train_dir: Path, names: dict[str, list[str]]) -> dict:
    """{label: (rounds, mean test accuracy over the label's runs)} from each run's metrics.csv."""
    out = {}
    for label, runs in names.items():
        rows = []
        for r in runs:
            with open(train_dir / r / "metrics.csv", newline="") as f:
                rows.append(list(csv.DictReader(f)))
        rounds, acc = column(rows, "test_accuracy")
        out[label] = (rounds, np.nanmean(acc, 0))
    return out


def lm_report(p: SimpleNamespace, out_dir: str | Path) -> dict:
    """accuracy.md and accuracy.png of the default LM run (after ``lm_train_stage``)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    (out_dir / "accuracy.md").write_text(accuracy_table(p, summary["runs"]))
    curves = read_curves(out_dir / "train", {m: [run_name(m, s) for s in p.lm.seeds] for m in p.lm.methods})
    d = summary["data"]
    accuracy_figure(curves, out_dir / "accuracy.png",
                    f"MiniLM on SST-2 ({d['train_samples']} train, L = {d['sequence_length']}, cut {p.lm.cut})")
    return summary


def study_runs(p: SimpleNamespace, cut: str) -> list[dict]:
    """The Table-4 analogue at one cut: lm.study_label with each server of lm.study_servers (zo: MU-SplitFed as
    published; fo: the first-order server extension) for every tau of lm.study_taus and seed of lm.study_seeds."""
    lm = p.lm
    return [{"name": f"{lm.study_label}-{server}-{cut}-tau{tau}-{seed}", "server": server, "cut": cut, "tau": tau,
             "seed": seed} for server in lm.study_servers for tau in lm.study_taus for seed in lm.study_seeds]


def study_lm(p: SimpleNamespace, server: str) -> SimpleNamespace:
    """A copy of p whose lm section carries the study's settings for one server kind: data size, evaluation
    interval, target, and the MU-SplitFed step sizes (so each run's fingerprint covers them)."""
    q = copy.deepcopy(p)
    lm = q.lm
    lm.train_samples, lm.eval_every, lm.target_accuracy = lm.study_train_samples, lm.study_eval_every, \
        lm.study_target_accuracy
    lm.mu_server = server
    lm.mu_eta_c = lm.mu_eta_c_lora = lm.study_mu_eta_c
    lm.mu_eta_s = lm.mu_eta_s_lora = lm.study_mu_eta_s if server == "zo" else lm.study_mu_eta_s_fo
    return q


def study_methods_params(p: SimpleNamespace) -> SimpleNamespace:
    """Every lm.methods label at lm.cut in the study's regime: its data size, lm.study_rounds rounds,
    lm.study_seeds, its evaluation interval, target and MU-SplitFed step sizes (zeroth-order server)."""
    q = study_lm(p, "zo")
    q.lm.rounds, q.lm.seeds = q.lm.study_rounds, q.lm.study_seeds
    return q


def lm_study_stage(p: SimpleNamespace, cut: str, out_dir: str | Path, ckpt_dir: str | Path, progress: bool = True) -> dict:
    """Train (or pick up) every run of ``study_runs``; each finished run is kept, a killed one resumes.
    The study trains on lm.study_train_samples sentences and evaluates every lm.study_eval_every rounds.
    Two processes on the same cut share it: each first trains the runs nobody holds, then waits for the rest."""
    lm, out_dir = p.lm, Path(out_dir)
    fed = lm_federation(study_lm(p, "zo"))
    table, runs = {}, study_runs(p, cut)
    args = lambda run: (study_lm(p, run["server"]), lm.study_label, run["seed"], out_dir / run["name"],
                        Path(ckpt_dir) / run["name"], fed, progress)
    kw = lambda run: {"cut": cut, "tau": run["tau"], "rounds": lm.study_rounds}
    done = {run["name"]: run_lm(*args(run), **kw(run)) for run in runs}        # runs another process holds: None
    for run in runs:
        s = done[run["name"]] or run_or_wait(*args(run), **kw(run))
        table[run["name"]] = {**run, "final_accuracy": s["final_accuracy"], "best_accuracy": s["best_accuracy"],
                              "rounds_to_target": s["rounds_to_target"][f"{lm.study_target_accuracy:g}"],
                              "seconds_per_round": s["seconds_per_round"]}
    (out_dir / f"summary-{cut}.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def study_report(p: SimpleNamespace, study_dir: str | Path, out_dir: str | Path) -> dict:
    """Per server kind: tau x cut tables (rounds to lm.study_target_accuracy, mean over seeds, '—' if a seed never
    reached it; final accuracy) and accuracy-vs-round figures, one per cut."""
    lm, study_dir, out_dir = p.lm, Path(study_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    for cut in lm.study_cuts:                    # one folder per cut (one study stage each)
        table.update(json.loads((study_dir / cut / f"summary-{cut}.json").read_text()))
    cell, lines = {}, []
    kind = {"zo": "zeroth-order server, as published", "fo": "first-order server, an extension"}
    for server in lm.study_servers:
        for cut in lm.study_cuts:
            names = {tau: [f"{lm.study_label}-{server}-{cut}-tau{tau}-{s}" for s in lm.study_seeds]
                     for tau in lm.study_taus}
            for tau in lm.study_taus:
                rs = [table[n] for n in names[tau]]
                reach = [r["rounds_to_target"] for r in rs]
                cell[server, cut, tau] = {"rounds_to_target": None if None in reach else float(np.mean(reach)),
                                          "final_accuracy": float(np.mean([r["final_accuracy"] for r in rs])),
                                          "best_accuracy": float(np.mean([r["best_accuracy"] for r in rs]))}
            accuracy_figure(read_curves(study_dir / cut, {f"tau={t}": n for t, n in names.items()}),
                            out_dir / f"accuracy-{server}-{cut}.png",
                            f"{lm.study_label}, {kind[server]}, cut {cut}")
        seeds = f"mean over seeds {lm.study_seeds}, evaluation every {lm.study_eval_every} rounds"
        for key, spec, title in (("rounds_to_target", "g", f"rounds to {lm.study_target_accuracy:g}"),
                                 ("final_accuracy", ".4f", f"accuracy after {lm.study_rounds} rounds"),
                                 ("best_accuracy", ".4f", "best accuracy")):
            lines += [f"{title} ({lm.study_label}, {kind[server]}; {seeds}; rows: cut, columns: tau)", "",
                      "| cut | " + " | ".join(f"τ={t}" for t in lm.study_taus) + " |",
                      "|---|" + "---|" * len(lm.study_taus)]
            lines += [f"| {cut} | " + " | ".join(fmt_or_dash(cell[server, cut, t][key], spec) for t in lm.study_taus)
                      + " |" for cut in lm.study_cuts]
            lines.append("")
    (out_dir / "tau_cut.md").write_text("\n".join(lines))
    best = {f"{server}/{cut}": min((t for t in lm.study_taus if cell[server, cut, t]["rounds_to_target"] is not None),
                                   key=lambda t: cell[server, cut, t]["rounds_to_target"], default=None)
            for server in lm.study_servers for cut in lm.study_cuts}
    summary = {"cells": {f"{s}/{c}/tau{t}": v for (s, c, t), v in cell.items()}, "best_tau": best}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
