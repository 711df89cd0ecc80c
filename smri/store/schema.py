"""The HDF5 store: the one file contract between `smri preprocess` and everything after it.

Every key name, the schema version and the validation live here; no other module spells a key.

Schema version 2 (version 1 is the same without the items marked v2)
--------------------------------------------------------------------
- ``images``     float16/float32 ``(N, M, S, H, W)``, chunk ``(1, 1, S, H, W)``
- ``labels``     int8 ``(N,)``: 0/1, -1 where unlabelled
- ``patient_id`` UTF-8 strings ``(N,)``, sorted
- ``masks``      v2: uint8 ``(N, S, H, W)``, chunk ``(1, S, H, W)``, gzip-1: the segmentation
  labels of the same slab, in the images' axis order (0 where a patient has none)
- ``meta/*``     per patient: original shape, voxel spacing, min and max used, source files;
  v2: ``has_mask``, ``tumour_voxels`` and ``tumour_voxels_in_slab`` (label > 0 in the whole
  segmentation and in the slab; -1 without one), ``axis_codes`` (NIfTI axis codes per volume)
- root attrs     ``format``, ``schema_version``, ``smri_version``, ``created``, ``modalities``,
  ``slices``, ``axis_order``, ``classes`` (JSON), ``config`` (JSON), ``skipped`` (JSON)

Version 2 adds keys and changes none of version 1's, so v1 stores are read as v2 stores whose
patients have no mask and unknown axis codes. Training never reads ``masks``.
Attributes are plain HDF5 strings and numbers (JSON text for structures): nothing is pickled.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from isal import isal_zlib

from smri import __version__
from smri.atomic import partial_path, publish
from smri.errors import DataError, plural
from smri.files import check_regular

FORMAT = "smri-store"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
AXIS_ORDER = "modality,slice,y,x"  # (M, S, H, W): NIfTI axes (k, j, i) after the central crop

IMAGES = "images"
LABELS = "labels"
PATIENT_ID = "patient_id"
META = "meta"
MASKS = "masks"  # v2
META_FIELDS = {  # name -> (dtype, per-patient shape given M)
    "original_shape": ("int32", lambda m: (m, 3)),
    "spacing": ("float32", lambda m: (m, 3)),
    "intensity_min": ("float64", lambda m: (m,)),
    "intensity_max": ("float64", lambda m: (m,)),
    "source_files": (h5py.string_dtype("utf-8"), lambda m: (m,)),
}
# Version 2's per-patient fields: name -> (dtype, per-patient shape given M, value when unknown).
META_FIELDS_V2 = {
    "has_mask": ("bool", lambda m: (), False),
    "tumour_voxels": ("int64", lambda m: (), -1),
    "tumour_voxels_in_slab": ("int64", lambda m: (), -1),
    "axis_codes": (h5py.string_dtype("utf-8"), lambda m: (m,), ""),
}
NO_MASK = {"has_mask": False, "tumour_voxels": -1, "tumour_voxels_in_slab": -1}
# Masks are mostly zeros: gzip keeps 1-1.5 % of the bytes. One chunk per patient, so the
# preprocessing workers compress each mask (`MaskChunk`) and the writer stores the bytes.
MASK_COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}


@dataclass(frozen=True)
class MaskChunk:
    """A mask row ``(S, H, W)`` uint8, compressed as the store's masks dataset holds it: deflate
    in zlib's format (HDF5's gzip filter), by ISA-L at its fastest level. Made by the worker that
    read the segmentation, so the single writer only stores bytes: ISA-L level 0 takes 0.3 ms
    a BraTS patient, zlib's level 1 inside HDF5 took the writer 2 ms (benchmarks/RESULTS.md);
    the chunk is 26 kB instead of 17 kB, and every gzip reader decodes it."""

    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def encode(cls, mask: np.ndarray) -> MaskChunk:
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        return cls(mask.shape, isal_zlib.compress(mask, 0))

    def decode(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), np.uint8).reshape(self.shape)


LOW_COVERAGE = 0.10  # `smri info` names patients with less of their tumour in the slab

# Compression names accepted by `--compression`, mapped to h5py's create_dataset arguments.
# Filters any h5py reads without plugins: gzip is built into every HDF5 library (h5dump and
# other languages read it); lzf is h5py's own, which they need the lzf plugin for.
COMPRESSIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "lzf": {"compression": "lzf", "shuffle": True},
    **{
        f"gzip-{level}": {"compression": "gzip", "compression_opts": level, "shuffle": True}
        for level in range(1, 10)
    },
}
DTYPES = ("float16", "float32")
# A chunk is one volume (S*H*W values); the default 1 MiB chunk cache cannot hold even one at
# BraTS geometry (32*240*240*2 bytes = 3.5 MiB), so each read would decode a chunk repeatedly.
READ_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class StoreInfo:
    """What a store holds, read from its attributes and dataset headers."""

    path: Path
    n_patients: int
    modalities: tuple[str, ...]
    slices: int
    volume_shape: tuple[int, int, int, int]
    dtype: str
    compression: str | None
    classes: dict[str, int]
    config: dict[str, Any]
    skipped: list[dict[str, str]]
    schema_version: int
    smri_version: str
    created: str
    axis_order: str
    class_counts: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0
    coverage: dict[str, Any] | None = None  # v2: how much tumour the slab holds (see `coverage`)
    orientations: dict[str, int] = field(default_factory=dict)  # v2: patients per axis codes

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `smri info --json`, run configs and checkpoints)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        d["modalities"] = list(self.modalities)
        d["volume_shape"] = list(self.volume_shape)
        return d


def _compression_name(ds: h5py.Dataset) -> str | None:
    if ds.compression is None:
        return None
    if ds.compression == "gzip":
        return f"gzip-{ds.compression_opts}"
    return str(ds.compression)


def _validate(f: h5py.File, path: Path) -> None:
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


def _open_h5(path: Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such store")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an .h5 store written by `smri preprocess`")
    check_regular(path)
    try:
        return h5py.File(path, "r", rdcc_nbytes=READ_CACHE_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({_h5_reason(exc)})") from None


def _h5_reason(exc: OSError) -> str:
    text = str(exc)
    if "truncated" in text:
        return "file is truncated"
    if "signature" in text or "file signature" in text:
        return "no HDF5 signature"
    return text.split("(")[0].strip() or type(exc).__name__


def _info_from_file(f: h5py.File, path: Path) -> StoreInfo:
    images = f[IMAGES]
    labels = f[LABELS][:]
    v2 = int(f.attrs["schema_version"]) >= 2
    classes = json.loads(f.attrs["classes"])
    counts = {name: int(np.sum(labels == value)) for name, value in classes.items()}
    unlabelled = int(np.sum(labels < 0))
    if unlabelled:
        counts["unlabelled"] = unlabelled
    return StoreInfo(
        path=path,
        n_patients=int(images.shape[0]),
        modalities=tuple(json.loads(f.attrs["modalities"])),
        slices=int(f.attrs["slices"]),
        volume_shape=tuple(int(s) for s in images.shape[1:]),
        dtype=str(images.dtype),
        compression=_compression_name(images),
        classes=classes,
        config=json.loads(f.attrs["config"]),
        skipped=json.loads(f.attrs["skipped"]),
        schema_version=int(f.attrs["schema_version"]),
        smri_version=str(f.attrs["smri_version"]),
        created=str(f.attrs["created"]),
        axis_order=str(f.attrs["axis_order"]),
        class_counts=counts,
        file_bytes=path.stat().st_size,
        coverage=coverage(_ids(f), *(f[META][k][:] for k in NO_MASK)) if v2 else None,
        orientations=orientation_counts(f[META]["axis_codes"][:]) if v2 else {},
    )


LABEL_VALUES = (-1, 0, 1)


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


def _ids(f: h5py.File) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f[PATIENT_ID][:]]


def coverage(
    ids: Sequence[str], has_mask: np.ndarray, total: np.ndarray, in_slab: np.ndarray
) -> dict[str, Any]:
    """How much of each tumour the slab holds, over the patients with a mask.

    `has_mask`, `total` and `in_slab` are per patient (``(N,)``): whether a segmentation was
    stored, and its voxels with label > 0 in the whole volume and in the slab. The share is
    ``in_slab / total``; masks without a tumour voxel are listed apart (no share).
    """
    masked = np.asarray(has_mask, dtype=bool)
    with_tumour = masked & (np.asarray(total) > 0)
    share = np.asarray(in_slab, dtype=np.float64)[with_tumour] / np.asarray(total)[with_tumour]
    rows = np.flatnonzero(with_tumour)
    return {
        "patients": len(ids),
        "patients_with_mask": int(masked.sum()),
        "median_share_in_slab": round(float(np.median(share)), 4) if share.size else None,
        "low_coverage_threshold": LOW_COVERAGE,
        "low_coverage": [ids[i] for i, s in zip(rows, share, strict=True) if s < LOW_COVERAGE],
        "empty_masks": [ids[i] for i in np.flatnonzero(masked & (np.asarray(total) == 0))],
    }


def patient_axis_codes(codes: Sequence[str]) -> str:
    """One patient's orientation from its volumes' axis codes: ``"LPS"``; ``"LPS/RAS/LPS/LPS"``
    when its volumes disagree; ``"unknown"`` when not recorded (rows of a version-1 store)."""
    codes = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in codes]
    if not any(codes):
        return "unknown"
    return codes[0] if len(set(codes)) == 1 else "/".join(codes)


def orientation_counts(codes: np.ndarray) -> dict[str, int]:
    """Patients per orientation (`patient_axis_codes`) from ``meta/axis_codes`` ``(N, M)``,
    most common first."""
    counts: dict[str, int] = {}
    for row in codes:
        key = patient_axis_codes(row)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def read_info(path: Path) -> StoreInfo:
    """Validate the store at `path` and return its description (the file is closed again)."""
    with StoreReader(path) as reader:
        return reader.info


class StoreReader:
    """Read-only access to a validated store. Open one per process (never across a fork)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = _open_h5(self.path)
        try:
            _validate(self._file, self.path)
            self.info = _info_from_file(self._file, self.path)
            self.labels: np.ndarray = self._file[LABELS][:].astype(np.int8)
            self.patient_ids: list[str] = [
                s.decode("utf-8") if isinstance(s, bytes) else str(s)
                for s in self._file[PATIENT_ID][:]
            ]
            check_contents(self.info, self.labels, self.patient_ids, self._file.get(META))
            self._images = self._file[IMAGES]
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            self._file.close()
            raise DataError(f"{self.path}: damaged smri store ({exc})") from None
        except (OSError, RuntimeError) as exc:  # HDF5's own: a damaged heap, header or B-tree
            self._file.close()
            raise DataError(
                f"{self.path}: damaged smri store ({_h5_reason(exc)}); make it again with "
                "`smri preprocess`"
            ) from None
        except BaseException:
            self._file.close()
            raise
        self.version = self.info.schema_version

    @contextmanager
    def _reading(self, rows: Sequence[int]) -> Iterator[None]:
        """HDF5's read errors (a damaged chunk, a failed filter) as a DataError naming the
        store and the patient."""
        try:
            yield
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            i = int(rows[0]) if len(rows) else -1
            who = f"patient {self.patient_ids[i]} (row {i})" if 0 <= i < len(self) else "a row"
            raise DataError(
                f"{self.path}: cannot read {who}: {_h5_reason(exc)}; the store is damaged: make "
                "it again with `smri preprocess`"
            ) from None

    @property
    def has_masks(self) -> bool:
        """Whether the store can hold masks (schema version 2); each patient says if it has one."""
        return self.version >= 2

    def mask_table(self) -> dict[str, np.ndarray]:
        """``has_mask`` (bool), ``tumour_voxels`` and ``tumour_voxels_in_slab`` (int64), each
        ``(N,)``; a version-1 store reads as no masks (False, -1, -1)."""
        n = len(self)
        if not self.has_masks:
            return {k: np.full(n, v, dtype=bool if k == "has_mask" else np.int64)
                    for k, v in NO_MASK.items()}  # fmt: skip
        return {k: self._file[META][k][:] for k in NO_MASK}

    def read_mask(self, i: int) -> np.ndarray | None:
        """One patient's segmentation labels of the slab, ``(S, H, W)`` uint8; None without one.

        Not for training: the model never sees the segmentation.
        """
        if not self.has_masks or not bool(self._file[META]["has_mask"][i]):
            return None
        return self._file[MASKS][i]

    def __len__(self) -> int:
        return self.info.n_patients

    def read(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """One patient's volumes, ``(M, S, H, W)`` in the store's dtype."""
        with self._reading([i]):
            if out is None:
                return self._images[i]
            self._images.read_direct(out, np.s_[i])
        return out

    def read_many(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Several patients, ``(K, M, S, H, W)``, in the order given (into `out` when given)."""
        if out is None:
            out = np.empty((len(indices), *self.info.volume_shape), dtype=self._images.dtype)
        for k, i in enumerate(indices):
            with self._reading([i]):
                self._images.read_direct(out, np.s_[int(i)], np.s_[k])
        return out

    def meta(self, i: int) -> dict[str, Any]:
        """Per-patient metadata (original shape, spacing, min/max, source files; v2: has_mask,
        tumour voxel counts, axis codes)."""
        group = self._file[META]
        out: dict[str, Any] = {}
        names = [*META_FIELDS, *(META_FIELDS_V2 if self.has_masks else ())]
        for name in names:
            value = group[name][i]
            if name in ("source_files", "axis_codes"):
                out[name] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
            else:
                out[name] = value.tolist()
        return out

    def index_of(self, patient_id: str) -> int:
        """Row of `patient_id`; DataError naming the id when absent."""
        try:
            return self.patient_ids.index(patient_id)
        except ValueError:
            raise DataError(
                f"{self.path}: no patient '{patient_id}' in the store "
                f"({plural(len(self.patient_ids), 'patient')})"
            ) from None

    def close(self) -> None:
        """Close the file handle."""
        self._file.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PARTIAL_STATE = "partial_state"  # attr of an unfinished store: JSON resume state


def check_room(path: Path, tmp: Path, nbytes: int) -> None:
    """DataError when the folder of `tmp` has less free space, or this process may write less
    to one file (ulimit -f), than `nbytes`: said before writing, as a failed write inside HDF5
    cannot be recovered from (h5py crashes when it frees the file's objects afterwards)."""
    import resource

    need = nbytes + (16 << 20)
    try:
        st = os.statvfs(Path(tmp).parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    gib = f"about {need / 2**30:,.2f} GiB"
    if free is not None and need > free:
        raise DataError(
            f"{path}: the store needs {gib} and {Path(tmp).parent} has {free / 2**30:,.2f} GiB "
            "free; free some space, write it elsewhere, or compress it (--compression gzip-1)"
        )
    if limit != resource.RLIM_INFINITY and need > limit:
        raise DataError(
            f"{path}: the store needs {gib}, more than this process may write to one file "
            f"({limit / 2**30:,.2f} GiB: ulimit -f)"
        )


class StoreWriteError(OSError):
    """HDF5 failed to write the store (a full disk, a file size limit). The process should end
    soon after reporting it: h5py crashes when it later frees the file's objects."""

    unrecoverable = True


def write_error(exc: BaseException, path: Path) -> StoreWriteError | None:
    """`exc` as a StoreWriteError naming `path` (not the hidden partial file) when it is HDF5's
    report of a failed write ("... errno = 28, error message = 'No space left ...'")."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    code = getattr(exc, "errno", None)
    found = re.search(r"errno = (\d+)", str(exc))
    if found:
        code = int(found.group(1))
    if not code or (not found and not isinstance(exc, OSError)):
        return None
    return StoreWriteError(code, os.strerror(code), str(path))


def _is_locked(exc: OSError) -> bool:
    """HDF5's refusal of a file another process holds ("unable to lock file, errno = 11").

    Not a bare "lock": a truncated file's message names "sblock->base_addr".
    """
    return "unable to lock file" in str(exc)


class LockedError(DataError):
    """Another process holds the file open for writing."""


def _open_error(path: Path, exc: OSError) -> DataError:
    """The DataError for an HDF5 file that would not open: locked by a writer, or damaged."""
    if _is_locked(exc):
        return LockedError(
            f"{path}: another process is writing this file (it is locked); wait for it or stop it"
        )
    return DataError(f"{path}: damaged ({_h5_reason(exc)})")


def _create_h5(path: Path, **kwargs: Any) -> h5py.File:
    try:
        return h5py.File(path, "w", **kwargs)
    except OSError as exc:
        if _is_locked(exc):
            raise _open_error(path, exc) from None
        raise


# The direct writer: image chunks written with O_DIRECT (`DirectChunks`) where the store and the
# file system allow it, masks compressed by the workers (`MaskChunk`); the single writer thread
# then does no per-byte work. False: images and masks go through h5py (and the page cache).
# A module attribute, so the benchmark can measure the plain write in its place.
DIRECT_WRITES = True
PAGE_BYTES = 4096
# The writer goes back to page-cache writes when waiting for O_DIRECT writes takes more than
# this share of its time (checked from the DIRECT_PROBE_ROWS-th row written on): the disk, not
# the CPU, is then the limit, and the page cache (RAM) absorbs what the disk cannot yet take.
DIRECT_SHARE_MAX = 0.5
DIRECT_PROBE_ROWS = 8


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on a page boundary: a volume the store can
    hand to the disk with O_DIRECT without copying it first (`DirectChunks`)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + PAGE_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE_BYTES
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def is_aligned(a: np.ndarray) -> bool:
    """Whether `a`'s data starts on a page boundary."""
    return a.ctypes.data % PAGE_BYTES == 0


class DirectChunks:
    """A store's whole-volume image chunks, written straight to their place in the file.

    Through h5py every chunk is copied once more, into fresh page-cache pages of the kernel,
    and that copy and its writeback take a core's time from the workers (measured in
    benchmarks/RESULTS.md). Here the chunks are allocated when the dataset is created (HDF5's
    early allocation, page-aligned, never filled), so each one's address in the file is known,
    and a volume is written there with one ``pwrite`` on an ``O_DIRECT`` descriptor: the disk
    reads it from the worker's buffer. HDF5 writes everything else (metadata, labels, ids,
    masks) through its own descriptor; the two never touch the same bytes, and the file is an
    ordinary HDF5 file. Where this is not possible (no O_DIRECT, a file system that refuses
    it, compressed chunks, chunks that are not whole pages), h5py writes the chunks, with the
    same result; and also once the disk is the limit (`disk_bound`): O_DIRECT writes wait for
    the disk, page-cache writes only for RAM.
    """

    def __init__(self, fd: int, images: h5py.Dataset):
        self._fd: int | None = fd
        self._images = images
        self._bounce: np.ndarray | None = None  # for volumes not on a page boundary
        self._started = time.perf_counter()
        self.rows: set[int] = set()  # patients (rows) with a chunk written here
        self.waited = 0.0  # seconds spent in pwrite

    @staticmethod
    def supported(chunk_bytes: int) -> bool:
        """Whether chunks of `chunk_bytes` are to be written this way (DIRECT_WRITES on)."""
        whole_pages = chunk_bytes > 0 and chunk_bytes % PAGE_BYTES == 0
        return DIRECT_WRITES and hasattr(os, "O_DIRECT") and whole_pages

    @staticmethod
    def creation_plist() -> h5py.h5p.PropDCID:
        """Image dataset creation properties: chunks allocated at creation and never filled."""
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        return dcpl

    @classmethod
    def open(cls, path: Path, images: h5py.Dataset) -> DirectChunks | None:
        """Direct writes to `images` in the file at `path`; None where they are not possible."""
        plist = images.id.get_create_plist()
        placed = (
            plist.get_nfilters() == 0
            and images.chunks == (1, 1, *images.shape[2:])
            and plist.get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY
            and DirectChunks.supported(math.prod(images.chunks) * images.dtype.itemsize)
        )
        if not placed:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:  # a file system without O_DIRECT (tmpfs: EINVAL)
            return None
        return cls(fd, images)

    def disk_bound(self) -> bool:
        """Whether waiting for the disk has taken more than DIRECT_SHARE_MAX of the time since
        this writer opened, once DIRECT_PROBE_ROWS rows are written."""
        elapsed = time.perf_counter() - self._started
        return len(self.rows) >= DIRECT_PROBE_ROWS and self.waited > DIRECT_SHARE_MAX * elapsed

    def write(self, index: tuple[int, int], volume: np.ndarray) -> bool:
        """Write `volume` ``(S, H, W)``, C-contiguous in the store dtype, as chunk
        ``(patient, modality)``.

        False where the file system refuses O_DIRECT writes (EINVAL): the caller then writes
        the chunk through h5py. Other errors (a full disk) are raised.
        """
        info = self._images.id.get_chunk_info_by_coord((*index, 0, 0, 0))
        if info.byte_offset is None or info.size != volume.nbytes:
            return False
        if not is_aligned(volume):  # pickled from a worker process, say
            if self._bounce is None:
                self._bounce = aligned_empty((volume.nbytes,), np.uint8)
            self._bounce[:] = volume.reshape(-1).view(np.uint8)
            volume = self._bounce
        data, offset = memoryview(volume).cast("B"), info.byte_offset
        t0 = time.perf_counter()
        try:
            while data:
                n = os.pwrite(self._fd, data, offset)
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                data, offset = data[n:], offset + n
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # stricter alignment than a page, or no O_DIRECT
                return False
            raise
        finally:
            self.waited += time.perf_counter() - t0
        self.rows.add(index[0])
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StoreWriter:
    """Writes a store to a temporary file beside `path`; renames it into place on success.

    Rows are written by index, so the parent can write results in any arrival order while the
    final row order stays the sorted patient order. On an exception (or Ctrl-C) the temporary
    file is removed and `path` is untouched.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_patients: int,
        volume_shape: tuple[int, int, int, int],
        dtype: str,
        compression: str | None,
        modalities: Sequence[str],
        classes: dict[str, int],
        config: dict[str, Any],
        overwrite: bool = True,
        tmp_path: Path | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        comp = COMPRESSIONS[compression or "none"]
        self.path = Path(path)
        self.overwrite = overwrite
        self.tmp_path = Path(tmp_path) if tmp_path else partial_path(self.path, unique=True)
        self.n_patients = n_patients
        self._written = np.zeros(n_patients, dtype=bool)
        m, s, h, w = volume_shape
        if comp == {}:  # uncompressed: its size is known; a disk it cannot fit is said first
            row = (m * np.dtype(dtype).itemsize + 1) * s * h * w  # images and a mask
            check_room(self.path, self.tmp_path, n_patients * row)
        chunk_bytes = s * h * w * np.dtype(dtype).itemsize
        placed = not comp and DirectChunks.supported(chunk_bytes)
        # Placed chunks: page-aligned, allocated now (their addresses known), never filled.
        align = {"alignment_threshold": chunk_bytes, "alignment_interval": PAGE_BYTES}
        self._file = _create_h5(self.tmp_path, **(align if placed else {}))
        self._direct: DirectChunks | None = None
        try:
            f = self._file
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["smri_version"] = __version__
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["modalities"] = json.dumps(list(modalities))
            f.attrs["slices"] = s
            f.attrs["axis_order"] = AXIS_ORDER
            f.attrs["classes"] = json.dumps(classes)
            f.attrs["config"] = json.dumps(config, sort_keys=True)
            f.attrs["skipped"] = "[]"
            # Resizable along patients: rows that preprocessing skips are trimmed at commit.
            self.images = f.create_dataset(
                IMAGES,
                shape=(n_patients, m, s, h, w),
                maxshape=(None, m, s, h, w),
                dtype=dtype,
                chunks=(1, 1, s, h, w),
                dcpl=DirectChunks.creation_plist() if placed else None,
                **comp,
            )
            self.labels = f.create_dataset(
                LABELS, shape=(n_patients,), maxshape=(None,), dtype="int8", fillvalue=-1
            )
            self.ids = f.create_dataset(
                PATIENT_ID, shape=(n_patients,), maxshape=(None,), dtype=h5py.string_dtype("utf-8")
            )
            # Rows of patients without a segmentation are never written: they read as zeros
            # and take no space (HDF5 allocates a chunk only when it is written).
            self.masks = f.create_dataset(
                MASKS, shape=(n_patients, s, h, w), maxshape=(None, s, h, w), dtype="uint8",
                chunks=(1, s, h, w), fillvalue=0, **MASK_COMPRESSION,
            )  # fmt: skip
            meta = f.create_group(META)
            self.meta = {
                name: meta.create_dataset(
                    name, shape=(n_patients, *shape(m)), maxshape=(None, *shape(m)), dtype=dt
                )
                for name, (dt, shape) in META_FIELDS.items()
            }
            for name, (dt, shape, unknown) in META_FIELDS_V2.items():
                self.meta[name] = meta.create_dataset(
                    name, shape=(n_patients, *shape(m)), maxshape=(None, *shape(m)), dtype=dt,
                    fillvalue=unknown if unknown != "" else None,
                )  # fmt: skip
            self._datasets = [self.images, self.labels, self.ids, self.masks, *self.meta.values()]
            self._keep_rows()
            self._direct = DirectChunks.open(self.tmp_path, self.images)
        except BaseException:
            self.abort()
            raise

    def write(
        self,
        i: int,
        *,
        images: np.ndarray,
        label: int,
        patient_id: str,
        meta: dict[str, Any] | None = None,
        mask: np.ndarray | MaskChunk | None = None,
    ) -> None:
        """Write row `i`: images ``(M, S, H, W)`` (cast to the store dtype), label and id;
        `mask` ``(S, H, W)`` uint8 (or already compressed) when the patient has a
        segmentation (meta says so)."""
        if not self._write_direct(i, images):
            self.images[i] = images
        self._keep(i, label, patient_id, meta or {})
        if isinstance(mask, MaskChunk):
            self._write_mask_chunk(i, mask)
        elif mask is not None:
            self.masks[i] = mask
        self._row_written(i)

    def _keep_rows(self) -> None:
        # The small fields of each row (label, id, metadata) are kept here and written by
        # `flush`, one slice per dataset: written row by row, their eleven h5py calls held the
        # GIL for about 2 ms a patient, which the preprocessing workers waited for.
        self._fields = {LABELS: self.labels, PATIENT_ID: self.ids, **self.meta}
        self._kept: dict[str, dict[int, Any]] = {name: {} for name in self._fields}

    def _keep(self, i: int, label: int, patient_id: str, meta: dict[str, Any]) -> None:
        self._kept[LABELS][i] = label
        self._kept[PATIENT_ID][i] = patient_id
        for name, value in meta.items():
            self._kept[name][i] = value

    def flush(self) -> None:
        """Write the small fields of the rows written since the last flush: each dataset in one
        slice per run of consecutive rows. `checkpoint`, `close_partial` and `commit` flush."""
        for name, kept in self._kept.items():
            if not kept:
                continue
            rows = np.array(sorted(kept))
            for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
                self._fields[name][run[0] : run[-1] + 1] = [kept[i] for i in run.tolist()]
            kept.clear()

    def written(self, name: str) -> np.ndarray:
        """Field `name` (``labels``, ``patient_id`` or a metadata field) of rows 0 to
        ``rows - 1`` as the file holds them, the kept values flushed first."""
        self.flush()
        return self._fields[name][: self.rows]

    def _write_mask_chunk(self, i: int, mask: MaskChunk) -> None:
        """Store row `i`'s compressed mask as its chunk's bytes; through h5py (decoded) where
        the masks dataset is not one gzip chunk per patient."""
        ds = self.masks
        whole = ds.chunks == (1, *ds.shape[1:]) and mask.shape == ds.shape[1:]
        if whole and ds.compression == "gzip" and not ds.shuffle and not ds.fletcher32:
            ds.id.write_direct_chunk((i, *(0,) * len(mask.shape)), mask.data)
        else:
            ds[i] = mask.decode()

    def _write_direct(self, i: int, images: np.ndarray) -> bool:
        """Write row `i`'s image chunks past the page cache (`DirectChunks`); False where that
        is not possible (the caller then writes the row through h5py)."""
        direct = self._direct
        fits = (
            isinstance(images, np.ndarray)
            and images.dtype == self.images.dtype
            and images.shape == self.images.shape[1:]
            and images.flags.c_contiguous
        )
        if direct is None or not fits:
            return False
        for m in range(images.shape[0]):  # a chunk is one whole volume (1, 1, S, H, W)
            if not direct.write((i, m), images[m]):
                self._close_direct()  # the file system refused: h5py writes from now on
                return False
        return True

    def _row_written(self, i: int) -> None:
        self._written[i] = True
        if self._direct is not None and self._direct.disk_bound():
            self._close_direct()  # h5py and the page cache from the next row on

    def _close_direct(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    @property
    def rows(self) -> int:
        """How many rows have been written."""
        return int(self._written.sum())

    def append(self, **row: Any) -> int:
        """Write the next row (rows 0..k-1 in order); returns its index."""
        i = int(self._written.sum())
        self.write(i, **row)
        return i

    def copy_row(self, reader: StoreReader, i: int) -> int:
        """Append row `i` of another store as the next row; returns its index.

        Compressed image chunks are copied as stored bytes (no decompression, no compressing
        again) when both stores share chunk layout, dtype and filters; otherwise they are read
        and written (for uncompressed chunks that is as fast).
        """
        src, dst = reader._images, self.images
        j = int(self._written.sum())
        a, b = ((d.chunks, d.dtype, d.compression, d.compression_opts) for d in (src, dst))
        if a == b and src.shuffle == dst.shuffle and src.compression is not None:
            for m in range(src.shape[1]):
                mask, chunk = src.id.read_direct_chunk((i, m, 0, 0, 0))
                dst.id.write_direct_chunk((j, m, 0, 0, 0), chunk, mask)
        else:
            dst[j] = src[i]
        meta = reader.meta(i)  # a v1 row keeps the v2 fields' fill values
        self._keep(j, reader.labels[i], reader.patient_ids[i], meta)
        if meta.get("has_mask"):
            src = reader._file[MASKS]
            if (src.chunks, src.compression, src.compression_opts) == (
                self.masks.chunks,
                self.masks.compression,
                self.masks.compression_opts,
            ):  # the chunk as its stored bytes
                mask, chunk = src.id.read_direct_chunk((i, 0, 0, 0))
                self.masks.id.write_direct_chunk((j, 0, 0, 0), chunk, mask)
            else:
                self.masks[j] = src[i]
        self._row_written(j)
        return j

    @classmethod
    def reopen(
        cls, path: Path, tmp_path: Path, overwrite: bool = True
    ) -> tuple[StoreWriter, dict[str, Any]]:
        """Reopen an unfinished store at `tmp_path`; returns the writer and its saved state.

        DataError when the file is locked by another writer, damaged, or was never
        checkpointed (the caller then starts over).
        """
        self = cls.__new__(cls)
        self.path, self.overwrite, self.tmp_path = Path(path), overwrite, Path(tmp_path)
        self._direct = None
        try:
            self._file = h5py.File(self.tmp_path, "r+")
        except OSError as exc:
            raise _open_error(tmp_path, exc) from None
        try:
            f = self._file
            state = json.loads(f.attrs[PARTIAL_STATE])
            self.images, self.labels, self.ids = f[IMAGES], f[LABELS], f[PATIENT_ID]
            self.masks = f[MASKS]
            self.meta = {name: f[META][name] for name in (*META_FIELDS, *META_FIELDS_V2)}
            self._datasets = [self.images, self.labels, self.ids, self.masks, *self.meta.values()]
            self.n_patients = self.images.shape[0]
            self._written = np.zeros(self.n_patients, dtype=bool)
            self._written[: int(state["rows"])] = True
            self._keep_rows()
            self._direct = DirectChunks.open(self.tmp_path, self.images)
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            self._file.close()
            raise DataError(
                f"{tmp_path}: unfinished store without a usable resume state ({type(exc).__name__})"
            ) from None
        return self, state

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Save a resume state (plus the row count) and flush everything to disk."""
        self.flush()
        self._file.attrs[PARTIAL_STATE] = json.dumps({**state, "rows": int(self._written.sum())})
        self._file.flush()

    def close_partial(self) -> None:
        """Close, keeping the unfinished file for a later `reopen`."""
        self.flush()
        self._close_direct()
        self._file.close()

    def set_config(self, config: dict[str, Any]) -> None:
        """Replace the recorded preprocessing config (JSON)."""
        self._file.attrs["config"] = json.dumps(config, sort_keys=True)

    def set_skipped(self, skipped: list[dict[str, str]]) -> None:
        """Record patients that were skipped, each ``{"patient_id", "reason"}``."""
        self._file.attrs["skipped"] = json.dumps(skipped)

    def abort(self) -> None:
        """Close and delete the temporary file; `path` is untouched. After a failed write
        HDF5 cannot close the file cleanly; that second error is not the one to report."""
        try:
            self._close_direct()
            self._file.close()
        except (OSError, RuntimeError):
            pass
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def commit(self) -> None:
        """Trim unwritten trailing rows, close, and rename to `path` (atomic on one filesystem)."""
        n = int(self._written.sum())
        if not self._written[:n].all():
            missing = np.flatnonzero(~self._written[:n])
            raise RuntimeError(f"store rows {missing[:5].tolist()} were never written")
        self.flush()
        if n < self.n_patients:
            for ds in self._datasets:
                ds.resize(n, axis=0)
        if PARTIAL_STATE in self._file.attrs:
            del self._file.attrs[PARTIAL_STATE]
        self._close_direct()
        self._file.close()
        if not self.overwrite and self.path.exists():
            self.tmp_path.unlink(missing_ok=True)
            raise DataError(f"{self.path} appeared while writing; not replaced (use --overwrite)")
        publish(self.tmp_path, self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
