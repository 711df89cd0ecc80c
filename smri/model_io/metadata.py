"""What an export says about its data, machine-readably, for config.json and the model card.

`network_data_format` describes the input the model takes and the output it gives, in the
words of MONAI bundles' metadata.json (``inputs.image``: ``num_channels``, ``spatial_shape``,
``dtype``, ``value_range``, ``channel_def``), with what smri adds: the axis order, the
normalisation, the slab and the voxel spacing of the training cohort. `untouched_metrics` reads
a run's scores on its untouched test patients (``smri evaluate RUN STORE --out RUN/test``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from smri.errors import DataError, SmriError
from smri.files import check_regular

TEST_FOLDER = "test"  # RUN/test/metrics.json: the run on its untouched test patients
AXES = ("modality", "slice", "y", "x")
ORIENTATION = {
    True: "RAS+ (each volume reoriented first)",
    False: "as stored in the NIfTI files (no reorientation)",
}
NORMALISATION = (
    "min-max over each whole 3-D volume (every modality on its own): "
    "(x - min) / (max - min + 1e-8), before the slab is cut"
)


def network_data_format(
    store: dict[str, Any], pre: dict[str, Any], names: dict[int, str], spacing: dict | None
) -> dict[str, Any]:
    """The model's input and output (MONAI's ``network_data_format``): `store` and `pre` are
    the checkpoint's store fields and preprocessing settings, `names` label -> class name."""
    m, s, h, w = store["volume_shape"]
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": "MR",
        "num_channels": m,
        "spatial_shape": [s, h, w],
        "dtype": "float32",
        "value_range": [0.0, 1.0],
        "is_patch_data": False,
        "channel_def": {str(i): name for i, name in enumerate(store["modalities"])},
        "axes": ["batch", *AXES],
        "normalisation": NORMALISATION,
        "slab": {
            "slices": s,
            "axis": "the NIfTI file's third axis (k), as stored on disk",
            "start": "(depth - slices) // 2: the central slices",
            "order": "slice, y, x = NIfTI axes (k, j, i)",
        },
        "orientation": ORIENTATION[bool(pre.get("canonical"))],
        "spacing": spacing,
        "stored_as": pre.get("dtype"),
    }
    logit = {
        "type": "logit",
        "format": "one logit of class 1 per patient: sigmoid(logit + calibration.logit_offset) "
        "is the calibrated probability of class 1",
        "num_channels": 1,
        "spatial_shape": [1],
        "dtype": "float32",
        "value_range": [None, None],
        "is_patch_data": False,
        "channel_def": {"0": names[1]},
    }
    return {"inputs": {"image": image}, "outputs": {"pred": logit}}


def cohort_spacing(store_path: str | None, store: dict[str, Any]) -> dict[str, Any] | None:
    """The voxel spacing (mm) of the training cohort, in the images' axis order (slice, y, x):
    median, min and max over the store's volumes (every patient's every modality). None when
    the store is no longer where the run recorded it, or no longer the one it trained on
    (other modalities or shape)."""
    from smri.store import StoreReader

    if not store_path or not Path(store_path).is_file():
        return None
    try:
        with StoreReader(Path(store_path)) as reader:
            info = reader.info
            if list(info.modalities) != store["modalities"] or list(info.volume_shape) != list(
                store["volume_shape"]
            ):
                return None
            rows = np.array([reader.meta(i)["spacing"] for i in range(info.n_patients)], float)
    except (SmriError, OSError, KeyError, ValueError):
        return None
    if rows.shape[-1:] != (3,):
        return None
    rows = rows.reshape(-1, 3)  # one row per patient and modality
    rows = rows[np.isfinite(rows).all(axis=1) & (rows > 0).all(axis=1)]  # 0: not recorded
    if not len(rows):
        return None
    return {
        "axes": ["slice", "y", "x"],
        "unit": "mm",
        "median": _mm(np.median(rows, axis=0)),
        "min": _mm(rows.min(axis=0)),
        "max": _mm(rows.max(axis=0)),
        "volumes": len(rows),
        "resampled": False,
    }


def untouched_metrics(run: Path, source: Path) -> dict[str, Any] | None:
    """The run's scores on its untouched test patients, from RUN/test/metrics.json (written
    by ``smri evaluate RUN STORE --out RUN/test``): ``model`` (the exported training's own
    metrics, when listed), ``mean`` (over the run's trainings), ``trainings``, ``n``,
    ``ensemble_auc`` and ``store_name``; None when the run has no such file. DataError when the
    file is there but not such a report."""
    path = run / TEST_FOLDER / "metrics.json"
    if not check_regular(path).is_file():
        return None
    try:
        report = json.loads(path.read_text())
        members = {str(m["member"]): _numbers(m) for m in report["members"]}
        mean = _numbers(report["mean"])
        if not mean:
            raise ValueError("no mean metrics")
        n = int(report["n"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not the report of `smri evaluate {run} STORE --out {path.parent}` "
            f"({type(exc).__name__}: {exc})"
        ) from None
    name = "" if source == run else source.relative_to(run).as_posix()
    ensemble = report.get("ensemble_auc")
    return {
        "folder": TEST_FOLDER,
        "store_name": Path(str(report.get("store", ""))).name or None,
        "n": n,
        "trainings": len(members),
        "model": members.get(name),
        "mean": mean,
        "ensemble_auc": float(ensemble) if isinstance(ensemble, int | float) else None,
    }


def _mm(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict (NaN kept; the member's name dropped)."""
    return {
        k: float(v)
        for k, v in dict(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "threshold"
    }


def finite(value: Any) -> bool:
    """Whether `value` is a finite number (what the Hub takes as a metric value)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
