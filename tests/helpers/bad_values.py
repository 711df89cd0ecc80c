"""The bad values of settings: one table for the command line and the Python API.

Each row is a command, the options given on its command line, the option at fault and the
message the command prints after "Invalid value for '<option>': ". The CLI tests invoke the
command with these options; the API tests (tests/test_api_checks.py) call the command's
function with the same values as keywords (`keywords`), so the two cannot diverge: a value
refused on one side and taken on the other fails here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smri.api.checks import RULES
from smri.errors import keyword_of


@dataclass(frozen=True)
class Bad:
    command: str
    args: tuple[str, ...]  # as typed after the command's own arguments
    option: str  # the option at fault, as ConfigError.option and click name it
    message: str  # what follows "Invalid value for '<option>': "
    id: str

    def keywords(self) -> dict[str, Any]:
        """The options as the API's keywords: ``--batch-size 0`` -> ``batch_size=0``, values
        parsed as the option's rule parses them (several values: a tuple, as --shape)."""
        out: dict[str, Any] = {}
        words = list(self.args)
        while words:
            name = keyword_of(words.pop(0))
            values = []
            while words and not words[0].startswith("--"):
                values.append(_parse(name, words.pop(0)))
            out[name] = values[0] if len(values) == 1 else tuple(values)
        return out


def _parse(name: str, text: str) -> Any:
    kind = RULES[name].kind if name in RULES else int
    try:
        return kind(text) if kind in (int, float) else text
    except ValueError:
        return text


# fmt: off
BAD = [
    # train: numbers out of range or not finite (nan passes every range comparison)
    Bad("train", ("--lr", "nan"), "--lr", "expected a finite number, got nan.", "lr-nan"),
    Bad("train", ("--lr", "inf"), "--lr", "expected a finite number, got inf.", "lr-inf"),
    Bad("train", ("--lr", "-1"), "--lr", "-1.0 is not in the range x>0.", "lr-negative"),
    Bad(
        "train",
        ("--weight-decay", "nan"),
        "--weight-decay",
        "expected a finite number, got nan.",
        "weight-decay-nan",
    ),
    Bad("train", ("--width", "nan"), "--width", "expected a finite number, got nan.", "width-nan"),
    Bad("train", ("--width", "inf"), "--width", "expected a finite number, got inf.", "width-inf"),
    Bad("train", ("--width", "0"), "--width", "0.0 is not in the range x>0.", "width-zero"),
    Bad(
        "train",
        ("--seed", "-1"),
        "--seed",
        "-1 is not in the range 0<=x<=18446744073709551615.",
        "seed-negative",
    ),
    Bad("train", ("--epochs", "0"), "--epochs", "0 is not in the range x>=1.", "epochs-zero"),
    Bad(
        "train",
        ("--batch-size", "0"),
        "--batch-size",
        "0 is not in the range x>=1.",
        "batch-size-zero",
    ),
    Bad("train", ("--dropout", "1"), "--dropout", "1.0 is not in the range 0<=x<1.", "dropout-one"),
    Bad(
        "train",
        ("--input-pool", "0"),
        "--input-pool",
        "0 is not in the range x>=1.",
        "input-pool-zero",
    ),
    Bad("train", ("--workers", "-1"), "--workers", "-1 is not in the range x>=0.", "workers"),
    Bad("train", ("--jobs", "0"), "--jobs", "0 is not in the range x>=1.", "jobs-zero"),
    Bad("train", ("--folds", "1"), "--folds", "1 is not in the range x>=2.", "folds-one"),
    Bad(
        "train",
        ("--model", "cnn9"),
        "--model",
        "'cnn9' is not one of 'cnn1', 'cnn2', 'cnn3'.",
        "model-unknown",
    ),
    Bad(
        "train",
        ("--cache", "disk"),
        "--cache",
        "'disk' is not one of 'auto', 'device', 'ram', 'none'.",
        "cache-unknown",
    ),
    # train: split settings, checked against each other and the store (smri.training.plan)
    Bad(
        "train",
        ("--val-fraction", "1.5"),
        "--val-fraction",
        "must be strictly between 0 and 1, got 1.5",
        "val-fraction",
    ),
    Bad("train", ("--fold", "1"), "--fold", "--fold needs --folds K", "fold-without-folds"),
    Bad(
        "train",
        ("--folds", "3", "--fold", "3"),
        "--fold",
        "must be in 0..2, got 3",
        "fold-out-of-range",
    ),
    # evaluate, explain, predict
    Bad(
        "evaluate",
        ("--batch-size", "0"),
        "--batch-size",
        "0 is not in the range x>=1.",
        "evaluate-batch-size",
    ),
    Bad(
        "evaluate",
        ("--saliency-patients", "-1"),
        "--saliency-patients",
        "-1 is not in the range x>=0.",
        "evaluate-saliency-patients",
    ),
    Bad(
        "evaluate",
        ("--cache", "disk"),
        "--cache",
        "'disk' is not one of 'auto', 'device', 'ram', 'none'.",
        "evaluate-cache",
    ),
    Bad("explain", ("--steps", "0"), "--steps", "0 is not in the range x>=1.", "explain-steps"),
    Bad(
        "explain",
        ("--batch-size", "0"),
        "--batch-size",
        "0 is not in the range x>=1.",
        "explain-batch-size",
    ),
    Bad(
        "predict",
        ("--batch-size", "0"),
        "--batch-size",
        "0 is not in the range x>=1.",
        "predict-batch-size",
    ),
    # models, export, show
    Bad(
        "models",
        ("--width", "nan"),
        "--width",
        "expected a finite number, got nan.",
        "models-width-nan",
    ),
    Bad(
        "models",
        ("--input-pool", "0"),
        "--input-pool",
        "0 is not in the range x>=1.",
        "models-input-pool",
    ),
    Bad("export", ("--fold", "-1"), "--fold", "-1 is not in the range x>=0.", "export-fold"),
    Bad("show", ("--slices", "0"), "--slices", "0 is not in the range x>=1.", "show-slices"),
    # preprocess, synth
    Bad(
        "preprocess",
        ("--slices", "0"),
        "--slices",
        "0 is not in the range x>=1.",
        "preprocess-slices",
    ),
    Bad("preprocess", ("--jobs", "0"), "--jobs", "0 is not in the range x>=1.", "preprocess-jobs"),
    Bad("preprocess", ("--dtype", "int8"), "--dtype", "'int8' is not one of", "preprocess-dtype"),
    Bad(
        "preprocess", ("--backend", "mpi"), "--backend", "'mpi' is not one of", "preprocess-backend"
    ),
    Bad("synth", ("--shape", "48", "48", "31"), "--shape", "Z must be at least 32", "synth-z"),
    Bad(
        "synth", ("--shape", "8", "48", "40"), "--shape", "X and Y must be at least 16", "synth-xy"
    ),
    Bad(
        "synth",
        ("--hgg-fraction", "1.5"),
        "--hgg-fraction",
        "between 0 and 1, got 1.5",
        "synth-hgg-fraction",
    ),
    Bad("synth", ("--patients", "0"), "--patients", "at least 1 patient, got 0", "synth-patients"),
    Bad("synth", ("--jobs", "0"), "--jobs", "0 is not in the range x>=1.", "synth-jobs"),
    Bad("synth", ("--layout", "2031"), "--layout", "'2031' is not one of", "synth-layout"),
]
# fmt: on

# Values only Python can pass: a string for a number, a number for a flag, nan for a count.
# (keyword arguments, the option at fault, the message after the keyword)
API_ONLY = [
    ("train", {"epochs": "two"}, "--epochs", "expected a whole number, got 'two'"),
    ("train", {"epochs": 2.5}, "--epochs", "expected a whole number, got 2.5"),
    ("train", {"lr": "0.1"}, "--lr", "expected a number, got '0.1'"),
    ("train", {"amp": "yes"}, "--amp", "expected True or False, got 'yes'"),
    ("train", {"batch_size": True}, "--batch-size", "expected a whole number, got True"),
    ("train", {"out": 5}, "--out", "expected a path (str or pathlib.Path), got 5"),
    ("train", {"device": None}, "--device", "expected a string, got None"),
    ("evaluate", {"workers": None}, "--workers", "expected a whole number, got None"),
    ("predict", {"device": 0}, "--device", "expected a string, got 0"),
    ("predict", {"overwrite": 1}, "--overwrite", "expected True or False, got 1"),
    ("explain", {"steps": float("nan")}, "--steps", "expected a whole number, got nan"),
]


def cases(*commands: str) -> list[Any]:
    """The rows of `commands` as pytest params (args, option, message), for CLI tests."""
    import pytest

    return [
        pytest.param(list(b.args), b.option, b.message, id=b.id)
        for b in BAD
        if b.command in commands
    ]
