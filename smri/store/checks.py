"""Validation: a file's layout against the schema, and a store's contents against its attributes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from smri import __version__
from smri.errors import DataError
from smri.store.schema import (
    AXIS_ORDER,
    DTYPES,
    FORMAT,
    IMAGES,
    LABEL_VALUES,
    LABELS,
    MASKS,
    META,
    META_FIELDS,
    META_FIELDS_V2,
    PATIENT_ID,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    StoreInfo,
)


def check_layout(f: h5py.File, path: Path) -> None:
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise DataError(
            f"{path}: not an smri store (no format='{FORMAT}' attribute); "
            "make one with `smri preprocess`"
        )
    version = int(f.attrs.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        raise DataError(
            f"{path}: store schema version {version} is newer than this smri "
            f"({__version__}) reads (version {SCHEMA_VERSION}); upgrade smri"
        )
    if version not in READABLE_VERSIONS:
        raise DataError(
            f"{path}: unsupported store schema version {version} "
            f"(expected {' or '.join(map(str, READABLE_VERSIONS))}); re-run `smri preprocess`"
        )
    for key in (IMAGES, LABELS, PATIENT_ID):
        if key not in f:
            raise DataError(
                f"{path}: store is missing the '{key}' dataset; re-run `smri preprocess`"
            )
    n = f[IMAGES].shape[0]
    if f[IMAGES].ndim != 5 or f[LABELS].shape != (n,) or f[PATIENT_ID].shape != (n,):
        raise DataError(
            f"{path}: store datasets disagree: images {f[IMAGES].shape}, "
            f"labels {f[LABELS].shape}, patient_id {f[PATIENT_ID].shape}"
        )
    if version >= 2:
        expected = {MASKS: (n, *f[IMAGES].shape[2:])}
        expected.update({f"{META}/{k}": (n, *v[1](f[IMAGES].shape[1])) for k, v in
                         META_FIELDS_V2.items()})  # fmt: skip
        for key, shape in expected.items():
            if key not in f or f[key].shape != shape:
                got = f"shape {f[key].shape}" if key in f else "missing"
                raise DataError(
                    f"{path}: damaged smri store: '{key}' is {got}, expected {shape}; "
                    "re-run `smri preprocess`"
                )


def check_contents(
    info: StoreInfo, labels: np.ndarray, ids: Sequence[str], meta: h5py.Group | None
) -> None:
    """DataError when a store's datasets break its contract or contradict its attributes:
    labels other than -1/0/1, duplicate or empty patient ids, classes that are not one name
    for 0 and one for 1, modalities, slices or axis order that disagree with the images, an
    image dtype smri does not write, or per-patient metadata of another length. Every reader
    (info, train, evaluate, show, explain, append, StoreDataset) opens stores through here."""
    path = info.path
    bad = sorted(set(np.unique(labels).tolist()) - set(LABEL_VALUES))
    if bad:
        rows = np.flatnonzero(~np.isin(labels, LABEL_VALUES))
        raise DataError(
            f"{path}: damaged smri store: patient {ids[rows[0]]} has label {bad[0]} (and "
            f"{len(rows) - 1} more rows outside -1/0/1); make it again with `smri preprocess`"
            if len(rows) > 1 else
            f"{path}: damaged smri store: patient {ids[rows[0]]} has label {bad[0]}, expected "
            "-1, 0 or 1; make it again with `smri preprocess`"
        )  # fmt: skip
    seen: dict[str, int] = {}
    for row, pid in enumerate(ids):
        if not pid or pid in seen:
            what = "an empty patient id" if not pid else f"patient id {pid!r} twice"
            where = f"row {row}" if not pid else f"rows {seen[pid]} and {row}"
            raise DataError(
                f"{path}: damaged smri store: {what} ({where}); make it again with "
                "`smri preprocess`"
            )
        seen[pid] = row
    m, s = info.volume_shape[:2]
    problems = []
    if not isinstance(info.classes, dict) or sorted(info.classes.values()) != [0, 1]:
        problems.append(f"classes {info.classes} are not one name for 0 and one for 1")
    if not isinstance(info.modalities, tuple) or len(info.modalities) != m:
        problems.append(f"{len(info.modalities)} modalities named for images of {m}")
    if info.slices != s:
        problems.append(f"slices {info.slices} for images of {s}")
    if info.axis_order != AXIS_ORDER:
        problems.append(f"axis order {info.axis_order!r}, expected {AXIS_ORDER!r}")
    if info.dtype not in DTYPES:
        problems.append(f"images of {info.dtype}, expected {' or '.join(DTYPES)}")
    if not isinstance(info.config, dict) or not isinstance(info.skipped, list):
        problems.append("config or skipped attributes of the wrong kind")
    else:
        said = {k: info.config.get(k) for k in ("modalities", "slices", "dtype")}
        if said["modalities"] is not None and list(said["modalities"]) != list(info.modalities):
            problems.append(f"config modalities {said['modalities']} vs {list(info.modalities)}")
        if said["slices"] is not None and said["slices"] != s:
            problems.append(f"config slices {said['slices']} for images of {s}")
        if said["dtype"] is not None and said["dtype"] != info.dtype:
            problems.append(f"config dtype {said['dtype']} for images of {info.dtype}")
    if meta is not None:
        for name in META_FIELDS:
            if name in meta and meta[name].shape[:1] != (len(ids),):
                problems.append(f"meta/{name} has {meta[name].shape[0]} rows, not {len(ids)}")
    if problems:
        raise DataError(
            f"{path}: damaged smri store: its attributes contradict its datasets ("
            + "; ".join(problems[:2]) + "); make it again with `smri preprocess`"
        )  # fmt: skip
