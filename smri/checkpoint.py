"""Checkpoints that carry their configuration, the device choice, and store compatibility.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`; `model_from_checkpoint` rebuilds the model from it alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from smri import __version__
from smri.errors import ConfigError, DataError
from smri.models import CNNLSTM, ModelConfig, build_model
from smri.store import StoreInfo

CHECKPOINT_FORMAT = "smri-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_header() -> dict[str, Any]:
    """The keys that mark a file as an smri checkpoint."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "smri_version": __version__}


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
    """torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by smri, loaded with weights_only=True (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable torch checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not an smri checkpoint (written by `smri train`)")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise DataError(f"{path}: checkpoint version {ckpt['version']} is newer than this smri")
    return ckpt


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


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device) -> CNNLSTM:
    """The checkpoint's model with its weights, in eval mode on `device`."""
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    if device.type == "cuda":
        model = model.to(device, memory_format=torch.channels_last_3d)
    return model.to(device).eval()
