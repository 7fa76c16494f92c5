"""The building blocks of the params schema: typed fields that check a value and say what is allowed.

Algorithms declare their hyper-parameters with these (``Algorithm.hparams``); ``fedlib.config``
assembles the whole schema. This module imports nothing from fedlib, so both can use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class ParamsError(ValueError):
    """A params.yaml key is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Field:
    kind: str                      # "int" | "float" | "bool" | "str" | "choice" | "list"
    default: Any = None
    ge: float | None = None        # inclusive lower bound
    gt: float | None = None        # exclusive lower bound
    le: float | None = None
    lt: float | None = None
    choices: tuple = ()
    item: "Field | None" = None    # element schema for lists
    min_len: int = 0

    def allowed(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "list":
            return f"a list (at least {self.min_len} items) of {self.item.allowed()}"
        parts = []
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.ge is not None:
            parts.append(f">= {self.ge}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        if self.le is not None:
            parts.append(f"<= {self.le}")
        noun = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string"}[self.kind]
        return noun + (" " + " and ".join(parts) if parts else "")

    def check(self, name: str, value: Any) -> Any:
        given = value

        def fail():
            raise ParamsError(f"params: {name} = {given!r} is not allowed; expected {self.allowed()}")

        if self.kind == "bool":
            if not isinstance(value, bool):
                fail()
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                fail()
            return value
        if self.kind == "choice":
            if value not in self.choices:
                fail()
            return value
        if self.kind == "list":
            if not isinstance(value, list) or len(value) < self.min_len:
                fail()
            return [self.item.check(f"{name}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        if self.kind == "int":
            if not isinstance(value, int):
                fail()
        else:
            value = float(value)
            if not math.isfinite(value):
                fail()
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
            fail()
        return value


def Int(default=None, **kw):
    return Field("int", default, **kw)


def Float(default=None, **kw):
    return Field("float", default, **kw)


def Bool(default=None):
    return Field("bool", default)


def Str(default=None):
    return Field("str", default)


def Choice(default, *choices):
    return Field("choice", default, choices=tuple(choices))


def List(item: Field, default=None, min_len=0):
    return Field("list", default, item=item, min_len=min_len)


DATASETS = ("mnist5k", "digits", "synthetic", "fmnist", "cifar10", "cifar100")
MODELS = ("mlp", "mlp4", "cnn", "cnn_half", "resnet18")
SPLIT_METHODS = ("splitfed_v1", "splitfed_v2", "csefsl", "heron", "musplitfed", "gas", "fslsage")
# each model's named cut points (fedlib/models.py declares the same; tests/test_models.py pins the match)
MODEL_CUTS = {"mlp": ("fc1", "fc2"), "mlp4": ("fc1", "fc2", "fc3"), "cnn": ("conv1", "conv2", "fc1"),
              "cnn_half": ("conv1", "conv2", "fc1"), "resnet18": ("stem", "layer1", "layer2", "layer3", "layer4")}
CUT_POINTS = tuple(dict.fromkeys(c for cuts in MODEL_CUTS.values() for c in cuts))
