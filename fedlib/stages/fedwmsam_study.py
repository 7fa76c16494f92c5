"""The long FedWMSAM study at the paper's local regime (params ``study_fedwmsam``; notebooks/studies/dvc.yaml).

    python -m fedlib.stages.fedwmsam_study runs     [--seeds 0 1] [--partitions shards-3]   method x partition x seed
    python -m fedlib.stages.fedwmsam_study ablation [--seeds 0]     8 switch combinations + rho, one partition
    python -m fedlib.stages.fedwmsam_report                         tables, figures, paired comparisons, verdicts

A run is ``engine.train`` with the study's settings laid over the root params.yaml. Its small files (metrics.csv,
timing.csv, summary.json, timing.json, fingerprint.txt) go to results/studies/fedwmsam/<main|ablation>/<partition
or variant>/<method>/<seed>/; its checkpoint to runs/studies/fedwmsam/... (scratch). A run whose summary.json and
fingerprint match the current params is skipped; a killed run resumes from its checkpoint. Runs are ordered seed
first, so every method and partition of seed 0 is complete before seed 1 starts. A run being trained holds a lock
(runs/studies/fedwmsam/.../lock, the owner's pid), so two processes started with the same arguments share the work
(two one-thread processes are the fastest use of two cores); a lock whose process is gone is taken over.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace

from fedlib import engine, partition
from fedlib.config import ParamsError, load_params
from fedlib.stages.ablation import ablation_variants
from fedlib.stages.common import claim, run_dir

OUT = Path("results/studies/fedwmsam")
SCRATCH = Path("runs/studies/fedwmsam")
PARTITION = re.compile(r"^(dirichlet)-([0-9.]+)$|^(shards)-([0-9]+)$")


def partition_overrides(name: str) -> dict:
    """'dirichlet-0.1' -> Dirichlet alpha 0.1;  'shards-3' -> pathological, 3 classes per client."""
    m = PARTITION.match(name)
    if not m:
        raise ParamsError(f"params: study_fedwmsam partition {name!r} is not 'dirichlet-<alpha>' or "
                          f"'shards-<classes per client>'")
    if m.group(1):
        return {"partition.scheme": "dirichlet", "partition.alpha": float(m.group(2))}
    return {"partition.scheme": "shards", "partition.classes_per_client": int(m.group(4))}


def check_study(s: SimpleNamespace) -> None:
    """Cross-key rules of study_fedwmsam (fedlib.check can call this): known methods, parseable partitions,
    one Table-3 target per partition."""
    from fedlib.algorithms import REGISTRY
    from fedlib.algorithms.sam import DiagnosedAlgorithm

    bad = [m for m in s.methods if m not in REGISTRY or not issubclass(REGISTRY[m], DiagnosedAlgorithm)]
    if bad:
        raise ParamsError(f"params: study_fedwmsam.methods contains {bad[0]!r}; allowed: {', '.join(sorted(REGISTRY))}")
    for part in [*s.partitions, s.ablation_partition]:
        partition_overrides(part)
    if len(s.table3_targets) != len(s.partitions):
        raise ParamsError(f"params: study_fedwmsam.table3_targets has {len(s.table3_targets)} values for "
                          f"{len(s.partitions)} partitions; allowed: one target per partition")


# study_fedwmsam keys laid over the train.* key of the same name (every other train key but methods, seeds and
# workers is fixed in study_params; tests/test_fedwmsam_study.py checks none is inherited from the root train.*)
TRAIN_KEYS = ("rounds", "clients_per_round", "local_epochs", "batch_size", "lr", "lr_decay", "weight_decay", "clip",
              "model", "train_loss_samples", "grad_norm_every", "eval_batch_size", "device", "batched",
              "checkpoint_every", "target_accuracies")


def study_params(params_path: str | Path, method: str, part: str, extra: dict | None = None) -> SimpleNamespace:
    """The root params with the study's regime laid over train.*, the partition and the method's rho."""
    from fedlib.algorithms import REGISTRY

    s = load_params(params_path).study_fedwmsam
    over = {**{f"train.{k}": getattr(s, k) for k in TRAIN_KEYS}, "train.server_lr": 1.0, "train.eval_every": 1,
            "train.snapshot_rounds": [], "partition.num_clients": s.num_clients,
            f"methods.{method}.diag_every": s.diag_every, **partition_overrides(part)}
    if "rho" in REGISTRY[method].hparams:
        over[f"methods.{method}.rho"] = s.rho
    return load_params(params_path, {**over, **(extra or {})})


def run_one(p: SimpleNamespace, method: str, seed: int, out: Path, scratch: Path, fed, progress: bool) -> str:
    """Skip when complete with the same fingerprint or locked by a live process, else train (resuming from the
    checkpoint). Returns 'done', 'skipped' or 'busy'."""
    fp = study_fingerprint(p, method, seed)
    done = out / "summary.json"
    if done.exists() and (out / "fingerprint.txt").exists() and (out / "fingerprint.txt").read_text().strip() == fp:
        return "skipped"
    if not claim(scratch / "lock"):
        return "busy"
    try:
        out.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        engine.train(p, method, seed, out, fed=fed, ckpt_dir=scratch, progress=progress)
        (out / "fingerprint.txt").write_text(fp + "\n")
    finally:
        (scratch / "lock").unlink(missing_ok=True)
    return "done"


def study_fingerprint(p: SimpleNamespace, method: str, seed: int) -> str:
    """engine.run_fingerprint without train.workers, which does not change a run's numbers (tests/test_parallel.py),
    so a finished run stays valid when the thread count changes."""
    train = SimpleNamespace(**{k: v for k, v in vars(p.train).items() if k != "workers"})
    return engine.run_fingerprint(SimpleNamespace(**{**vars(p), "train": train}), method, seed)


def federation(p: SimpleNamespace, cache: dict):
    """The partition of p (computed, seeded by partition.seed), cached per partition setting."""
    q = p.partition
    key = (q.scheme, q.alpha, q.classes_per_client, q.num_clients, q.seed)
    if key not in cache:
        if "data" not in cache:
            cache["data"] = engine.load_data(p)
        data = cache["data"]
        parts = partition.make_partition(data.y_train.numpy(), q.scheme, q.num_clients, alpha=q.alpha,
                                         classes_per_client=q.classes_per_client,
                                         min_client_size=q.min_client_size, seed=q.seed, groups=data.groups)
        cache[key] = engine.federate(data, parts)
    return cache[key]


def main_runs(params_path="params.yaml", seeds=None, progress=False, partitions=None, workers=None,
              methods=None) -> None:
    s = load_params(params_path).study_fedwmsam
    check_study(s)
    cache: dict = {}
    extra = {} if workers is None else {"train.workers": workers}
    for seed in seeds if seeds is not None else s.seeds:
        for part in partitions if partitions is not None else s.partitions:
            for m in methods or s.methods:
                p = study_params(params_path, m, part, extra)
                how = run_one(p, m, seed, run_dir(OUT / "main" / part, m, seed),
                              run_dir(SCRATCH / "runs" / part, m, seed), federation(p, cache), progress)
                print(f"{how} {part}/{m}/{seed}", flush=True)


def main_ablation(params_path="params.yaml", seeds=None, progress=False, partitions=None, workers=None,
                  methods=None) -> None:
    s = load_params(params_path).study_fedwmsam
    cache: dict = {}
    extra = {} if workers is None else {"train.workers": workers}
    for seed in seeds if seeds is not None else s.ablation_seeds:
        for name, hp in ablation_variants(s.rho, s.ablation_rhos).items():
            p = study_params(params_path, "fedwmsam", s.ablation_partition,
                             {**extra, **{f"methods.fedwmsam.{k}": v for k, v in hp.items()}})
            how = run_one(p, "fedwmsam", seed, run_dir(OUT / "ablation" / name, "fedwmsam", seed),
                          run_dir(SCRATCH / "ablation" / name, "fedwmsam", seed), federation(p, cache), progress)
            print(f"{how} ablation {name}/{seed}", flush=True)


def cli(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["runs", "ablation"])
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds (default: all)")
    ap.add_argument("--partitions", nargs="*", default=None, help="runs: only these partitions (default: all)")
    ap.add_argument("--methods", nargs="*", default=None, help="runs: only these methods, in this order")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--workers", type=int, default=None,
                    help="threads per run (default train.workers); two processes of 1 beat one of 2 on 2 cores")
    a = ap.parse_args(argv)
    (main_runs if a.what == "runs" else main_ablation)(a.params, a.seeds, a.progress, a.partitions, a.workers,
                                                         a.methods)


if __name__ == "__main__":
    cli()
