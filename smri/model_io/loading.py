"""A trained model from either form it is kept in: an smri checkpoint (a run's best.pt) or a
folder written by `smri export` (or its model.safetensors or config.json).

`load_model` reads either into the same checkpoint dict (model_config, model, store,
preprocess_config, epoch); `model_from_checkpoint` builds the model from that dict alone.
Everything is checked before it is used: an export's tensor names and shapes against the
model it describes, built without memory; a checkpoint's weights against its model, first on
the meta device, then for NaN and Inf.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from smri.errors import ConfigError, DataError, SmriError
from smri.files import check_regular
from smri.model_io.checkpoint import check_store_facts, load_checkpoint
from smri.model_io.export import (
    CONFIG,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    WEIGHTS,
    fold_dirs,
    read_json,
    safetensors_torch,
)
from smri.networks import CNNLSTM, ModelConfig, build_model
from smri.text import printable

# An export's config.json is a few KB (the model, the input, the preprocessing, the metrics):
# anything larger is not one, and is not read.
CONFIG_MAX_BYTES = 1 << 20
MAX_SIZE = 4096  # largest slices / height / width an exported config may ask for
MAX_MODALITIES = 64


def load_model(path: Path) -> dict[str, Any]:
    """A checkpoint file, or a folder written by `smri export` (or its model.safetensors or
    config.json), as a checkpoint dict; either's store facts checked for their types."""
    path = Path(path)
    if path.name in (WEIGHTS, CONFIG) and path.is_file():  # a file of an exported folder
        return load_exported(path.parent)
    if not path.is_dir():
        ckpt = load_checkpoint(path)
        where = f"{path}: damaged smri checkpoint"
        check_store_facts(ckpt["store"], where)  # as an export's: they name and shape outputs
        if sorted(ckpt["store"]["classes"].values()) != [0, 1]:
            raise DataError(f"{where}: 'store.classes' are not one name for 0 and one for 1")
        return ckpt
    if (path / "best.pt").is_file() or fold_dirs(path):
        raise DataError(
            f"{path} is a run folder, not an exported model; give its best.pt, or export it "
            f"with `smri export {path} OUT_DIR`"
        )
    return load_exported(path)


# ------------------------------------------------------------------------------- an exported folder
def _field(config: dict, where: Path, *keys: str, kind: type | tuple[type, ...]) -> Any:
    value: Any = config
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: damaged export: '{'.'.join(keys)}' is missing or malformed")
    return value


def _read_export_config(folder: Path) -> dict[str, Any]:
    """config.json of an exported folder, every field smri uses checked for its type (and
    range) before it is used: DataError naming the file and the field. Larger than
    CONFIG_MAX_BYTES, or nested too deeply to parse, it is not read at all."""
    where = check_regular(folder / CONFIG)
    if not where.is_file():
        raise DataError(f"{folder}: no {CONFIG}; expected a folder written by `smri export`")
    config = read_json(where, max_bytes=CONFIG_MAX_BYTES)
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise DataError(f"{where}: not an smri exported model (written by `smri export`)")
    version = config.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise DataError(
            f"{where}: export version {printable(repr(version))[:40]} is newer than this smri "
            f"reads (version {EXPORT_VERSION}); upgrade smri"
        )
    modalities = _field(config, where, "store", "modalities", kind=list)
    shape = _field(config, where, "store", "volume_shape", kind=list)
    slices = _field(config, where, "store", "slices", kind=int)
    classes = _field(config, where, "store", "classes", kind=dict)
    _field(config, where, "model", kind=dict)
    _field(config, where, "preprocess", kind=dict)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in shape) or len(shape) != 4:
        raise DataError(f"{where}: damaged export: store.volume_shape {shape} is not 4 integers")
    check_store_facts(config["store"], f"{where}: damaged export")  # each element's type
    if not 1 <= len(modalities) <= MAX_MODALITIES or not all(1 <= v <= MAX_SIZE for v in shape):
        raise DataError(
            f"{where}: input {'x'.join(map(str, shape))} is out of range (at most "
            f"{MAX_MODALITIES} modalities and {MAX_SIZE} per axis)"
        )
    if shape[0] != len(modalities) or shape[1] != slices or sorted(classes.values()) != [0, 1]:
        raise DataError(
            f"{where}: damaged export: volume_shape {shape}, {len(modalities)} modalities, "
            f"{slices} slices and classes {classes} disagree"
        )
    training = config.get("training", {})
    if not isinstance(training, dict):
        raise DataError(f"{where}: damaged export: 'training' is not an object")
    epoch = training.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise DataError(f"{where}: damaged export: 'training.epoch' is not a whole number")
    return config


def load_exported(folder: Path) -> dict[str, Any]:
    """An exported folder as a checkpoint dict (model_config, model, store, preprocess_config).

    DataError naming the folder when config.json is not an export's, describes an unknown or
    out-of-range model, or the weights do not fit it: tensor names and shapes are checked
    against the described model built without memory, before anything is allocated.
    """
    folder = Path(folder)
    config = _read_export_config(folder)
    where = folder / CONFIG
    try:
        cfg = ModelConfig.from_dict(config["model"])
        if tuple(cfg.volume_shape) != tuple(config["store"]["volume_shape"][1:]):
            raise ValueError(f"volume_shape {list(cfg.volume_shape)} differs from the input's")
        with torch.device("meta"):
            expected = build_model(cfg).state_dict()
    except (SmriError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{where}: damaged export: bad model ({exc})") from None
    state = _read_weights(folder / WEIGHTS, expected, cfg)
    return {
        "model_config": asdict(cfg),
        "model": state,
        "store": config["store"],
        "preprocess_config": config["preprocess"],
        **({"calibration": config["calibration"]} if config.get("calibration") else {}),
        "epoch": config.get("training", {}).get("epoch", 0),  # checked above
    }


def _read_weights(
    path: Path, expected: dict[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """The tensors of `path`, after checking names, shapes and dtypes against `expected`."""
    st = safetensors_torch()
    from safetensors import safe_open

    if not check_regular(path).is_file():
        raise DataError(f"{path}: no such file; an exported model holds its weights there")
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = fh.keys()
            shapes = {k: (fh.get_slice(k).get_shape(), fh.get_slice(k).get_dtype()) for k in names}
    except Exception as exc:  # safetensors raises its own error types, and OSError
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable safetensors file ({first})") from None
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    problems = []
    for key, want in expected.items():  # in the model's order
        if key not in shapes:
            problems.append(f"missing {key}")
            continue
        shape, dtype = list(shapes[key][0]), shapes[key][1]
        if list(want.shape) != shape or dtypes.get(want.dtype) != dtype:
            model = f"{dtypes.get(want.dtype)} {list(want.shape)}"
            problems.append(f"{key} is {dtype} {shape}, the model's {model}")
    problems += [f"unexpected {k}" for k in shapes if k not in expected]
    if problems:
        shape = "x".join(map(str, cfg.volume_shape))
        raise DataError(
            f"{path}: the weights do not fit the {cfg.name} model (width {cfg.width:g}, input "
            f"{shape}) that config.json describes: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    return st.load_file(str(path))


# ---------------------------------------------------------------- the model, from a checkpoint dict
def load_weights(
    model: torch.nn.Module,
    ckpt: dict[str, Any],
    cfg: ModelConfig,
    source: str = "",
    *,
    assign: bool = False,
) -> None:
    """Load the checkpoint's weights into `model`; DataError naming `source` if they misfit or
    hold NaN or Inf. `assign`: take the tensors themselves (for a model on the meta device,
    which so checks names and shapes without allocating anything)."""
    try:
        model.load_state_dict(ckpt["model"], assign=assign)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}the weights do not fit the {cfg.name} model (width {cfg.width:g}, input "
            f"{'x'.join(map(str, cfg.volume_shape))}) the checkpoint describes: {detail[:300]}"
        ) from None
    bad = {
        key: int((~torch.isfinite(t)).sum())
        for key, t in ckpt["model"].items()
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    }
    if bad:
        key, n = next(iter(bad.items()))
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}the weights hold non-finite values ({n} NaN or Inf in {key}"
            + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
            + "): the run that saved them diverged; use an earlier checkpoint"
        )


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device, source: str = "") -> CNNLSTM:
    """The checkpoint's model with its weights, in eval mode on `device`.

    DataError naming `source` when the weights do not fit the model the checkpoint describes
    (weights of another model, another width or input shape, or an unknown model name).
    """
    where = f"{source}: " if source else ""
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        with torch.device("meta"):  # its size checked, nothing allocated
            probe = build_model(cfg)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}damaged smri checkpoint: bad model_config ({exc})") from None
    load_weights(probe, ckpt, cfg, source, assign=True)  # names, shapes, values: before allocating
    model = build_model(cfg)
    load_weights(model, ckpt, cfg, source)
    return model.to(device, memory_format=torch.channels_last_3d).eval()
