"""HERON-SFL's accuracy gap to CSE-FSL (notebooks/studies/dvc.yaml): longer runs, q > 1, step sizes.

At the split stages' setting (split.model, split.cut, partition, batch, h = split.local_steps), over
heron_study.rounds rounds and heron_study.seeds: CSE-FSL once per seed, HERON-SFL for every
eta_c in heron_study.eta_c and q in heron_study.q. A diverged run is recorded with its round, not
raised. Writes results/studies/heron/{runs/<name>/, summary.json, table.csv}.

Run as ``python -m fedlib.stages.heron_study [--part i/n]`` from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from fedlib import config, engine
from fedlib.stages.split import split_federation, split_params

OUT = Path("results/studies/heron")
CKPT = Path("runs/studies/heron")


def configs(p) -> list[tuple[str, str, dict]]:
    h = p.heron_study
    out = [("csefsl", "csefsl", {})]
    out += [(f"heron-eta{eta:g}-q{q}", "heron", {"eta_c": eta, "q": q}) for q in h.q for eta in h.eta_c]
    return out


def run_params(p, method: str, over: dict, seed: int):
    """One run's params: the split stage's settings over heron_study.rounds, with the config's overrides."""
    h = p.heron_study
    q = split_params(p, method, seed, rounds=h.rounds)
    q.train.eval_every = h.eval_every
    q.train.grad_norm_every = 1    # as its committed runs were made (in their fingerprints); split_params sets 0
    vars(getattr(q.methods, method)).update(over)
    return q


def run_dir(name: str, seed: int) -> Path:
    return OUT / "runs" / f"{name}-seed{seed}"


def run(p, name: str, method: str, over: dict, seed: int, fed) -> dict:
    q = run_params(p, method, over, seed)
    out = run_dir(name, seed)
    done = out / "summary.json"
    fp = engine.run_fingerprint(q, method, seed)
    if done.exists() and json.loads(done.read_text()).get("fingerprint") == fp:
        return json.loads(done.read_text())
    try:
        s = engine.train(q, method, seed, out, fed=fed, ckpt_dir=CKPT / out.name, progress=False)
    except engine.DivergenceError as e:
        s = {"diverged": str(e), "final_accuracy": 0.0, "best_accuracy": 0.0}
    s["fingerprint"] = fp
    done.write_text(json.dumps(s, indent=2) + "\n")
    return s


def summarise(p) -> dict:
    rows = []
    for name, method, over in configs(p):
        for seed in p.heron_study.seeds:
            f = run_dir(name, seed) / "summary.json"
            if f.exists():
                s = json.loads(f.read_text())
                rows.append({"config": name, "seed": seed, **over, "final_accuracy": s["final_accuracy"],
                             "best_accuracy": s["best_accuracy"], "diverged": "diverged" in s,
                             "seconds_per_round": s.get("seconds_per_round")})
    (OUT / "summary.json").write_text(json.dumps({"rounds": p.heron_study.rounds, "rows": rows}, indent=2) + "\n")
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(OUT / "table.csv", "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
        (OUT / "table.md").write_text(markdown(p, rows))
    return {"rows": rows}


def markdown(p, rows: list[dict]) -> str:
    """Per config: final accuracy mean ± std over seeds (a diverged run counts as 0) and HERON - CSE-FSL paired
    by seed, mean with its 95 % t-interval and the verdict of 'HERON matches CSE-FSL' (within ±stats.EQUIV)."""
    import numpy as np

    from fedlib.stats import EQUIV, interval, verdict

    acc = {(r["config"], r["seed"]): r["final_accuracy"] for r in rows}
    base = {sd: a for (c, sd), a in acc.items() if c == "csefsl"}
    lines = [f"HERON-SFL against CSE-FSL, {p.heron_study.rounds} rounds, seeds {p.heron_study.seeds}: final test "
             f"accuracy (mean ± std over seeds; diverged = 0) and HERON − CSE-FSL paired by seed (95 % t-interval; "
             f"'matches' = the interval inside ±{EQUIV:g})", "",
             "| config | seeds | diverged | final accuracy | − CSE-FSL [95 % CI] | matches CSE-FSL |", "|---|---:|---:|---|---|---|"]
    for name, _, _ in configs(p):
        got = {sd: a for (c, sd), a in acc.items() if c == name}
        if not got:
            continue
        v = np.array(list(got.values()))
        div = sum(r["diverged"] for r in rows if r["config"] == name)
        cell = "— | —"
        if name != "csefsl":
            d = [got[sd] - base[sd] for sd in sorted(got) if sd in base]
            m, lo, hi = interval(d)
            cell = f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] | {verdict(lo, hi, len(d), equivalence=True)}"
        lines.append(f"| {name} | {len(v)} | {div} | {v.mean():.4f} ± {v.std():.4f} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--part", default="0/1", help="this worker's share i/n of the runs")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = config.load_params(a.params)
    OUT.mkdir(parents=True, exist_ok=True)
    fed = split_federation(p)
    i, n = map(int, a.part.split("/"))
    jobs = [(c, seed) for seed in p.heron_study.seeds for c in configs(p)]
    for j, ((name, method, over), seed) in enumerate(jobs):
        if j % n == i:
            run(p, name, method, over, seed, fed)
    summarise(p)


if __name__ == "__main__":
    main()
