"""JSON as smri prints and writes it: indented, NaN and infinities as null, paths as strings,
files written beside and renamed into place. Below every stage: the store's reports, run
folders, exports and the CLI's JSON output all go through it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from smri.atomic import write_text


def write_json(path: Path, data: Any) -> None:
    """`data` as JSON, written beside and renamed into place. NaN and infinities are not JSON:
    they are written as null (a metric that could not be computed)."""
    write_text(path, json_text(data) + "\n")


def json_text(data: Any, **kw: Any) -> str:
    """`data` as JSON text (indented), NaN and infinities as null: what smri prints and
    writes, so any JSON parser reads it (Python's own would write NaN, which none accepts)."""
    return json.dumps(_finite_only(data), indent=2, default=_json_default, allow_nan=False, **kw)


def _finite_only(obj: Any) -> Any:
    """`obj` with every float that is not finite replaced by None (dicts, lists, tuples)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_only(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_only(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
