"""The params.yaml schema: every key, its type and its allowed values, checked before any work.

A section is a dict ``key -> Field``. Algorithms declare their own hyper-parameters
(``Algorithm.hparams``) and are validated under ``methods.<name>``; every other section is
in ``fedlib/sections.py``. ``load_params`` returns nested namespaces
(``p.train.rounds``) with defaults filled in, or raises ``ParamsError`` naming the key,
the value and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from fedlib.algorithms import REGISTRY  # algorithms declare their own hyper-parameters
from fedlib.schema import MODEL_CUTS, Field, ParamsError
from fedlib.sections import SECTIONS


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
