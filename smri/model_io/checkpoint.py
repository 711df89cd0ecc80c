"""Checkpoints that carry their configuration, the device choice, and store compatibility.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`; `smri.model_io.loading.model_from_checkpoint` rebuilds
the model from it alone.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smri.atomic import atomic_open
from smri.errors import ConfigError, DataError
from smri.files import check_regular
from smri.store import StoreInfo
from smri.text import has_control_characters, printable
from smri.version import __version__

CHECKPOINT_FORMAT = "smri-checkpoint"
CHECKPOINT_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def checkpoint_header() -> dict[str, Any]:
    """The keys that mark a file as an smri checkpoint."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "smri_version": __version__}


# How a checkpoint's logits become probabilities (smri.metrics.calibration): written by
# training, read by evaluate, predict, explain's table and export.
CALIBRATION_METHOD = "class weight undone (logit - log(pos_weight))"
UNCALIBRATED = "none: a checkpoint from before smri calibrated its probabilities"


def calibration_fields(offset: float) -> dict[str, Any]:
    """The checkpoint's ``calibration`` entry for a run trained with logit offset `offset`."""
    from smri.metrics.calibration import balanced_threshold

    return {
        "method": CALIBRATION_METHOD,
        "logit_offset": float(offset),
        "threshold": balanced_threshold(offset),
    }


def calibration_of(ckpt: dict[str, Any], source: str = "") -> tuple[float, float, str]:
    """(logit offset, decision threshold on the calibrated probability, method) of a checkpoint
    or export; (0, 0.5, UNCALIBRATED) for one written before calibration. DataError naming
    `source` when the entry is malformed."""
    entry = ckpt.get("calibration")
    if entry is None:
        return 0.0, 0.5, UNCALIBRATED
    try:
        offset, threshold = float(entry["logit_offset"]), float(entry["threshold"])
        method = str(entry["method"])
        if not (np.isfinite(offset) and 0.0 < threshold < 1.0):
            raise ValueError(f"offset {offset}, threshold {threshold}")
    except (KeyError, TypeError, ValueError) as exc:
        where = f"{source}: " if source else ""
        raise DataError(f"{where}damaged smri checkpoint: bad calibration ({exc})") from None
    return offset, threshold, method


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "CUDA was asked for but torch sees no GPU (torch.cuda.is_available() is False); "
            "use --device cpu or auto",
            option="--device",
        )
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"expected auto, cuda or cpu, got {name!r}", option="--device")
    return torch.device(name)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to a temporary file beside `path`, fsync, then rename: never a half-written
    `path`, even when the process is killed or the disk fills up midway.

    The checkpoint is serialised in memory first: torch's zip writer reports a full disk as an
    opaque RuntimeError (and can crash the interpreter at exit), while a plain file write raises
    OSError, re-raised here with `path` as its filename so the CLI prints one line naming it.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(plain_data(state), buffer)
    try:
        with atomic_open(path, "wb", durable=True) as fh:
            fh.write(buffer.getbuffer())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def plain_data(obj: Any) -> Any:
    """`obj` with every numpy scalar (in dicts, lists and tuples) as the Python number it holds.

    Settings given through the Python API may be numpy scalars (`epochs=np.int64(20)`); pickled
    as such they are objects that `load_checkpoint` (weights_only) refuses, so smri would write
    checkpoints it then calls malicious. Tensors and everything else pass through unchanged.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain_data(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):  # subclasses (torch.Size, named tuples) pass through
        return type(obj)(plain_data(v) for v in obj)
    return obj


# Keys every smri checkpoint holds (best.pt and last.pt), and the type each must have.
REQUIRED_KEYS: dict[str, type] = {
    "model_config": dict,
    "model": dict,
    "store": dict,
    "preprocess_config": dict,
    "epoch": int,
}
STORE_KEYS = ("modalities", "slices", "volume_shape", "classes")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by smri, loaded with weights_only=True (tensors and plain data only).

    DataError naming the file when it is empty, truncated, not a torch file, not written by smri,
    missing a key, or holding Python objects that unpickling would run (refused, never loaded).
    """
    path = check_regular(Path(path))  # a FIFO or a device is named as such, never opened
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an smri checkpoint file (a run's best.pt)")
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes), expected an smri checkpoint")
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: {_load_failure(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not an smri checkpoint (written by `smri train`)")
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise DataError(
            f"{path}: checkpoint version {version} is newer than this smri reads "
            f"(version {CHECKPOINT_VERSION}); upgrade smri"
        )
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(ckpt.get(key), kind):
            raise DataError(
                f"{path}: damaged smri checkpoint: '{key}' is missing or not a {kind.__name__}"
            )
    missing = [k for k in STORE_KEYS if k not in ckpt["store"]]
    if missing:
        raise DataError(f"{path}: damaged smri checkpoint: store facts lack {', '.join(missing)}")
    return ckpt


def check_store_facts(store: dict[str, Any], where: str) -> None:
    """DataError (``WHERE: 'store.FIELD' is ..., expected ...``) unless a checkpoint's or
    export's store facts have the types smri uses them as: modalities a list of names, slices
    an integer, volume_shape four integers, classes names each given 0 or 1. Names are
    printed, so they may hold no control character. (Ranges and agreement are the caller's.)"""

    def wrong(key: str, expected: str) -> DataError:
        shown = printable(repr(store.get(key)))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return DataError(f"{where}: 'store.{key}' is {shown}, expected {expected}")

    modalities, shape = store.get("modalities"), store.get("volume_shape")
    slices, classes = store.get("slices"), store.get("classes")
    if not isinstance(modalities, list) or not modalities or not all(map(_name, modalities)):
        raise wrong("modalities", "a list of modality names")
    if not _int(slices):
        raise wrong("slices", "an integer")
    if not isinstance(shape, list) or len(shape) != 4 or not all(map(_int, shape)):
        raise wrong("volume_shape", "4 integers (modalities, slices, height, width)")
    if not isinstance(classes, dict) or not all(
        _name(k) and _int(v) and v in (0, 1) for k, v in classes.items()
    ):
        raise wrong("classes", "class names, each given 0 or 1")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not has_control_characters(value)


def _check_archive(path: Path) -> None:
    """DataError when the checkpoint's zip archive holds compressed entries, or entries larger
    than the file: torch.save stores every entry as is, so loading costs the file's size; a
    crafted archive could inflate to any size (a 3.5 MB file had been loaded at 6.5 GB).
    Archives zipfile cannot read are left to torch.load, whose error names the problem."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    claimed = sum(e.file_size for e in entries)
    if packed or claimed > path.stat().st_size:
        what = f"{packed[0]} is compressed" if packed else f"its entries claim {claimed:,} bytes"
        raise DataError(
            f"{path}: refused: {what}; torch.save stores entries as they are, so it was not "
            "written by smri (and could inflate to any size). Not loaded"
        )


def _load_failure(path: Path, exc: BaseException) -> str:
    """Why torch.load failed, in one line; never torch's advice to reload with
    weights_only=False, which would run whatever code the file carries."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and found:
        return (
            f"refused: the file holds a Python object ({found.group(1)}) that loading would "
            "run; smri checkpoints hold only tensors and plain data, so it was not written by "
            "smri and may be malicious. Not loaded"
        )
    with open(path, "rb") as fh:
        if fh.read(4) != ZIP_MAGIC:
            return "not a readable torch checkpoint (not a torch zip file)"
    if "central directory" in text or isinstance(exc, EOFError):
        return (
            "not a readable torch checkpoint (truncated or corrupt: the zip archive is incomplete)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"not a readable torch checkpoint (truncated or corrupt: {first.split('. ')[0][:200]})"


def store_fields(info: StoreInfo) -> dict[str, Any]:
    """The store facts a checkpoint must match: modalities, slices, volume shape, classes."""
    return {
        "modalities": list(info.modalities),
        "slices": info.slices,
        "volume_shape": list(info.volume_shape),
        "classes": dict(info.classes),
        "dtype": info.dtype,
        "path": str(info.path),
    }


def check_compatible(expected: dict[str, Any], info: StoreInfo, source: str) -> None:
    """DataError naming every difference between a checkpoint's store and `info`."""
    got = store_fields(info)
    diffs = [
        f"{key} {got[key]} (checkpoint: {expected[key]})"
        for key in ("modalities", "slices", "volume_shape")
        if got[key] != expected[key]
    ]
    if diffs:
        raise DataError(f"{info.path} does not match {source}: " + "; ".join(diffs))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
