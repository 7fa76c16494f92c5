"""Stages of the federated (non-split) family: partition, train, report and the family's diagnostics.

Downstream stages read the files written here (JSON, CSV, PNG), never an executed notebook.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fedlib import engine, partition, plots
from fedlib.config import to_dict
from fedlib.stats import interval_text, paired, verdict
from fedlib.stages.common import (
    column,
    fmt_or_dash,
    load_federation,
    mean_or_none,
    read_runs,
)


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


def train_stage(p: SimpleNamespace, method: str, seed: int, partition_path: str | Path,
                out_dir: str | Path, model_dir: str | Path, ckpt_dir: str | Path, progress: bool = True) -> dict:
    fed = load_federation(p, partition_path)
    return engine.train(p, method, seed, out_dir, fed=fed, ckpt_dir=ckpt_dir, model_dir=model_dir,
                        progress=progress)


def method_row(s: list[dict]) -> dict:
    """One method's row of the report over its seeds' summaries: means, and the sample std of the final accuracy
    (None for one seed)."""
    return {
        "final_accuracy": float(np.mean([x["final_accuracy"] for x in s])),
        "final_accuracy_std": float(np.std([x["final_accuracy"] for x in s], ddof=1)) if len(s) > 1 else None,
        "last10_accuracy": float(np.mean([x["last10_accuracy"] for x in s])),
        "best_accuracy": float(np.mean([x["best_accuracy"] for x in s])),
        "rounds_to_target": {a: mean_or_none([x["rounds_to_target"][a] for x in s]) for a in s[0]["rounds_to_target"]},
        "seconds_per_round": float(np.mean([x["seconds_per_round"] for x in s])),
        "seeds": len(s),
    }


def report_stage(p: SimpleNamespace, train_dir: str | Path, out_dir: str | Path) -> dict:
    """Accuracy and loss vs round for every method (mean and min..max over seeds), a final-accuracy
    table, and the wide CSVs that `dvc plots show` draws."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = read_runs(train_dir, p.train.methods, p.train.seeds)
    table = {m: method_row(run["summaries"]) for m, run in runs.items()}
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
    by_seed = {m: dict(zip(p.train.seeds, zip(r["summaries"], r["rows"]))) for m, r in runs.items()}
    (out_dir / "headline.md").write_text(headline(p, table, by_seed))
    return table


# the papers' orderings on this family, judged on final accuracy paired by seed (fedlib/stats.py)
CLAIMS = (("scaffold", "fedavg", False), ("fedwmsam", "mofedsam", False), ("fedwmsam", "scaffold", False),
          ("fedwmsam", "fedavg", False), ("fedsam", "fedavg", True))


def headline(p: SimpleNamespace, table: dict, by_seed: dict) -> str:
    """The README's summary of the default run: the table, then one verdict line per claim."""
    t = p.train
    lines = [f"MNIST-5k, {t.model}, {p.partition.num_clients} clients ({p.partition.scheme}), {t.clients_per_round} "
             f"a round, {t.local_epochs} local epochs, batch {t.batch_size}, {t.rounds} rounds, "
             f"seed{'s' if len(t.seeds) > 1 else ''} {', '.join(map(str, t.seeds))}.\n", markdown_table(table),
             "Claims, on final accuracy paired by seed (mean difference, 95 % t-interval from two seeds on):\n"]
    final = lambda x: x["final_accuracy"]
    for a, b, equal in CLAIMS:
        if a in by_seed and b in by_seed:
            q = paired(by_seed, a, b, final)
            rel = "≈" if equal else ">"
            lines.append(f"* {a} {rel} {b}: **{verdict(q['lo'], q['hi'], q['n'], equal)}** "
                         f"({interval_text(q)}, n = {q['n']})")
    return "\n".join(lines) + "\n"


def markdown_table(table: dict) -> str:
    targets = list(next(iter(table.values()))["rounds_to_target"])
    head = ["method", "final acc", "last-10 acc", "best acc", *[f"rounds to {t}" for t in targets], "s/round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, t in table.items():
        rt = ["—" if t["rounds_to_target"][a] is None else f"{t['rounds_to_target'][a]:.0f}" for a in targets]
        std = "" if t["final_accuracy_std"] is None else f" ± {t['final_accuracy_std']:.4f}"     # sample std over seeds
        lines.append(f"| {m} | {t['final_accuracy']:.4f}{std} | {t['last10_accuracy']:.4f} "
                     f"| {t['best_accuracy']:.4f} | " + " | ".join(rt) + f" | {t['seconds_per_round']:.3f} |")
    return "\n".join(lines) + "\n"


def family_summary(summaries: list[dict], rows_per_seed: list[list[dict]], window: int = 10) -> dict:
    """Accuracy and the failure-mode diagnostics of a method, mean over seeds:
    sign_flip_share     share of rounds in the second half with cos(Delta_bar_r, Delta_bar_{r-1}) < 0
    test_loss_swing     max - min of the test loss over the last ``window`` evaluated rounds
    curvature_cos       mean cos(local, global SAM ascent direction) over the rounds it was measured."""
    out = {
        "final_accuracy": float(np.mean([s["final_accuracy"] for s in summaries])),
        "last10_accuracy": float(np.mean([s["last10_accuracy"] for s in summaries])),
        "rounds_to_target": {t: mean_or_none([s["rounds_to_target"][t] for s in summaries])
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
                        f"{fmt_or_dash(None if base_s is None else sec / base_s, '.2f')} | {up:.1f} | {down:.1f} |")
        diag[m] = family_summary(s, run["rows"], window)
    (out_dir / "costs.md").write_text("\n".join(costs_md) + "\n")
    (out_dir / "diagnostics.json").write_text(json.dumps(diag, indent=2) + "\n")
    lines = ["| method | curvature cos (local vs global SAM direction) | sign-flip share, 2nd half | "
             f"test-loss swing, last {window} rounds | final alpha |", "|---|---|---|---|---|"]
    for m, d in diag.items():
        lines.append(f"| {m} | {fmt_or_dash(d['curvature_cos'], '.3f')} | {fmt_or_dash(d['sign_flip_share'], '.2f')}"
                     f" | {d['test_loss_swing']:.4f} | {fmt_or_dash(d['final_alpha'], '.4f')} |")
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
