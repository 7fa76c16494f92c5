"""Seconds per round, start-up time and peak memory of fedlib's engine, a plain PyTorch FedAvg
loop and Flower's simulation engine on one reference workload (DESIGN.md, "Performance reference"):

    MNIST-5k (4,000 train / 1,000 test), 100 clients, Dirichlet alpha = 0.1, 10 clients a round,
    2 local epochs, batch 20, SGD lr 0.05 (decay 0.998/round, weight decay 1e-3, clip 10),
    the 2-conv CNN; every round the global model is evaluated on 500 training + 1,000 test samples.

All three train the same clients in the same order from the same initial model, draw the same
mini-batches (generators seeded by (seed, round, client)) and evaluate the same samples, so their
accuracies agree up to float rounding; the comparison is void otherwise and the script says so.

Each contender runs in its own process (start-up = process start to the first round starting;
peak memory = the largest summed RSS of the process and all its descendants, sampled every 0.1 s).
Also timed, in one more process: FedAvg vs FedSAM (2 backprops a step) vs FedWMSAM (1) per round,
and one zeroth-order client step (fedlib.zo, q = 1, forward differences) vs one first-order step.

    .venv/bin/python benchmarks/bench_rounds.py            # full run, writes benchmarks/results.json
    .venv/bin/python benchmarks/bench_rounds.py --quick    # smoke run, 1 + 2 rounds each
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONTENDERS = ("fedlib", "fedlib_w1", "fedlib_batched", "plain", "flower")
# fedlib's execution settings per contender (train.workers threads, or all clients batched with torch.func)
VARIANTS = {"fedlib": {"train.workers": 2}, "fedlib_w1": {"train.workers": 1},
            "fedlib_batched": {"train.workers": 1, "train.batched": "on"}}
SEED = 0

# The reference workload as params overrides; the plain loop and Flower read the same values.
WORKLOAD = {
    "data.dataset": "mnist5k", "data.test_fraction": 0.2, "data.seed": 0,
    "partition.scheme": "dirichlet", "partition.num_clients": 100, "partition.alpha": 0.1,
    "partition.min_client_size": 2, "partition.seed": 0,
    "train.model": "cnn", "train.clients_per_round": 10, "train.local_epochs": 2, "train.batch_size": 20,
    "train.lr": 0.05, "train.lr_decay": 0.998, "train.weight_decay": 0.001, "train.clip": 10.0,
    "train.server_lr": 1.0, "train.eval_every": 1, "train.checkpoint_every": 5, "train.snapshot_rounds": [0],
    "train.train_loss_samples": 500, "train.eval_batch_size": 250, "train.grad_norm_every": 0,
    "train.workers": 2, "train.device": "cpu", "train.batched": "off",
    # the curvature diagnostic and ||grad f||^2 are extra analysis work the other contenders do not do: off here
    "methods.fedavg.diag_every": 0, "methods.fedsam.diag_every": 0, "methods.fedwmsam.diag_every": 0,
}


# ----------------------------------------------------------------------------- shared set-up

def load_setup(rounds: int, variant: str = "fedlib"):
    """(params, federation, indices of the training-loss samples) exactly as the engine builds them."""
    import torch
    from fedlib import config, engine, partition
    p = config.load_params(ROOT / "params.yaml", {**WORKLOAD, **VARIANTS.get(variant, {}), "train.rounds": rounds})
    data = engine.load_data(p)
    q = p.partition
    parts = partition.make_partition(data.y_train.numpy(), q.scheme, q.num_clients, alpha=q.alpha,
                                     classes_per_client=q.classes_per_client, min_client_size=q.min_client_size,
                                     seed=q.seed, groups=data.groups)
    fed = engine.federate(data, parts)
    loss_idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(p.data.seed))
    return p, fed, loss_idx[: p.train.train_loss_samples]


def plain_local_train(model, x, y, lr: float, t, generator) -> tuple[int, float]:
    """A client's local SGD, written the usual PyTorch way: (steps, mean loss)."""
    import torch
    from torch.nn import functional as F
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=t.weight_decay)
    steps, total = 0, 0.0
    for _ in range(t.local_epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(order), t.batch_size):
            idx = order[i:i + t.batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip)
            opt.step()
            total += loss.item()
            steps += 1
    return steps, total / max(steps, 1)


def plain_evaluate(model, x, y, batch_size: int) -> tuple[float, float]:
    import torch
    from torch.nn import functional as F
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            out = model(x[i:i + batch_size])
            loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def client_generator(r: int, k: int):
    import torch
    from fedlib.algorithms.base import derive_seed
    return torch.Generator().manual_seed(derive_seed(SEED, r, k))


# ----------------------------------------------------------------------------- contenders (child processes)

def run_fedlib(rounds: int, t_start: float, variant: str = "fedlib") -> dict:
    import csv
    from fedlib import engine
    p, fed, _ = load_setup(rounds, variant)
    with tempfile.TemporaryDirectory() as out:
        t_first, cpu0 = time.time(), time.process_time()   # the engine's set-up before round 1 is ~10 ms
        engine.train(p, "fedavg", SEED, out, fed=fed, progress=False)
        cpu = time.process_time() - cpu0
        rows = list(csv.DictReader(open(Path(out) / "metrics.csv")))
        timing = list(csv.DictReader(open(Path(out) / "timing.csv")))
    return {"startup_s": t_first - t_start, "cpu_s_per_round": cpu / rounds,
            "train_s": [float(r["train_s"]) for r in timing], "eval_s": [float(r["eval_s"]) for r in timing],
            "accuracy": [float(r["test_accuracy"]) for r in rows]}


def run_plain(rounds: int, t_start: float) -> dict:
    import torch
    from fedlib.engine import sample_clients
    from fedlib.models import build_model
    p, fed, loss_idx = load_setup(rounds)
    t, d = p.train, fed.data
    model = build_model(t.model, d.input_shape, d.num_classes, seed=SEED)
    global_sd = {k: v.clone() for k, v in model.state_dict().items()}
    x_loss, y_loss = d.x_train[loss_idx], d.y_train[loss_idx]
    out = {"startup_s": time.time() - t_start, "train_s": [], "eval_s": [], "accuracy": []}
    cpu0 = time.process_time()
    for r in range(rounds):
        t0 = time.perf_counter()
        states = []
        for k in sample_clients(SEED, r, fed.num_clients, t.clients_per_round):
            model.load_state_dict(global_sd)
            plain_local_train(model, fed.client_x[k], fed.client_y[k], t.lr * t.lr_decay ** r, t,
                              client_generator(r, int(k)))
            states.append({n: v.detach().clone() for n, v in model.state_dict().items()})
        global_sd = {n: torch.stack([s[n] for s in states]).mean(0) for n in global_sd}
        t1 = time.perf_counter()
        model.load_state_dict(global_sd)
        plain_evaluate(model, x_loss, y_loss, t.eval_batch_size)
        out["accuracy"].append(plain_evaluate(model, d.x_test, d.y_test, t.eval_batch_size)[1])
        out["train_s"].append(t1 - t0)
        out["eval_s"].append(time.perf_counter() - t1)
    out["cpu_s_per_round"] = (time.process_time() - cpu0) / rounds
    return out


_ACTOR_STATE: dict = {}


def _flower_client_fn(context):
    """A Flower client that trains whichever client index the server names in its config."""
    import numpy as np
    import torch
    from flwr.client import NumPyClient
    from fedlib.models import build_model

    if not _ACTOR_STATE:                       # once per Ray actor process
        p, fed, _ = load_setup(1)
        model = build_model(p.train.model, fed.data.input_shape, fed.data.num_classes, seed=SEED)
        _ACTOR_STATE.update(p=p, fed=fed, model=model)
    s = _ACTOR_STATE

    class Client(NumPyClient):
        def fit(self, parameters, config):
            model, fed, t = s["model"], s["fed"], s["p"].train
            k, r = int(config["client"]), int(config["round"])
            model.load_state_dict({n: torch.from_numpy(np.asarray(a)) for n, a in
                                   zip(model.state_dict(), parameters)})
            t0 = time.perf_counter()
            steps, loss = plain_local_train(model, fed.client_x[k], fed.client_y[k], t.lr * t.lr_decay ** r, t,
                                            client_generator(r, k))
            # weight 1 per client: the server's weighted average is then the plain mean, as in fedlib
            return [v.detach().numpy().copy() for v in model.state_dict().values()], 1, {
                "loss": loss, "local_train_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}

    return Client().to_client()


def run_flower(rounds: int, t_start: float) -> dict:
    import logging
    import numpy as np
    import torch
    from flwr.clientapp import ClientApp
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation
    from fedlib.engine import sample_clients
    from fedlib.models import build_model

    logging.getLogger("flwr").setLevel(logging.WARNING)
    p, fed, loss_idx = load_setup(rounds)
    t, d = p.train, fed.data
    model = build_model(t.model, d.input_shape, d.num_classes, seed=SEED)
    names = list(model.state_dict())
    x_loss, y_loss = d.x_train[loss_idx], d.y_train[loss_idx]
    out = {"round_start": [], "eval_s": [], "accuracy": [], "round_end": [], "failures": [],
           "local_train_s": [], "actor_threads": []}

    def evaluate_fn(server_round, ndarrays, config):
        t0 = time.perf_counter()
        model.load_state_dict({n: torch.from_numpy(np.asarray(a)) for n, a in zip(names, ndarrays)})
        plain_evaluate(model, x_loss, y_loss, t.eval_batch_size)
        loss, acc = plain_evaluate(model, d.x_test, d.y_test, t.eval_batch_size)
        if server_round > 0:
            out["eval_s"].append(time.perf_counter() - t0)
            out["accuracy"].append(acc)
            out["round_end"].append(time.time())
        return loss, {"accuracy": acc}

    class SameClients(FedAvg):
        """FedAvg whose round-r clients are fedlib's sample_clients(seed, r): node j trains client k_j."""

        def configure_fit(self, server_round, parameters, client_manager):
            out["round_start"].append(time.time())
            r = server_round - 1
            client_manager.wait_for(t.clients_per_round)
            nodes = sorted(client_manager.all().values(), key=lambda c: c.cid)
            chosen = sample_clients(SEED, r, fed.num_clients, t.clients_per_round)
            return [(node, FitIns(parameters, {"client": int(k), "round": r})) for node, k in zip(nodes, chosen)]

        def aggregate_fit(self, server_round, results, failures):
            if failures:                               # Flower drops failed clients silently otherwise
                out["failures"].append(f"round {server_round}: {len(failures)} failed, e.g. {failures[0]!r}"[:300])
            out["local_train_s"].append(sum(res.metrics["local_train_s"] for _, res in results))
            out["actor_threads"] = sorted({int(res.metrics["torch_threads"]) for _, res in results})
            return super().aggregate_fit(server_round, results, failures)

    strategy = SameClients(fraction_fit=0.0, fraction_evaluate=0.0, min_fit_clients=t.clients_per_round,
                           min_available_clients=fed.num_clients, evaluate_fn=evaluate_fn,
                           initial_parameters=ndarrays_to_parameters(
                               [v.detach().numpy().copy() for v in model.state_dict().values()]))

    def server_fn(context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    from fedlib.flower.ray_head import ray_head

    with ray_head() as address:
        run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=_flower_client_fn),
                       num_supernodes=fed.num_clients,
                       backend_config={"client_resources": {"num_cpus": 2},
                                       "init_args": {"address": address, "log_to_driver": False}})
    starts, ends = out["round_start"], out["round_end"]
    return {"startup_s": starts[0] - t_start, "round_s": [e - s for s, e in zip(starts, ends)],
            "eval_s": out["eval_s"], "accuracy": out["accuracy"], "failures": out["failures"],
            "local_train_s": out["local_train_s"], "actor_threads": out["actor_threads"],
            "train_s": [e - s - ev for s, e, ev in zip(starts, ends, out["eval_s"])]}


def run_methods(rounds: int, t_start: float) -> dict:
    """FedAvg vs FedSAM vs FedWMSAM seconds per round (training only), and a ZO vs FO client step."""
    import csv
    import torch
    from fedlib import engine
    from fedlib.algorithms import REGISTRY
    from fedlib.algorithms.base import ClientData
    p, fed, _ = load_setup(rounds)
    p.train.eval_every = rounds                      # evaluate once, at the end: time the training
    res: dict = {"methods": {}, "skipped": []}
    for name in ("fedavg", "fedsam", "fedwmsam"):
        if name not in REGISTRY or not hasattr(p.methods, name):
            res["skipped"].append(f"{name}: not in fedlib.algorithms.REGISTRY / params")
            continue
        with tempfile.TemporaryDirectory() as out:
            engine.train(p, name, SEED, out, fed=fed, progress=False)
            timing = [float(r["train_s"]) for r in csv.DictReader(open(Path(out) / "timing.csv"))]
            acc = float(list(csv.DictReader(open(Path(out) / "metrics.csv")))[-1]["test_accuracy"])
        res["methods"][name] = {"train_s": timing, "backprops_per_step": REGISTRY[name].backprops_per_step,
                                "final_accuracy": acc}

    # one client step on a fixed batch of 20: first order (forward + backward + SGD step) vs
    # zeroth order (fedlib.zo: q = 1 forward difference = 2 forward passes + 2 seeded regenerations of u)
    alg, x = engine.make_algorithm(p, "fedavg", fed, SEED)
    w = alg.worker
    w.load(x)
    batch = next(ClientData(0, fed.client_x[0], fed.client_y[0], torch.Generator().manual_seed(0)).batches(1, 20))

    def fo_step():
        w.loss_grad(*batch)
        w.sgd_step(0.01, 0.0, 1e9)

    steps = {"fo": fo_step}
    try:
        from fedlib.zo import ZOEstimator
        from torch.nn import functional as F
        zo = ZOEstimator([w.flat], mu=1e-3, q=1, scheme="forward")
        loss_fn = lambda: F.cross_entropy(w.model(batch[0]), batch[1]).item()   # noqa: E731
        counter = iter(range(10 ** 9))

        def zo_step():
            with torch.no_grad():
                zo.step_(zo.estimate(loss_fn, next(counter)), 0.01)

        steps["zo_q1_forward"] = zo_step
    except ImportError:
        res["skipped"].append("zo: fedlib.zo not present")
    res["step_s"] = {}
    for name, f in steps.items():
        for _ in range(3):
            f()
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        res["step_s"][name] = ts
    return res


WORKERS = {"fedlib": run_fedlib, "fedlib_w1": lambda n, t: run_fedlib(n, t, "fedlib_w1"),
           "fedlib_batched": lambda n, t: run_fedlib(n, t, "fedlib_batched"),
           "plain": run_plain, "flower": run_flower, "methods": run_methods}


# ----------------------------------------------------------------------------- parent: spawn, watch memory, report

def tree_rss(proc) -> int:
    import psutil
    total = 0
    for q in [proc, *proc.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def spawn(worker: str, rounds: int, timeout: float) -> dict:
    import psutil
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    t_start = time.time()
    cmd = [sys.executable, __file__, "--worker", worker, "--rounds", str(rounds), "--t-start", repr(t_start),
           "--result", result_path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch():
        try:
            proc = psutil.Process(child.pid)
            while child.poll() is None:
                peak[0] = max(peak[0], tree_rss(proc))
                time.sleep(0.1)
        except psutil.Error:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for q in [*psutil.Process(child.pid).children(recursive=True), psutil.Process(child.pid)]:
            with contextlib.suppress(psutil.Error):   # Ray's processes too
                q.kill()
        _, err = child.communicate()
        raise RuntimeError(f"{worker}: no result within {timeout:.0f} s")
    watcher.join()
    if child.returncode != 0:
        raise RuntimeError(f"{worker} failed (exit {child.returncode}):\n{err[-3000:]}")
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["peak_rss_mb"] = peak[0] / 2 ** 20
    result["wall_s"] = time.time() - t_start
    return result


def median_after(xs: list[float], warmup: int) -> float:
    return statistics.median(xs[warmup:] if len(xs) > warmup else xs)


def machine() -> dict:
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up + 2 timed rounds")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds after warm-up (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="rounds left out of the medians (default 2)")
    ap.add_argument("--only", default="fedlib,fedlib_w1,plain,flower,methods",
                    help="comma-separated subset of " + ",".join(WORKERS))
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the contenders this many times, interleaved (default 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"), help="JSON written here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--t-start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:                                   # child process: run one contender, write its JSON
        res = WORKERS[a.worker](a.rounds, a.t_start)
        Path(a.result).write_text(json.dumps(res))
        return

    if a.quick:
        a.rounds, a.warmup = 2, 1
    total = a.rounds + a.warmup
    wanted = [w.strip() for w in a.only.split(",") if w.strip()]
    bad = [w for w in wanted if w not in WORKERS]
    if bad:
        sys.exit(f"--only: unknown {bad[0]!r}; allowed: {', '.join(WORKERS)}")
    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit("bench_rounds needs psutil: .venv/bin/pip install -r benchmarks/requirements.txt")
    if "flower" in wanted:
        try:
            import flwr  # noqa: F401
            import ray  # noqa: F401
        except ImportError:
            print("flower: skipped (flwr[simulation] is not installed; "
                  ".venv/bin/pip install -r benchmarks/requirements.txt)")
            wanted.remove("flower")

    report = {"machine": machine(), "workload": WORKLOAD, "variants": VARIANTS, "rounds": total,
              "warmup": a.warmup, "repeats": a.repeats, "results": {}, "load": []}
    print(f"{report['machine']}\n{total} rounds each ({a.warmup} warm-up), {a.repeats} interleaved repeat(s)", flush=True)
    for rep in range(a.repeats):
        for w in wanted:
            if w == "methods" and rep:             # the per-method costs are timed once
                continue
            load = os.getloadavg()[0]
            print(f"repeat {rep + 1}: running {w} (load average {load:.1f}) ...", flush=True)
            try:
                out = spawn(w, total, timeout=300 + 60 * total)
                out["load_before"], out["load_after"] = load, os.getloadavg()[0]
                report["results"].setdefault(w, {"runs": []})["runs"].append(out)
            except RuntimeError as e:          # e.g. Ray failing to start on a loaded machine
                print(f"{w}: FAILED, left out: {e}", flush=True)
                report.setdefault("failed", {})[f"{w} repeat {rep + 1}"] = str(e)[-1000:]
            Path(a.out).write_text(json.dumps(report, indent=1) + "\n")   # what is done so far survives a kill
    summarise(report, a.warmup)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {a.out}")


def summarise(report: dict, warmup: int) -> None:
    """Per contender: medians over the timed rounds of all its runs; ratios: the median over repeats
    of the ratio within each repeat (contenders of one repeat ran back to back)."""
    res, rows = report["results"], {}
    for name in CONTENDERS:
        if name not in res:
            continue
        runs = res[name]["runs"]

        def pooled(f):
            return statistics.median([v for r in runs for v in f(r)[warmup:]])

        r0 = runs[0]
        rows[name] = {"train_s": pooled(lambda r: r["train_s"]), "eval_s": pooled(lambda r: r["eval_s"]),
                      "round_s": pooled(lambda r: [a + b for a, b in zip(r["train_s"], r["eval_s"])]),
                      "startup_s": statistics.median(r["startup_s"] for r in runs),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                      "cpu_s_per_round": (statistics.median(r["cpu_s_per_round"] for r in runs)
                                          if r0.get("cpu_s_per_round") is not None else None),
                      "final_accuracy": r0["accuracy"][-1],
                      "mean_accuracy_last5": statistics.mean(r0["accuracy"][-5:]),
                      "accuracy": r0["accuracy"], "runs": len(runs),
                      "load": [round(r["load_before"], 1) for r in runs]}
    report["summary"] = rows
    if rows:
        print(f"\n{'':14} {'train s/rnd':>11} {'eval s/rnd':>10} {'round s':>8} {'CPU s/rnd':>9} {'start-up s':>10} "
              f"{'peak RSS MB':>11} {'final acc':>9} {'acc last5':>9}  load")
        for n, s in rows.items():
            cpu = "-" if s["cpu_s_per_round"] is None else f"{s['cpu_s_per_round']:.3f}"
            print(f"{n:14} {s['train_s']:11.3f} {s['eval_s']:10.3f} {s['round_s']:8.3f} {cpu:>9} "
                  f"{s['startup_s']:10.2f} {s['peak_rss_mb']:11.0f} {s['final_accuracy']:9.4f} "
                  f"{s['mean_accuracy_last5']:9.4f}  {s['load']}")
        print("(medians over the timed rounds of all runs; CPU s/rnd = the process's CPU time / rounds)")
        for n in rows:
            for run in res[n]["runs"]:
                for msg in run.get("failures", []):
                    print(f"{n}: client failures: {msg}")
        accs = [s["mean_accuracy_last5"] for s in rows.values()]
        agree = max(accs) - min(accs) <= 0.02
        report["accuracies_agree"] = agree
        print("accuracies agree (last-5 mean within 0.02)" if agree else
              "WARNING: accuracies differ by more than 0.02: the speed comparison is void")
    ratios = {}
    pairs = [("plain", "fedlib"), ("flower", "fedlib"), ("fedlib_w1", "fedlib"), ("plain", "fedlib_w1"),
             ("fedlib_batched", "fedlib_w1")]
    for slow, fast in pairs:
        if slow in rows and fast in rows:
            for key in ("train_s", "round_s"):
                per_rep = []
                for a, b in zip(res[slow]["runs"], res[fast]["runs"]):
                    sa, sb = (median_after(x[key] if key in x else [u + v for u, v in zip(x["train_s"], x["eval_s"])],
                                           warmup) for x in (a, b))
                    per_rep.append(sa / sb)
                ratios[f"{slow}/{fast} {key}"] = statistics.median(per_rep)
    report["speedups"] = ratios
    for k, v in ratios.items():
        pair, key = k.split()
        slow, fast = pair.split("/")
        print(f"{fast} is {v:.2f}x as fast as {slow} ({key}; median over repeats of the in-repeat ratio)")
    if "methods" in res:
        m = res["methods"]["runs"][0]
        report["methods_summary"] = {n: median_after(v["train_s"], 1) for n, v in m["methods"].items()}
        for n, s in report["methods_summary"].items():
            print(f"{n:9} train s/round {s:.3f}  ({m['methods'][n]['backprops_per_step']} backprop(s) a step, "
                  f"accuracy {m['methods'][n]['final_accuracy']:.4f})")
        report["step_summary"] = {n: statistics.median(v) for n, v in m["step_s"].items()}
        for n, s in report["step_summary"].items():
            print(f"client step {n:14} {s * 1e3:7.2f} ms")
        for msg in m["skipped"]:
            print(f"skipped {msg}")


if __name__ == "__main__":
    main()
