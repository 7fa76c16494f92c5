"""The params.yaml sections other than ``methods``: every key, its type, default and allowed values.

``fedlib.config`` validates params.yaml against this table (``methods.<name>`` against each algorithm's own
``hparams``). One entry per key; a comment beside a key says what it does where the name does not.
"""
from __future__ import annotations

from fedlib.schema import CUT_POINTS, DATASETS, MODELS, SPLIT_METHODS, Bool, Choice, Field, Float, Int, List, Str

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
        "model": Choice("cnn", *MODELS),              # the study's own model and f / ||grad f||^2 settings,
        "train_loss_samples": Int(250, ge=1),         # so the default pipeline's train.* can change without
        "grad_norm_every": Int(1, ge=1),              # touching the study's runs
        "eval_batch_size": Int(250, ge=1),
        "device": Choice("cpu", "auto", "cpu", "cuda"),   # in the runs' fingerprints (cuda equals cpu only to
        "batched": Choice("auto", "auto", "on", "off"),    # float tolerance), so pinned here too
        "diag_every": Int(10, ge=0),
        "checkpoint_every": Int(10, ge=1),
        "target_accuracies": List(Float(gt=0, le=1), [0.8, 0.85, 0.9, 0.95], min_len=1),
        "table3_targets": List(Float(gt=0, le=1), [0.85], min_len=1),   # one per partition (Table-3 analogue)
        "ablation_partition": Str("dirichlet-0.1"),
        "ablation_seeds": List(Int(ge=0), [0, 1, 2], min_len=1),
        "ablation_rhos": List(Float(ge=0), [0.005, 0.01, 0.05, 0.1], min_len=1),
    },
}
