"""The params.yaml schema: every key, its type and its allowed values, checked before any work.

A section is a dict ``key -> Field``. Algorithms declare their own hyper-parameters
(``Algorithm.hparams``) and are validated under ``methods.<name>``; other modules declare
their sections in ``SECTIONS`` below. ``load_params`` returns nested namespaces
(``p.train.rounds``) with defaults filled in, or raises ``ParamsError`` naming the key,
the value and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from fedlib.algorithms import REGISTRY  # algorithms declare their own hyper-parameters
from fedlib.schema import (CUT_POINTS, DATASETS, MODEL_CUTS, MODELS, SPLIT_METHODS, Bool,  # noqa: F401
                           Choice, Field, Float, Int, List, ParamsError, Str)

LM_LABELS = ("fedavg", "fedlora", "splitfed_v2", "splitlora", "csefsl", "heron", "heron_lora", "musplitfed",
             "musplitfed_lora")                       # fedlib/stages/lm.py LM_METHODS (tests pin the match)
LM_CUTS = ("embed", "block1", "block2", "block3", "block4", "block5")   # fedlib/lm.py CUTS


SECTIONS: dict[str, dict[str, Field]] = {
    "data": {
        "dataset": Choice("mnist5k", *DATASETS),
        "root": Str("data/raw"),
        "test_fraction": Float(0.2, gt=0, lt=1),      # for datasets without a fixed test split
        "synthetic_alpha": Float(1.0, ge=0),          # FedProx synthetic(alpha, beta)
        "synthetic_beta": Float(1.0, ge=0),
        "synthetic_samples": Int(6000, ge=100),
        "seed": Int(0, ge=0),
    },
    "partition": {
        "scheme": Choice("dirichlet", "iid", "dirichlet", "shards"),
        "num_clients": Int(100, ge=1),
        "alpha": Float(0.1, gt=0),                    # Dirichlet concentration
        "classes_per_client": Int(2, ge=1),           # pathological shards (gamma)
        "min_client_size": Int(2, ge=1),
        "seed": Int(0, ge=0),
    },
    "train": {
        "methods": List(Str(), ["fedavg"], min_len=1),
        "seeds": List(Int(ge=0), [0], min_len=1),
        "model": Choice("cnn", *MODELS),
        "rounds": Int(50, ge=1),
        "clients_per_round": Int(10, ge=1),
        "local_epochs": Int(2, ge=1),
        "batch_size": Int(20, ge=1),
        "lr": Float(0.05, gt=0),                      # eta_0
        "lr_decay": Float(1.0, gt=0, le=1),           # gamma: eta_r = eta_0 * gamma^r
        "weight_decay": Float(0.0, ge=0),
        "clip": Float(10.0, gt=0),                    # global-norm gradient clipping
        "server_lr": Float(1.0, gt=0),                # eta_g
        "eval_every": Int(1, ge=1),
        "checkpoint_every": Int(1, ge=1),
        "snapshot_rounds": List(Int(ge=0), []),       # global models kept for the analysis
        "target_accuracies": List(Float(gt=0, le=1), [0.8, 0.9]),
        "train_loss_samples": Int(1000, ge=1),
        "grad_norm_every": Int(0, ge=0),              # log ||grad f(x_r)||^2 on the train-loss set (0 = off)
        "eval_batch_size": Int(250, ge=1),
        "workers": Int(1, ge=1),                      # threads training a round's clients, one intra-op thread each
        "device": Choice("auto", "auto", "cpu", "cuda"),   # auto: cuda when available, else cpu
        "batched": Choice("auto", "auto", "on", "off"),    # clients in lockstep (torch.func); auto: on for cuda
    },
    # split learning (fedlib/algorithms/split.py); method hyper-parameters live under methods.<name>
    "split": {
        "methods": List(Choice("splitfed_v1", *SPLIT_METHODS), list(SPLIT_METHODS), min_len=1),
        "seeds": List(Int(ge=0), [0], min_len=1),
        "model": Choice("cnn", *MODELS),
        "cut": Choice("conv2", *CUT_POINTS),
        "rounds": Int(60, ge=1),
        "eval_every": Int(5, ge=1),
        "eval_batch_size": Int(1000, ge=1),           # evaluation settings of the split runs (as recorded
        "train_loss_samples": Int(500, ge=1),         # in the committed split studies' fingerprints)
        "num_clients": Int(10, ge=1),                 # the split runs' own partition
        "clients_per_round": Int(5, ge=1),
        "scheme": Choice("dirichlet", "iid", "dirichlet", "shards"),
        "alpha": Float(0.5, gt=0),
        "partition_seed": Int(0, ge=0),
        "batch_size": Int(32, ge=1),
        "local_steps": Int(5, ge=1),                  # h for SplitFed, CSE-FSL, HERON (MU-SplitFed: one batch)
        "lr": Float(0.05, gt=0),                      # first-order step size (clients and server)
        "mu_taus": List(Int(ge=1), [1, 2, 3, 4], min_len=1),
        "mu_cuts": List(Choice("fc1", *CUT_POINTS), ["fc1", "fc2", "fc3"], min_len=1),
        "mu_rounds": Int(60, ge=1),
        "client_flops_per_s": Float(1e9, gt=0),
        "server_flops_per_s": Float(1e10, gt=0),
        "link_bytes_per_s": Float(1e7, gt=0),
        "straggler_share": Float(0.3, ge=0, le=1),
        "straggler_delay_s": Float(1.0, ge=0),        # mean of the exponential extra delay
        "delay_in_server_steps": List(Float(ge=0), [0.0, 1.0, 2.0, 3.0, 4.0], min_len=1),
        "target_accuracy": Float(0.8, gt=0, le=1),
        "mu_target_accuracy": Float(0.2, gt=0, le=1),
        "mu_model": Choice("mlp4", *MODELS),         # MU-SplitFed's tau x cut sweep (ZO on both sides)
    },
    # the long MU-SplitFed study (notebooks/studies/dvc.yaml; fedlib/stages/mu_study.py): ZO on both sides
    "mu_study": {
        "model": Choice("mlp4", *MODELS),
        "cuts": List(Choice("fc1", *CUT_POINTS), ["fc1", "fc2", "fc3"], min_len=1),
        "taus": List(Int(ge=1), [1, 2, 3, 4, 5, 6], min_len=1),
        "seeds": List(Int(ge=0), [0, 1, 2], min_len=1),
        "rounds": Int(1000, ge=1),
        "eval_every": Int(25, ge=1),
        "target_accuracy": Float(0.5, gt=0, le=1),
        "grid_rounds": Int(400, ge=1),                # step-size search: tau = 1, grid_cut, first seed
        "grid_cut": Choice("fc2", *CUT_POINTS),
        "grid_eta_s": List(Float(gt=0), [0.01, 0.03, 0.1], min_len=1),
        "grid_eta_c": List(Float(gt=0), [0.003, 0.01, 0.03], min_len=1),
        "delay_in_server_steps": List(Float(ge=0), [0.0, 1.0, 2.0, 3.0, 4.0, 6.0], min_len=1),
        "straggler_server_flops_per_s": Float(2e7, gt=0),   # the straggler experiment's compute-poor server
    },
    # HERON-SFL against CSE-FSL at the split setting, longer and over eta_c x q (fedlib/stages/heron_study.py)
    "heron_study": {
        "rounds": Int(100, ge=1),
        "eval_every": Int(10, ge=1),
        "seeds": List(Int(ge=0), [0], min_len=1),
        "eta_c": List(Float(gt=0), [1e-4, 3e-4, 1e-3], min_len=1),
        "q": List(Int(ge=1), [1, 4], min_len=1),
    },
    # language-model split fine-tuning (fedlib/text.py, fedlib/lm.py, fedlib/stages/lm.py): MiniLM on SST-2
    "lm": {
        "methods": List(Choice("fedavg", *LM_LABELS), ["fedavg", "fedlora"], min_len=1),
        "seeds": List(Int(ge=0), [0], min_len=1),
        "root": Str("data/sst2"),
        "train_samples": Int(2000, ge=0),             # seeded subset of SST-2 train (0 = all 67,349)
        "test_samples": Int(0, ge=0),                 # seeded subset of dev (0 = all 872)
        "data_seed": Int(0, ge=0),
        "length_quantile": Float(0.95, gt=0, le=1),   # L = this quantile of the training lengths, up to 8k
        "max_length": Int(64, ge=8, le=512),
        "num_clients": Int(10, ge=1),
        "clients_per_round": Int(5, ge=1),
        "scheme": Choice("dirichlet", "iid", "dirichlet"),
        "alpha": Float(0.5, gt=0),                    # Dirichlet concentration over the two labels
        "partition_seed": Int(0, ge=0),
        "cut": Choice("block3", *LM_CUTS),            # client = embeddings + blocks up to the cut
        "rounds": Int(5, ge=1),
        "eval_every": Int(1, ge=1),
        "batch_size": Int(16, ge=1),
        "local_steps": Int(2, ge=1),                  # h (split methods; FedAvg/FedLoRA take one local epoch)
        "lr": Float(0.02, gt=0),                      # first-order SGD step, full fine-tuning
        "lr_lora": Float(0.2, gt=0),                  # first-order SGD step, LoRA adapters + heads
        "clip": Float(1.0, gt=0),
        "lora_rank": Int(4, ge=1),
        "lora_alpha": Float(8.0, gt=0),
        "head_scale": Float(20.0, gt=0),              # s: W = s * prompt features at the head's depth
        "aux_hidden": Int(0, ge=0),                   # auxiliary head: 0 = pooled features -> linear
        "zo_mu": Float(1e-3, gt=0),                   # ZO smoothing (HERON mu, MU-SplitFed lambda)
        "heron_eta_c": Float(1e-5, gt=0),
        "heron_eta_c_lora": Float(1e-3, gt=0),
        "mu_eta_c": Float(1e-5, gt=0),
        "mu_eta_c_lora": Float(1e-3, gt=0),
        "mu_eta_s": Float(1e-5, gt=0),
        "mu_eta_s_lora": Float(1e-3, gt=0),
        "mu_eta_g": Float(1.0, gt=0),
        "mu_server": Choice("zo", "zo", "fo"),
        "tau": Int(1, ge=1),
        "target_accuracy": Float(0.8, gt=0, le=1),
        "train_loss_samples": Int(64, ge=1),
        # the longer study (notebooks/studies/dvc.yaml): MU-SplitFed's Table-4 analogue, tau x cut
        "study_label": Choice("musplitfed_lora", *LM_LABELS),
        "study_servers": List(Choice("zo", "zo", "fo"), ["zo", "fo"], min_len=1),   # zo as published; fo extension
        "study_mu_eta_c": Float(1e-2, gt=0),          # the study's client step (LoRA or full, per study_label)
        "study_mu_eta_s": Float(1e-2, gt=0),          # the study's zeroth-order server step
        "study_mu_eta_s_fo": Float(0.2, gt=0),        # the study's first-order server step (extension)
        "study_target_accuracy": Float(0.75, gt=0, le=1),
        "study_cuts": List(Choice("block1", *LM_CUTS), ["block1", "block3", "block5"], min_len=1),
        "study_taus": List(Int(ge=1), [1, 2, 3, 4, 5, 6], min_len=1),
        "study_seeds": List(Int(ge=0), [0], min_len=1),
        "study_rounds": Int(20, ge=1),
        "study_train_samples": Int(2000, ge=0),       # the study's training subset (0 = all 67,349)
        "study_eval_every": Int(10, ge=1),
    },
    # analysis of the trained models (fedlib/analysis): bound terms and flatness
    "analysis": {
        "seed": Int(0, ge=0),                         # which training seed's models are analysed
        # f = mean loss over the engine's train-loss set (train.train_loss_samples): every constant uses it
        "hvp_batch": Int(250, ge=1),                  # samples per chunk of a Hessian-vector product
        "keep_graphs": Bool(True),                    # keep each chunk's gradient graph between products
        "noise_batches": Int(16, ge=2),               # minibatches for sigma^2 and sigma_rho^2
        "default_rho": Float(0.01, ge=0),             # rho of a SAM method that declares none
        "power_iters": Int(20, ge=1),
        "power_tol": Float(1e-3, gt=0),
        "lanczos_iters": Int(20, ge=2),
        "top_k": Int(5, ge=1),                        # flatness ratio lambda_max / lambda_top_k
        "hutchinson_probes": Int(10, ge=2),           # at least this many Rademacher probes ...
        "trace_rel_se": Float(0.05, gt=0),            # ... then more until se <= this share of the trace
        "max_probes": Int(400, ge=2),
        "rhos": List(Float(gt=0), [0.005, 0.01, 0.02, 0.05, 0.1], min_len=1),   # sigma_rho^2 scan
        "landscape_samples": Int(256, ge=1),
        "landscape_range": Float(1.0, gt=0),          # steps in [-range, range] along each direction
        "landscape_points_1d": Int(17, ge=3),
        "landscape_points_2d": Int(7, ge=3),
        "direction_seed": Int(0, ge=0),               # the same random directions for every method
        "sweep_method": Str("fedwmsam"),
        "sweep_model": Choice("mlp", *MODELS),
        "sweep_lr": Float(0.02, gt=0),                # constant step of every sweep run (lr_decay = 1)
        # the default pipeline's short sweeps (sweep_*) and the long study's (study_*, notebooks/studies)
        "sweep_seeds": List(Int(ge=0), [0, 1, 2], min_len=1),
        "sweep_clients_per_round": List(Int(ge=1), [1, 2, 3, 4], min_len=2),    # S (base: first value)
        "sweep_local_epochs": List(Int(ge=1), [1, 2, 3, 4], min_len=2),         # K = epochs * batches
        "sweep_rounds": List(Int(ge=2), [2, 4, 8, 16], min_len=2),              # R (prefixes of R_max)
        "sweep_num_clients": List(Int(ge=1), [25, 50, 100, 150], min_len=2),    # N (the pool re-split)
        "study_seeds": List(Int(ge=0), [0, 1, 2], min_len=1),
        "study_clients_per_round": List(Int(ge=1), [1, 2, 4, 8], min_len=2),
        "study_local_epochs": List(Int(ge=1), [1, 2, 3, 4], min_len=2),
        "study_rounds": List(Int(ge=2), [5, 10, 20, 40], min_len=2),
        "study_num_clients": List(Int(ge=1), [25, 50, 100, 150], min_len=2),
    },
    # FedWMSAM ablation: switch combinations and rho sensitivity, each a short run of its own
    "ablation": {
        "rounds": Int(20, ge=1),
        "seeds": List(Int(ge=0), [0], min_len=1),
        "rhos": List(Float(ge=0), [0.005, 0.01, 0.05, 0.1], min_len=1),
    },
    # the long FedWMSAM study at the paper's local regime (fedlib/stages/fedwmsam_study.py)
    "study_fedwmsam": {
        "methods": List(Str(), ["fedavg", "fedwmsam"], min_len=1),
        "partitions": List(Str(), ["dirichlet-0.1"], min_len=1),   # dirichlet-<alpha> | shards-<classes>
        "seeds": List(Int(ge=0), [0, 1, 2], min_len=1),
        "num_clients": Int(100, ge=1),
        "rounds": Int(300, ge=1),
        "clients_per_round": Int(10, ge=1),
        "local_epochs": Int(5, ge=1),
        "batch_size": Int(50, ge=1),
        "lr": Float(0.1, gt=0),
        "lr_decay": Float(0.998, gt=0, le=1),
        "weight_decay": Float(1e-3, ge=0),
        "clip": Float(10.0, gt=0),
        "rho": Float(0.01, ge=0),
        "diag_every": Int(10, ge=0),
        "checkpoint_every": Int(10, ge=1),
        "target_accuracies": List(Float(gt=0, le=1), [0.8, 0.85, 0.9, 0.95], min_len=1),
        "table3_targets": List(Float(gt=0, le=1), [0.85], min_len=1),   # one per partition (Table-3 analogue)
        "ablation_partition": Str("dirichlet-0.1"),
        "ablation_seeds": List(Int(ge=0), [0, 1, 2], min_len=1),
        "ablation_rhos": List(Float(ge=0), [0.005, 0.01, 0.05, 0.1], min_len=1),
    },
}


def _check_section(name: str, schema: dict[str, Field], raw: Any) -> SimpleNamespace:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params: {name} must be a mapping of keys, got {raw!r}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ParamsError(f"params: unknown key {name}.{unknown[0]}; allowed keys in {name}: "
                          + ", ".join(sorted(schema)))
    out = {}
    for key, f in schema.items():
        value = raw.get(key, f.default)
        if value is None:
            raise ParamsError(f"params: {name}.{key} is required; expected {f.allowed()}")
        out[key] = f.check(f"{name}.{key}", value)
    return SimpleNamespace(**out)


def validate(raw: dict) -> SimpleNamespace:
    """Check a params mapping and return it with defaults filled in."""
    if not isinstance(raw, dict):
        raise ParamsError("params: the top level must be a mapping of sections")
    sections = dict(SECTIONS)
    unknown = sorted(set(raw) - set(sections) - {"methods"})
    if unknown:
        raise ParamsError(f"params: unknown section {unknown[0]}; allowed sections: "
                          + ", ".join(sorted([*sections, "methods"])))
    p = SimpleNamespace(**{name: _check_section(name, schema, raw.get(name))
                           for name, schema in sections.items()})

    methods_raw = raw.get("methods") or {}
    if not isinstance(methods_raw, dict):
        raise ParamsError("params: methods must map a method name to its hyper-parameters")
    for m in [*p.train.methods, *methods_raw]:
        if m not in REGISTRY:
            raise ParamsError(f"params: unknown method {m!r}; allowed methods: " + ", ".join(sorted(REGISTRY)))
    p.methods = SimpleNamespace(**{m: _check_section(f"methods.{m}", cls.hparams, methods_raw.get(m))
                                   for m, cls in REGISTRY.items()})
    _check_consistency(p)
    return p


def _check_consistency(p: SimpleNamespace) -> None:
    """Constraints that tie keys together."""
    t, part = p.train, p.partition
    if t.clients_per_round > part.num_clients:
        raise ParamsError(f"params: train.clients_per_round = {t.clients_per_round} exceeds "
                          f"partition.num_clients = {part.num_clients}; allowed: 1..{part.num_clients}")
    # derived, so it adapts: snapshot rounds beyond train.rounds are dropped (the final model is always kept),
    # and `-S train.rounds=2` runs with the default list
    t.snapshot_rounds = sorted({r for r in t.snapshot_rounds if r <= t.rounds})
    sp = p.split
    ms = p.mu_study
    for key, cut, mkey, model in [("split.cut", sp.cut, "split.model", sp.model),
                                  *((f"split.mu_cuts[{i}]", c, "split.mu_model", sp.mu_model)
                                    for i, c in enumerate(sp.mu_cuts)),
                                  *((f"mu_study.cuts[{i}]", c, "mu_study.model", ms.model) for i, c in enumerate(ms.cuts)),
                                  ("mu_study.grid_cut", ms.grid_cut, "mu_study.model", ms.model)]:
        if cut not in MODEL_CUTS[model]:
            raise ParamsError(f"params: {key} = {cut!r} is not a cut point of {mkey} = {model!r}; "
                              f"allowed: {', '.join(MODEL_CUTS[model])}")
    lm = p.lm
    if lm.clients_per_round > lm.num_clients:
        raise ParamsError(f"params: lm.clients_per_round = {lm.clients_per_round} exceeds lm.num_clients = "
                          f"{lm.num_clients}; allowed: 1..{lm.num_clients}")
    if lm.train_samples and lm.train_samples < lm.num_clients * lm.batch_size:
        raise ParamsError(f"params: lm.train_samples = {lm.train_samples} gives some of the lm.num_clients = "
                          f"{lm.num_clients} clients less than one batch of {lm.batch_size}; allowed: 0 (all) or "
                          f">= {lm.num_clients * lm.batch_size}")
    if sp.clients_per_round > sp.num_clients:
        raise ParamsError(f"params: split.clients_per_round = {sp.clients_per_round} exceeds split.num_clients = "
                          f"{sp.num_clients}; allowed: 1..{sp.num_clients}")


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> SimpleNamespace:
    """Read and validate params.yaml; ``overrides`` maps dotted keys to values (for tests and sweeps)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params: file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate(raw)


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def to_dict(ns: Any) -> Any:
    """Namespaces back to plain dicts (for JSON and hashing)."""
    if isinstance(ns, SimpleNamespace):
        return {k: to_dict(v) for k, v in vars(ns).items()}
    if isinstance(ns, list):
        return [to_dict(v) for v in ns]
    return ns
