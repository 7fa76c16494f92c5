"""The round loop, owned in one place.

Per round r: sample exactly S of N clients from a generator seeded by (seed, r); give each
its data and a generator seeded by (seed, r, k); let the algorithm run the round; evaluate
every ``eval_every`` rounds; append a row to ``metrics.csv`` (deterministic columns) and
``timing.csv`` (wall seconds); checkpoint every ``checkpoint_every`` rounds, the checkpoint
carrying the rows written so far. A killed run resumes from its checkpoint and ends with the
same metrics.csv and summary.json as an uninterrupted one, even if the CSVs were deleted in
between (as DVC does before it reruns a stage); wall-clock totals go to timing.json, not to
summary.json. A non-finite loss stops the run with ``DivergenceError`` (one line: the round,
where the metrics are, the checkpoint only if one exists); a run that fails before its first
row leaves an older metrics.csv untouched. Progress goes to the terminal (fedlib/progress.py).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn import functional as F

from fedlib.algorithms import REGISTRY
from fedlib.algorithms.base import Algorithm, ClientData, RoundInfo, Worker, derive_seed
from fedlib.config import to_dict
from fedlib.data import Dataset, Federation, federate, load_dataset  # noqa: F401 (re-exported)
from fedlib.models import build_model, num_params
from fedlib.progress import Progress

BASE_COLUMNS = ("round", "train_loss", "test_loss", "test_accuracy", "client_loss", "bytes_up", "bytes_down")


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


def load_data(p: SimpleNamespace) -> Dataset:
    d = p.data
    return load_dataset(d.dataset, d.root, test_fraction=d.test_fraction, seed=d.seed,
                        synthetic_alpha=d.synthetic_alpha, synthetic_beta=d.synthetic_beta,
                        synthetic_samples=d.synthetic_samples, synthetic_clients=p.partition.num_clients)


def sample_clients(seed: int, r: int, num_clients: int, per_round: int) -> np.ndarray:
    """Exactly S distinct clients, from a generator seeded by (seed, r)."""
    return np.sort(np.random.default_rng(derive_seed(seed, r)).choice(num_clients, per_round, replace=False))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode, no graph."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def loss_and_grad_sq(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000) -> tuple[float, float]:
    """(f(x), ||grad f(x)||^2) with f = (1/n) sum_i CE(model(x_i), y_i) over the fixed set (eval mode), from
    one forward and backward pass. f is summed as ``evaluate`` sums it; the gradient is accumulated chunk by
    chunk with torch.autograd.grad, so no .grad buffer is touched."""
    model.eval()
    params = [q for q in model.parameters() if q.requires_grad]
    total = [torch.zeros_like(q) for q in params]
    value = 0.0
    for i in range(0, len(y), batch_size):
        chunk = F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum")
        value += chunk.item()
        for acc, g in zip(total, torch.autograd.grad(chunk / len(y), params)):
            acc += g
    model.train()
    return value / len(y), float(sum(g.pow(2).sum() for g in total))


def run_fingerprint(p: SimpleNamespace, method: str, seed: int) -> str:
    """Hash of everything that determines a run's numbers; a checkpoint is reused only if it matches."""
    t = {k: v for k, v in vars(p.train).items() if k not in ("methods", "seeds", "checkpoint_every")}
    keys = {"data": to_dict(p.data), "partition": to_dict(p.partition), "train": t,
            "hp": to_dict(getattr(p.methods, method)), "method": method, "seed": seed}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_algorithm(p: SimpleNamespace, method: str, fed: Federation, seed: int) -> tuple[Algorithm, torch.Tensor]:
    model = build_model(p.train.model, fed.data.input_shape, fed.data.num_classes, seed=seed,
                        **getattr(p.train, "model_options", {}))    # minilm's options (fedlib/stages/lm.py)
    worker = Worker(model)
    alg = REGISTRY[method](getattr(p.methods, method), p.train, worker, fed)
    return alg, worker.flat.clone()


def train(p: SimpleNamespace, method: str, seed: int, out_dir: str | Path, *, fed: Federation,
          ckpt_dir: str | Path | None = None, model_dir: str | Path | None = None,
          progress: bool = True, stop_after: int | None = None, runner=None) -> dict:
    """Run one method with one seed; returns the summary written to ``out_dir/summary.json``.

    ``stop_after`` ends the run early after that many rounds (as a kill would; used by tests).
    ``runner(alg, clients, info)``, when given, replaces ``alg.run_clients`` (fedlib.flower runs the clients on
    Flower's runtime that way); it returns the client results in client order, and the method's own
    ``run_round`` and ``server_update`` do the rest.
    """
    t = p.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(ckpt_dir or out_dir) / "checkpoint.pt"
    torch.manual_seed(seed)
    alg, x = make_algorithm(p, method, fed, seed)
    if runner is not None:
        alg.run_clients = lambda clients, info: runner(alg, clients, info)
    worker = alg.worker
    columns = [*BASE_COLUMNS, *alg.metric_names, *(["grad_sq"] if t.grad_norm_every else [])]
    fingerprint = run_fingerprint(p, method, seed)
    loss_idx = torch.randperm(len(fed.data.y_train), generator=torch.Generator().manual_seed(p.data.seed))
    loss_idx = loss_idx[: t.train_loss_samples]
    x_loss, y_loss = fed.data.x_train[loss_idx], fed.data.y_train[loss_idx]   # gathered once, not every round
    snapshots: dict[int, torch.Tensor] = {0: x.clone()} if 0 in t.snapshot_rounds else {}

    # Resume: the checkpoint carries the rows of metrics.csv and timing.csv up to its round, so a run resumes
    # to the same files even when the CSVs were removed meanwhile (DVC deletes a stage's outputs before it runs).
    start, saved_round = 0, None
    rows, timing = [], []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["fingerprint"] == fingerprint:
            start, x, snapshots = ck["round"], ck["x"], ck["snapshots"]
            alg.load_state_dict(ck["algorithm"])
            rows, timing, saved_round = ck["rows"], ck["timing"], start
    metrics_f = _CsvLog(out_dir / "metrics.csv", columns, rows)
    timing_f = _CsvLog(out_dir / "timing.csv", ["round", "train_s", "eval_s"], timing)

    def diverged(what: str, r: int) -> DivergenceError:
        kept = (f"metrics of rounds 1-{r} are in {out_dir / 'metrics.csv'}" if metrics_f.rows
                else "no round finished, so metrics.csv was not touched")
        ck_note = (f"the last good checkpoint {ckpt_path} (round {saved_round}) is kept and a rerun resumes "
                   f"from it" if saved_round is not None and ckpt_path.exists()
                   else f"no checkpoint was written yet (train.checkpoint_every = {t.checkpoint_every})")
        return DivergenceError(f"{method} seed {seed} diverged in round {r + 1}: {what}; {kept}; {ck_note}; "
                               f"lower train.lr or the method's step sizes in methods.{method}")

    bar = Progress(f"{method} seed {seed}", t.rounds, start, enabled=progress)
    for r in range(start, t.rounds):
        t0 = time.perf_counter()
        info = RoundInfo(r, t.lr * t.lr_decay ** r, x)
        chosen = sample_clients(seed, r, fed.num_clients, t.clients_per_round)
        clients = [ClientData(int(k), fed.client_x[k], fed.client_y[k],
                              torch.Generator().manual_seed(derive_seed(seed, r, int(k)))) for k in chosen]
        x_next, results, extra = alg.run_round(x, clients, info)
        client_loss = float(np.mean([c.loss for c in results]))
        if not math.isfinite(client_loss) or not torch.isfinite(x_next).all():
            raise diverged(f"local training loss = {client_loss}", r)
        x = x_next
        t1 = time.perf_counter()

        row = {"round": r + 1, "client_loss": client_loss,
               "bytes_up": sum(c.bytes_up for c in results), "bytes_down": sum(c.bytes_down for c in results),
               **{k: extra.get(k, "") for k in alg.metric_names}}
        last = r + 1 == t.rounds
        need_eval = (r + 1) % t.eval_every == 0 or last
        need_grad = t.grad_norm_every and ((r + 1) % t.grad_norm_every == 0 or last)
        if need_eval or need_grad:
            worker.load(x)
        if need_grad:           # f and ||grad f(x_{r+1})||^2 on the train-loss set, the analysis' f (fedlib/analysis)
            f_value, row["grad_sq"] = loss_and_grad_sq(worker.model, x_loss, y_loss, t.eval_batch_size)
        if need_eval:
            row["train_loss"] = f_value if need_grad else evaluate(worker.model, x_loss, y_loss, t.eval_batch_size)[0]
            row["test_loss"], row["test_accuracy"] = evaluate(worker.model, fed.data.x_test, fed.data.y_test,
                                                              t.eval_batch_size)
            if not math.isfinite(row["train_loss"]):
                raise diverged(f"the global model's training loss is {row['train_loss']}", r)
        metrics_f.append(row)
        timing_f.append({"round": r + 1, "train_s": t1 - t0, "eval_s": time.perf_counter() - t1})
        if r + 1 in t.snapshot_rounds:
            snapshots[r + 1] = x.clone()
        if (r + 1) % t.checkpoint_every == 0 and r + 1 < t.rounds:
            _atomic_save({"fingerprint": fingerprint, "round": r + 1, "x": x, "snapshots": snapshots,
                          "algorithm": alg.state_dict(), "rows": metrics_f.rows, "timing": timing_f.rows},
                         ckpt_path)
            saved_round = r + 1
        bar.update(r + 1, metrics_f.rows[-1])
        if stop_after is not None and r + 1 >= stop_after:
            return {}

    if model_dir is not None:
        save_models(Path(model_dir) / "models.pt", p.train.model, fed.data, x, snapshots)
    summary = summarise(_read_csv(out_dir / "metrics.csv"), _read_csv(out_dir / "timing.csv"),
                        t.target_accuracies)
    summary.update(method=method, seed=seed, rounds=t.rounds, num_params=num_params(worker.model),
                   backprops_per_step=alg.backprops_per_step)
    write_summary(out_dir, summary)
    ckpt_path.unlink(missing_ok=True)   # the run is complete; its results are the outputs
    return summary


TIMING_KEYS = ("seconds_per_round", "total_seconds")    # wall clock: timing.json, never in summary.json


def write_summary(out_dir: Path, summary: dict) -> None:
    """summary.json holds only what the seeds and params determine (byte-identical across reruns and
    resumes); the wall-clock fields go to timing.json beside it."""
    fixed = {k: v for k, v in summary.items() if k not in TIMING_KEYS}
    (out_dir / "summary.json").write_text(json.dumps(fixed, indent=2) + "\n")
    (out_dir / "timing.json").write_text(json.dumps({k: summary[k] for k in TIMING_KEYS}, indent=2) + "\n")


def read_summary(run_dir: str | Path) -> dict:
    """A finished run's summary.json with its timing.json merged in (what ``train`` returned)."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if (run_dir / "timing.json").exists():
        summary.update(json.loads((run_dir / "timing.json").read_text()))
    return summary


def summarise(rows: list[dict], timing: list[dict], targets: list[float]) -> dict:
    """Final and last-10-round mean accuracy, best accuracy and its round, rounds to targets."""
    evals = [(int(r["round"]), float(r["test_accuracy"])) for r in rows if r["test_accuracy"] != ""]
    accs = [a for _, a in evals]
    best_round, best = max(evals, key=lambda e: (e[1], -e[0]))
    train_s = sorted(float(r["train_s"]) for r in timing)
    return {
        "final_accuracy": accs[-1],
        "last10_accuracy": float(np.mean(accs[-10:])),
        "best_accuracy": best,
        "best_round": best_round,
        "final_test_loss": float(rows[-1]["test_loss"]) if rows[-1]["test_loss"] != "" else None,
        "rounds_to_target": {f"{a:g}": next((r for r, acc in evals if acc >= a), None) for a in targets},
        "seconds_per_round": train_s[len(train_s) // 2],
        "total_seconds": sum(float(r["train_s"]) + float(r["eval_s"]) for r in timing),
        "bytes_up": sum(int(r["bytes_up"]) for r in rows),
        "bytes_down": sum(int(r["bytes_down"]) for r in rows),
    }


def save_models(path: Path, model_name: str, data: Dataset, x: torch.Tensor, snapshots: dict) -> None:
    """The final global model and the snapshots (flat vectors) with what rebuilds the model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"model": model_name, "input_shape": data.input_shape, "num_classes": data.num_classes,
                  "final": x, "snapshots": snapshots}, path)


def load_models(path: str | Path) -> dict:
    return torch.load(path, weights_only=False)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _CsvLog:
    """A CSV rewritten with ``rows`` and then appended to (and flushed) one row at a time. ``rows`` keeps
    every row as written (strings, floats as repr) for the checkpoint. With no rows the file is first
    written by the first append, so a run that fails in its first round leaves an older file in place."""

    def __init__(self, path: Path, columns: list[str], rows: list[dict]):
        self.path, self.columns = path, columns
        self.rows = [{k: _cell(r.get(k)) for k in columns} for r in rows]
        if self.rows:
            self._rewrite()

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(self.rows)

    def append(self, row: dict) -> None:
        self.rows.append({k: _cell(row.get(k)) for k in self.columns})
        if len(self.rows) == 1:
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(self.rows[-1])


def _fmt(v):
    return repr(v) if isinstance(v, float) else v


def _cell(v) -> str:
    """A CSV cell as csv.writer would write it (None blank), floats as repr (round-trips exactly)."""
    return "" if v is None else str(_fmt(v))
