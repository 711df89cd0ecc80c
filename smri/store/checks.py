"""Validation: a file's layout against the schema, and a store's contents against its attributes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

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
    PATIENT_ID,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    StoreInfo,
    added_fields,
)
from smri.text import has_control_characters, printable
from smri.version import __version__


def check_layout(f: h5py.File, path: Path) -> dict[str, Any]:
    """DataError unless `f` is an smri store whose datasets smri can read safely; its root
    attributes, each checked by type (`read_attrs`).

    Checked before any dataset's values are read: every name smri reads is a hard link inside
    this file (not an ExternalLink or SoftLink), no dataset is virtual or keeps its data in
    another file (HDF5 external storage: `/etc/passwd`, a FIFO), dtypes and shapes are the
    schema's, a chunk holds at most one patient, and the patients declared fit in the bytes
    the file holds (a header claiming 3e8 patients in 11 KB is refused, not allocated).
    """
    attrs = read_attrs(f, path)
    version = attrs["schema_version"]
    for key in (IMAGES, LABELS, PATIENT_ID):
        if f.get(key, getlink=True) is None:  # `key in f` would follow an external link
            raise DataError(
                f"{path}: store is missing the '{key}' dataset; re-run `smri preprocess`"
            )
    for key in _names(f, path, version):
        _check_source(f, key, path)
    images = f[IMAGES]
    n = images.shape[0] if images.ndim == 5 else -1
    if images.ndim != 5 or f[LABELS].shape != (n,) or f[PATIENT_ID].shape != (n,):
        raise DataError(
            f"{path}: store datasets disagree: images {images.shape}, "
            f"labels {f[LABELS].shape}, patient_id {f[PATIENT_ID].shape}"
        )
    if version >= 2:
        expected = {MASKS: (n, *images.shape[2:])}
        expected.update({f"{META}/{k}": (n, *v[1](images.shape[1])) for k, v in
                         added_fields(version).items()})  # fmt: skip
        for key, shape in expected.items():
            if key not in f or f[key].shape != shape:
                got = f"shape {f[key].shape}" if key in f else "missing"
                raise DataError(
                    f"{path}: damaged smri store: '{key}' is {got}, expected {shape}; "
                    "re-run `smri preprocess`"
                )
    _check_dtypes(f, path, version)
    _check_sizes(f, path)
    return attrs


# --------------------------------------------------------------------------- root attributes
def read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """The store's root attributes, each of the type the schema gives it (JSON text parsed);
    DataError naming the attribute otherwise. Strings that are printed (class names,
    modalities) may hold no control character; the skipped list's are made printable."""
    fmt = _attr(f, "format", path, default=None)
    if fmt != FORMAT:
        raise DataError(
            f"{path}: not an smri store (no format='{FORMAT}' attribute); "
            "make one with `smri preprocess`"
        )
    version = _attr(f, "schema_version", path, default=-1)
    if not _is_int(version):
        raise _attr_error(path, "schema_version", version, "an integer")
    version = int(version)
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
    out: dict[str, Any] = {"schema_version": version}
    for name in ("smri_version", "created", "axis_order"):
        out[name] = _text(f, name, path)
    out["slices"] = _attr(f, "slices", path)
    if not _is_int(out["slices"]):
        raise _attr_error(path, "slices", out["slices"], "an integer")
    out["slices"] = int(out["slices"])
    modalities = _json(f, "modalities", path)
    if not isinstance(modalities, list) or not all(_name(m) for m in modalities):
        raise _attr_error(path, "modalities", modalities, "a JSON list of modality names")
    classes = _json(f, "classes", path)
    if not isinstance(classes, dict) or not all(
        _name(k) and _is_int(v) for k, v in classes.items()
    ):
        raise _attr_error(path, "classes", classes, "a JSON object of class names to 0 and 1")
    config, skipped = _json(f, "config", path), _json(f, "skipped", path)
    if not isinstance(config, dict):
        raise _attr_error(path, "config", config, "a JSON object")
    if not isinstance(skipped, list) or not all(
        isinstance(row, dict) and all(isinstance(v, str) for v in row.values()) for row in skipped
    ):
        raise _attr_error(path, "skipped", skipped, "a JSON list of patients and reasons")
    out.update(modalities=tuple(modalities), classes=classes, config=config)
    out["skipped"] = [{k: printable(v) for k, v in row.items()} for row in skipped]
    return out


def _attr(f: h5py.File, name: str, path: Path, **default: Any) -> Any:
    try:
        if "default" in default:
            return f.attrs.get(name, default["default"])
        return f.attrs[name]
    except KeyError:
        raise DataError(
            f"{path}: damaged smri store: attribute '{name}' is missing; make it again with "
            "`smri preprocess`"
        ) from None
    except (OSError, TypeError, ValueError) as exc:  # a type h5py cannot read
        raise DataError(
            f"{path}: damaged smri store: attribute '{name}' cannot be read ({exc}); make it "
            "again with `smri preprocess`"
        ) from None


def _text(f: h5py.File, name: str, path: Path) -> str:
    value = _attr(f, name, path)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if not isinstance(value, str):
        raise _attr_error(path, name, value, "a string")
    return printable(value)


def _json(f: h5py.File, name: str, path: Path) -> Any:
    text = _text(f, name, path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _attr_error(path, name, text, "JSON text") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _name(value: Any) -> bool:
    """A class or modality name: a non-empty string without control characters."""
    return isinstance(value, str) and bool(value) and not has_control_characters(value)


def _attr_error(path: Path, name: str, value: Any, expected: str) -> DataError:
    shown = printable(repr(value))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return DataError(
        f"{path}: damaged smri store: attribute '{name}' is {shown}, expected {expected}; "
        "make it again with `smri preprocess`"
    )


# ------------------------------------------------------------------------------------ datasets
def _names(f: h5py.File, path: Path, version: int) -> list[str]:
    """The names smri reads from this store: its datasets and meta/ fields."""
    names = [IMAGES, LABELS, PATIENT_ID]
    if version >= 2:
        names.append(MASKS)
    if f.get(META, getlink=True) is not None:
        _check_link(f, META, path)
        if not isinstance(f[META], h5py.Group):
            raise DataError(f"{path}: damaged smri store: '{META}' is not a group")
        fields = [*META_FIELDS, *added_fields(version)]
        names += [f"{META}/{k}" for k in fields if f[META].get(k, getlink=True) is not None]
    return names


def _check_link(f: h5py.File, key: str, path: Path) -> None:
    parent, _, name = key.rpartition("/")
    link = (f[parent] if parent else f).get(name, getlink=True)
    if link is None or isinstance(link, h5py.HardLink):
        return
    if isinstance(link, h5py.ExternalLink):
        what = f"a link to {printable(link.filename)}:{printable(link.path)}"
    else:
        what = f"a link to {printable(getattr(link, 'path', '?'))}"
    raise DataError(
        f"{path}: damaged smri store: '{key}' is {what}; smri reads only what the store file "
        "itself holds"
    )


def _check_source(f: h5py.File, key: str, path: Path) -> None:
    """DataError unless `key` is a dataset of this file, with its data in this file."""
    _check_link(f, key, path)
    if f.get(key, getlink=True) is None:  # missing: the shape checks name it
        return
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: damaged smri store: '{key}' is not a dataset")
    if ds.is_virtual:
        raise DataError(
            f"{path}: damaged smri store: '{key}' is a virtual dataset (its data are in other "
            "files); smri reads only what the store file itself holds"
        )
    if ds.external:
        raise DataError(
            f"{path}: damaged smri store: '{key}' keeps its data in another file "
            f"({printable(str(ds.external[0][0]))}); smri reads only what the store file itself "
            "holds"
        )


def _check_dtypes(f: h5py.File, path: Path, version: int) -> None:
    images = f[IMAGES]
    wrong = []
    if str(images.dtype) not in DTYPES:
        wrong.append(f"'{IMAGES}' is {images.dtype}, expected {' or '.join(DTYPES)}")
    if f[LABELS].dtype.kind not in "iu":
        wrong.append(f"'{LABELS}' is {f[LABELS].dtype}, expected integers")
    if h5py.check_string_dtype(f[PATIENT_ID].dtype) is None:
        wrong.append(f"'{PATIENT_ID}' is {f[PATIENT_ID].dtype}, expected strings")
    if version >= 2 and f[MASKS].dtype != np.uint8:
        wrong.append(f"'{MASKS}' is {f[MASKS].dtype}, expected uint8")
    m = images.shape[1]
    fields = {**META_FIELDS, **added_fields(version)}
    for name, (dtype, shape, *_) in fields.items():
        ds = f[META][name] if META in f and name in f[META] else None
        if ds is None:
            continue
        if _kind(ds.dtype) != _kind(np.dtype(dtype)):
            wrong.append(f"'{META}/{name}' is {ds.dtype}, expected {_kind(np.dtype(dtype))}")
        elif ds.shape != (images.shape[0], *shape(m)):
            wrong.append(f"'{META}/{name}' has shape {ds.shape}, expected "
                         f"{(images.shape[0], *shape(m))}")  # fmt: skip
    for key in (IMAGES, MASKS) if version >= 2 else (IMAGES,):
        chunks, row = f[key].chunks, math.prod(f[key].shape[1:])
        if chunks is not None and (chunks[0] != 1 or math.prod(chunks) > row):
            wrong.append(f"'{key}' chunks {chunks} hold more than one patient")
    if wrong:
        raise DataError(
            f"{path}: damaged smri store: {wrong[0]}; make it again with `smri preprocess`"
        )


def _kind(dtype: np.dtype) -> str:
    """'strings', 'integers', 'floats' or 'booleans': what a meta/ field must hold."""
    if h5py.check_string_dtype(dtype) is not None:
        return "strings"
    return {"i": "integers", "u": "integers", "f": "floats", "b": "booleans"}.get(
        dtype.kind, str(dtype)
    )


# Compression shrinks data by at most this much: deflate's ceiling is 1032:1 (a run of zeros),
# lzf's far lower. A dataset declaring more than this times its stored bytes is not real.
MAX_EXPANSION = 1100
VLEN_BYTES = 16  # what one variable-length string takes in its dataset (length and heap id)


def _check_sizes(f: h5py.File, path: Path) -> None:
    """DataError when a dataset read whole, or a patient's images, declares more bytes than
    the file holds for it: said before anything is allocated for them."""
    file_bytes = os.fstat(f.id.get_vfd_handle()).st_size
    for key in (IMAGES, LABELS, PATIENT_ID):
        ds = f[key]
        string = h5py.check_string_dtype(ds.dtype)
        each = VLEN_BYTES if string is not None and string.length is None else ds.dtype.itemsize
        declared = ds.size * each
        stored = min(ds.id.get_storage_size(), file_bytes)
        filtered = ds.id.get_create_plist().get_nfilters() > 0
        if declared > stored * (MAX_EXPANSION if filtered else 1):
            n = ds.shape[0] if ds.ndim else 0
            raise DataError(
                f"{path}: damaged smri store: '{key}' declares {n:,} patients "
                f"({declared:,} bytes) but the file holds {stored:,} bytes of it "
                f"({file_bytes:,} in all); not read"
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


# ------------------------------------------------------------------------------- image values
# The bit patterns of [0, 1] in each image dtype, read as unsigned integers, are 0 .. that of
# 1.0; every negative number, NaN, Inf and value above 1 has a larger one. So a single integer
# max (no float compare, faster than a float min/max) tells whether values keep the store's
# promise.
_ONE_BITS = {
    np.dtype(np.float16): (np.uint16, 0x3C00),
    np.dtype(np.float32): (np.uint32, 0x3F800000),
}


def within_promise(images: np.ndarray) -> bool:
    """Whether `images` (any shape, the store's dtype) are all finite and in [0, 1], the
    range preprocessing's min-max gives every stored volume. One integer max over the bits."""
    bits, one = _ONE_BITS[images.dtype]
    return images.size == 0 or int(images.view(bits).max()) <= one


def value_problem(images: np.ndarray) -> tuple[int, str] | None:
    """What breaks the promise in one patient's `images`: (count of NaN or Inf, "") or
    (0, the range seen), or None (only -0.0, which the bit test flags)."""
    finite = np.isfinite(images)
    bad = int(images.size - np.count_nonzero(finite))
    if bad:
        return bad, ""
    lo, hi = float(images.min()), float(images.max())
    if lo >= 0 and hi <= 1:
        return None
    return 0, f"{lo:.6g} to {hi:.6g}"


def nonfinite_message(store: Path, patient_id: str, count: int) -> str:
    """What to say of a store patient holding `count` NaN or Inf values."""
    voxels = "voxel" if count == 1 else "voxels"
    return (
        f"{store}: patient {patient_id} holds {count} non-finite {voxels} (NaN or Inf), which "
        "preprocessing never writes: the store is damaged; make it again with `smri preprocess`"
    )


def range_message(store: Path, patient_id: str, seen: str) -> str:
    """What to say of a store patient whose values leave [0, 1]."""
    return (
        f"{store}: patient {patient_id} holds values from {seen}, outside the [0, 1] that "
        "preprocessing writes (each volume is min-max normalised): the store is damaged or "
        "was not made by smri; make it again with `smri preprocess`"
    )
