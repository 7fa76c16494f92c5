"""What each pipeline stage computes and writes; the notebooks call these and show the results.

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
