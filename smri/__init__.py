"""smri: CNN-LSTM classification of structural MRI, from NIfTI folders to a trained model.

The Python API (docs/api.md) is the library the `smri` commands call, with their options as
keyword arguments: `smri.synth`, `smri.preprocess`, `smri.info`, `smri.show`, `smri.models`,
`smri.train`, `smri.evaluate`, `smri.explain`, `smri.predict`, `smri.export`, `smri.plot`,
`smri.load_model` (a trained model as a torch module; the architectures are `smri.networks`)
and `smri.StoreDataset`, a torch Dataset of a store's patients. They are imported on first
use, so `import smri` loads no torch. Their warnings are `SmriWarning`s (`warnings.warn`), their
info lines go to the ``smri`` logger (`smri.messages`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smri.errors import ConfigError, DataError, PatientError, SmriError
from smri.version import __version__ as __version__  # re-exported: smri.__version__

if TYPE_CHECKING:  # what type checkers see of the names imported on first use below
    from smri.api import (
        evaluate,
        explain,
        export,
        holdout,
        info,
        load_model,
        models,
        plot,
        predict,
        preprocess,
        show,
        synth,
        train,
    )
    from smri.data import StoreDataset
    from smri.messages import SmriWarning


_LAZY = {
    "synth": "smri.api",
    "preprocess": "smri.api",
    "train": "smri.api",
    "evaluate": "smri.api",
    "predict": "smri.api",
    "explain": "smri.api",
    "export": "smri.api",
    "holdout": "smri.api",
    "plot": "smri.api",
    "info": "smri.api",
    "models": "smri.api",
    "show": "smri.api",
    "load_model": "smri.api",
    "StoreDataset": "smri.data",
    "SmriWarning": "smri.messages",
}

__all__ = [
    "ConfigError",
    "DataError",
    "PatientError",
    "SmriError",
    "SmriWarning",
    "StoreDataset",
    "evaluate",
    "explain",
    "export",
    "holdout",
    "info",
    "load_model",
    "models",
    "plot",
    "predict",
    "preprocess",
    "show",
    "synth",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'smri' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
