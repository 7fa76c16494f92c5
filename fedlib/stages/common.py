"""Helpers shared by the stage modules: run names, federations, reading finished runs, tables."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fedlib import engine, partition

def run_name(method: str, seed: int) -> str:
    return f"{method}-{seed}"


def run_dir(root: str | Path, method: str, seed: int) -> Path:
    """A federated run's folder, ``<root>/<method>/<seed>``: the train stage is one DVC stage per method,
    and its outputs results/train/<method> and models/<method> hold the runs of every seed."""
    return Path(root) / method / str(seed)


def load_federation(p: SimpleNamespace, partition_path: str | Path) -> engine.Federation:
    data = engine.load_data(p)
    return engine.federate(data, partition.load(partition_path))


def read_runs(train_dir: str | Path, methods: list[str], seeds: list[int]) -> dict:
    """{method: {"summaries": [...], "rows": [[row, ...] per seed]}} for the runs present."""
    out = {}
    for m in methods:
        runs = [run_dir(train_dir, m, s) for s in seeds]
        missing = [r for r in runs if not (r / "summary.json").exists()]
        if missing:
            raise FileNotFoundError(f"no finished run in {missing[0]}; run `dvc repro` for the train stages")
        out[m] = {"summaries": [engine.read_summary(r) for r in runs],
                  "rows": [list(csv.DictReader(open(r / "metrics.csv"))) for r in runs]}
    return out


def column(rows_per_seed: list[list[dict]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, values with shape (seeds, rounds)) of a metrics column, NaN where not logged."""
    rounds = np.array([int(r["round"]) for r in rows_per_seed[0]])
    vals = np.array([[float(r[name]) if r.get(name, "") != "" else np.nan for r in rows] for rows in rows_per_seed])
    return rounds, vals


def mean_or_none(xs):
    """Mean rounds to a target over seeds; None when any seed never reached it."""
    return None if any(x is None for x in xs) else float(np.mean(xs))


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV with the union of the rows' keys as columns (blank where a row lacks one)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows({k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def fmt_or_dash(v, spec=".4f"):
    return "—" if v is None else format(v, spec)


def claim(lock: Path) -> bool:
    """Create `lock` holding this pid; False when another live process holds it (a dead owner's lock is taken)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)
                continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False
