"""Split a training set across N clients: iid, Dirichlet(alpha) label skew, pathological shards,
or the natural split of a generator that has one. Every scheme assigns each sample to exactly
one client (nothing duplicated or dropped)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class PartitionError(ValueError):
    pass


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
              min_size: int = 2, max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew: each class c is split over clients in proportions p_c ~ Dir(alpha * 1_N).
    A client already holding its fair share n/N gets no more (keeps sizes bounded), and the
    draw is repeated until every client has at least ``min_size`` samples."""
    n, classes = len(labels), np.unique(labels)
    if min_size * num_clients > n:
        raise PartitionError(f"partition: min_client_size = {min_size} x num_clients = {num_clients} "
                             f"exceeds the {n} training samples")
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * np.array([len(q) < n / num_clients for q in parts])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for q, chunk in zip(parts, np.split(idx, cuts)):
                q.extend(chunk.tolist())
        if min(len(q) for q in parts) >= min_size:
            return [np.sort(np.array(q, dtype=np.int64)) for q in parts]
    raise PartitionError(f"partition: no Dirichlet(alpha={alpha}) draw in {max_tries} tries gave every one of "
                         f"{num_clients} clients >= {min_size} samples; lower partition.min_client_size "
                         f"or raise partition.alpha")


def shards(labels: np.ndarray, num_clients: int, classes_per_client: int,
           rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological non-iid: each client holds exactly ``classes_per_client`` distinct classes;
    classes are dealt round-robin over a shuffled order, and each class's samples are split
    evenly among the clients that hold it."""
    classes = np.unique(labels)
    gamma, n_cls = classes_per_client, len(classes)
    if gamma > n_cls or num_clients * gamma < n_cls:
        raise PartitionError(f"partition: classes_per_client = {gamma} with {num_clients} clients cannot cover "
                             f"{n_cls} classes; allowed: {-(-n_cls // num_clients)}..{n_cls}")
    deck = np.concatenate([rng.permutation(classes) for _ in range(-(-num_clients * gamma // n_cls))])
    held = [deck[k * gamma:(k + 1) * gamma] for k in range(num_clients)]
    # a client dealt the same class twice (deck wrap-around) swaps for a class it lacks
    for k, h in enumerate(held):
        if len(set(h)) < gamma:
            missing = [c for c in rng.permutation(classes) if c not in h]
            held[k] = np.array(list(dict.fromkeys(h.tolist())) + missing[: gamma - len(set(h))])
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in classes:
        holders = [k for k in range(num_clients) if c in held[k]]
        for k, chunk in zip(holders, np.array_split(rng.permutation(np.flatnonzero(labels == c)), len(holders))):
            parts[k].extend(chunk.tolist())
    return [np.sort(np.array(q, dtype=np.int64)) for q in parts]


def natural(groups: np.ndarray, num_clients: int) -> list[np.ndarray]:
    ids = np.unique(groups)
    if len(ids) != num_clients:
        raise PartitionError(f"partition: the natural split has {len(ids)} clients but partition.num_clients = "
                             f"{num_clients}; set them equal")
    return [np.flatnonzero(groups == g) for g in ids]


def make_partition(labels: np.ndarray, scheme: str, num_clients: int, *, alpha: float = 0.1,
                   classes_per_client: int = 2, min_client_size: int = 2, seed: int = 0,
                   groups: np.ndarray | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if groups is not None:       # a dataset with its own clients (synthetic) keeps them
        return natural(groups, num_clients)
    if scheme == "iid":
        return iid(labels, num_clients, rng)
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients, alpha, rng, min_client_size)
    if scheme == "shards":
        return shards(labels, num_clients, classes_per_client, rng)
    raise PartitionError(f"partition: unknown scheme {scheme!r}; allowed: iid, dirichlet, shards")


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) matrix of sample counts."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def save(parts: list[np.ndarray], path: str | Path, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "clients": [p.tolist() for p in parts]}))


def load(path: str | Path) -> list[np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"partition file {path} not found; run `dvc repro partition` first")
    return [np.asarray(p, dtype=np.int64) for p in json.loads(path.read_text())["clients"]]
