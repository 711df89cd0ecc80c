"""The one check of every setting, for the API and the CLI alike.

`RULES` says, per keyword, what a value must be: a whole number or a number in a range
(written as click writes ranges), one of a set of choices, a string, a path. `check` applies
a rule and raises `ConfigError` naming the option; every public function of `smri.api` runs
`check_arguments` on its arguments before anything else, and the CLI's option types
(`smri.cli.common.Setting`) call the same `check`, so a value is refused by one rule with one
message however it arrives. Whether a keyword takes a path or a flag, and whether it may be
None, comes from the function's annotations (``PathLike``, ``bool``, ``... | None``).

What depends on other settings or on the data (``fold`` below ``folds``, a batch larger than
the training split, ``val_fraction`` leaving each class a patient) is checked where it is
known, still before anything is written (`smri.training.plan`).
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smri.config import CACHE_MODES, CLASS_WEIGHTS, MODEL_NAMES
from smri.errors import ConfigError
from smri.parallel import BACKENDS
from smri.phantoms import FORMATS, LAYOUTS
from smri.store import COMPRESSIONS, DTYPES

SEED_MAX = 2**64 - 1  # numpy and torch seeds are unsigned 64-bit


@dataclass(frozen=True)
class Rule:
    """What one setting's value must be: of `kind`, within `low`/`high` (`low_open`,
    `high_open`: the bound excluded), one of `choices`."""

    kind: type | str  # int, float, str, bool, or "path"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        """The range as click writes it: ``x>=1``, ``0<=x<1``."""
        if self.low is None:
            return f"x{'<' if self.high_open else '<='}{self.high}"
        if self.high is None:
            return f"x{'>' if self.low_open else '>='}{self.low}"
        low, high = "<" if self.low_open else "<=", "<" if self.high_open else "<="
        return f"{self.low}{low}x{high}{self.high}"


def _at_least(low: int) -> Rule:
    return Rule(int, low=low)


RULES: dict[str, Rule] = {
    # the model
    "model": Rule(str, choices=MODEL_NAMES),
    "width": Rule(float, low=0, low_open=True),
    "dropout": Rule(float, low=0, high=1, high_open=True),
    "input_pool": _at_least(1),
    # training and inference
    "epochs": _at_least(1),
    "batch_size": _at_least(1),
    "lr": Rule(float, low=0, low_open=True),
    "weight_decay": Rule(float, low=0),
    "seed": Rule(int, low=0, high=SEED_MAX),
    "val_fraction": Rule(float),  # 0 < x < 1, and a patient of each class: smri.data.splits
    "folds": _at_least(2),
    "fold": _at_least(0),
    "class_weight": Rule(str, choices=CLASS_WEIGHTS),
    "device": Rule(str),
    "cache": Rule(str, choices=CACHE_MODES),
    "workers": _at_least(0),
    "jobs": _at_least(1),
    "seeds": _at_least(1),
    "fraction": Rule(float, low=0, high=1, low_open=True, high_open=True),
    "test": Rule(str),
    "site": Rule(str),  # SynthConfig.validate: 2-8 capitals or digits
    "steps": _at_least(1),
    "saliency_patients": _at_least(0),
    # cohorts and stores (their own ranges: SynthConfig.validate, PreprocessConfig.validate)
    "patients": Rule(int),
    "hgg_fraction": Rule(float),
    "layout": Rule(str, choices=LAYOUTS),
    "format": Rule(str, choices=FORMATS),
    "slices": _at_least(1),
    "dtype": Rule(str, choices=DTYPES),
    "compression": Rule(str, choices=tuple(COMPRESSIONS)),
    "backend": Rule(str, choices=BACKENDS),
    "label_column": Rule(str),
    "positive": Rule(str),
    "session": Rule(str),
    "scheduler": Rule(str),
    "license": Rule(str),
    "dataset": Rule(str),
}
PATH, FLAG = Rule("path"), Rule(bool)  # keywords annotated PathLike, bool


def option_name(keyword: str) -> str:
    """The command-line option of a keyword: ``batch_size`` -> ``--batch-size``."""
    return "--" + keyword.replace("_", "-")


def check(keyword: str, value: Any, rule: Rule | None = None) -> Any:
    """`value` if it is a valid `keyword` (by `rule`, default its own in `RULES`); ConfigError
    naming ``--keyword`` if not."""
    rule = rule or RULES[keyword]
    problem = _problem(rule, value)
    if problem:
        raise ConfigError(problem, option=option_name(keyword))
    return value


def _problem(rule: Rule, value: Any) -> str | None:
    """What is wrong with `value` under `rule`, in click's words; None when nothing is."""
    if rule.kind is bool:  # numpy's bool too (a setting read with numpy)
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"
        return None if ok else f"expected True or False, got {value!r}"
    if rule.kind == "path":
        ok = isinstance(value, (str, os.PathLike))
        return None if ok else f"expected a path (str or pathlib.Path), got {value!r}"
    if rule.kind is str:
        if not isinstance(value, str):
            return f"expected a string, got {value!r}"
        if rule.choices is not None and value not in rule.choices:
            return f"{value!r} is not one of {', '.join(map(repr, rule.choices))}."
        return None
    whole = rule.kind is int
    number = numbers.Integral if whole else numbers.Real
    if isinstance(value, bool) or not isinstance(value, number):
        return f"expected {'a whole number' if whole else 'a number'}, got {value!r}"
    if not whole and not math.isfinite(value):
        return f"expected a finite number, got {value}."
    below = rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low)
    above = rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high)
    if below or above:
        return f"{value} is not in the range {rule.describe()}."
    return None


def check_arguments(signature: inspect.Signature, arguments: Mapping[str, Any]) -> None:
    """Check every argument of a call: a keyword annotated ``PathLike`` takes a path, ``bool``
    True or False, others their rule in `RULES`; None passes where the annotation allows it."""
    for name, value in arguments.items():
        annotation = str(signature.parameters[name].annotation)
        optional = annotation.endswith(" | None")
        if value is None and optional:
            continue
        kind = annotation.removesuffix(" | None")
        rule = FLAG if kind == "bool" else PATH if kind == "PathLike" else RULES.get(name)
        if rule is not None:
            check(name, value, rule)
