"""Reading a store: open and validate it, describe it (`StoreInfo`), read its rows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from smri.errors import DataError, plural
from smri.files import check_regular
from smri.store.checks import (
    check_contents,
    check_layout,
    nonfinite_message,
    range_message,
    value_problem,
    within_promise,
)
from smri.store.errors import StoreChanged, h5_reason
from smri.store.probe import probe
from smri.store.schema import (
    IMAGES,
    LABELS,
    LOW_COVERAGE,
    MASKS,
    META,
    META_FIELDS,
    NO_MASK,
    PATIENT_ID,
    READ_CACHE_BYTES,
    StoreIdentity,
    StoreInfo,
    added_fields,
)
from smri.text import printable


def _compression_name(ds: h5py.Dataset) -> str | None:
    if ds.compression is None:
        return None
    if ds.compression == "gzip":
        return f"gzip-{ds.compression_opts}"
    return str(ds.compression)


def _open_h5(path: Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such store")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an .h5 store written by `smri preprocess`")
    check_regular(path)
    try:
        f = h5py.File(path, "r", rdcc_nbytes=READ_CACHE_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({h5_reason(exc)})") from None
    try:
        probe(path, f.id.get_vfd_handle())
    except BaseException:
        f.close()
        raise
    return f


def _info_from_file(f: h5py.File, path: Path, attrs: dict[str, Any]) -> StoreInfo:
    images = f[IMAGES]
    labels = f[LABELS][:]
    v2 = attrs["schema_version"] >= 2
    classes = attrs["classes"]
    counts = {name: int(np.sum(labels == value)) for name, value in classes.items()}
    unlabelled = int(np.sum(labels < 0))
    if unlabelled:
        counts["unlabelled"] = unlabelled
    return StoreInfo(
        path=path,
        n_patients=int(images.shape[0]),
        modalities=attrs["modalities"],
        slices=attrs["slices"],
        volume_shape=tuple(int(s) for s in images.shape[1:]),
        dtype=str(images.dtype),
        compression=_compression_name(images),
        classes=classes,
        config=attrs["config"],
        skipped=attrs["skipped"],
        schema_version=attrs["schema_version"],
        smri_version=attrs["smri_version"],
        created=attrs["created"],
        axis_order=attrs["axis_order"],
        class_counts=counts,
        file_bytes=path.stat().st_size,
        coverage=coverage(_ids(f), *(f[META][k][:] for k in NO_MASK)) if v2 else None,
        orientations=orientation_counts(f[META]["axis_codes"][:]) if v2 else {},
        identity=identity_of(f),
    )


def _text(value: bytes | str) -> str:
    """A string the store holds, made printable (`smri.text.printable`): ids and meta/
    strings are data someone wrote, and reach messages and the terminal."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    return printable(text)


def _ids(f: h5py.File) -> list[str]:
    """The patient ids, as printable text (preprocessing writes no control character in one,
    so an id smri wrote comes back unchanged)."""
    return [_text(s) for s in f[PATIENT_ID][:]]


def identity_of(f: h5py.File) -> StoreIdentity:
    """Which file `f` is, as the kernel knows it: a store replaced by `--append` or
    `--overwrite` (renamed into place) is another inode; one rewritten in place has another
    size or modification time."""
    try:
        st = os.fstat(f.id.get_vfd_handle())
    except (OSError, ValueError, TypeError):  # a driver without a file descriptor
        st = os.stat(f.filename)
    return StoreIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


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
    codes = [_text(c) for c in codes]
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


@dataclass(frozen=True)
class Placement:
    """Where one patient's stored images lie in its scan (`StoreReader.placement`)."""

    affine: np.ndarray  # (4, 4): voxel index (slice, y, x) of the images -> scanner mm
    known: bool  # False: the store does not record it (the affine is the spacing alone)
    slab_start: int  # first slice of the slab in the scan's third axis; -1 when unknown
    original_shape: tuple[int, ...]  # the scan's shape (NIfTI x, y, z)


def _usable(affine: np.ndarray) -> bool:
    """A finite affine whose 3x3 part can be inverted (a file's values are not trusted)."""
    return bool(np.isfinite(affine).all()) and abs(np.linalg.det(affine[:3, :3])) > 1e-12


def read_info(path: Path) -> StoreInfo:
    """Validate the store at `path` and return its description (the file is closed again)."""
    with StoreReader(path) as reader:
        return reader.info


class StoreReader:
    """Read-only access to a validated store. Open one per process (never across a fork)."""

    def __init__(self, path: Path, expect: StoreIdentity | None = None):
        self.path = Path(path)
        self._file = _open_h5(self.path)
        try:
            attrs = check_layout(self._file, self.path)
            self.info = _info_from_file(self._file, self.path, attrs)
            if expect is not None and self.info.identity != expect:
                raise StoreChanged(
                    f"{self.path}: the store was replaced after this command planned on it (by "
                    "`smri preprocess --append` or `--overwrite`?): its rows may hold other "
                    "patients now, so nothing more is read; run the command again"
                )
            labels = self._file[LABELS][:]  # checked as stored: int8 would wrap 257 to 1
            self.patient_ids: list[str] = _ids(self._file)
            check_contents(self.info, labels, self.patient_ids, self._file.get(META))
            self.labels: np.ndarray = labels.astype(np.int8)
            self._images = self._file[IMAGES]
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            self._file.close()
            raise DataError(f"{self.path}: damaged smri store ({exc})") from None
        except (OSError, RuntimeError) as exc:  # HDF5's own: a damaged heap, header or B-tree
            self._file.close()
            raise DataError(
                f"{self.path}: damaged smri store ({h5_reason(exc)}); make it again with "
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
                f"{self.path}: cannot read {who}: {h5_reason(exc)}; the store is damaged: make "
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

    def read(self, i: int, out: np.ndarray | None = None, *, check: bool = True) -> np.ndarray:
        """One patient's volumes, ``(M, S, H, W)`` in the store's dtype (into `out` when given).

        DataError naming the patient when a value is NaN, Inf or outside [0, 1], the range
        every stored volume is normalised to (`check=False`: as stored, to say what is wrong).
        """
        with self._reading([i]):
            if out is None:
                out = self._images[i]
            else:
                self._images.read_direct(out, np.s_[i])
        if check:
            self._check_values(out[None], [i])
        return out

    def read_many(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Several patients, ``(K, M, S, H, W)``, in the order given (into `out` when given);
        their values checked as `read` checks them (one integer max over the batch)."""
        if out is None:
            out = np.empty((len(indices), *self.info.volume_shape), dtype=self._images.dtype)
        for k, i in enumerate(indices):
            with self._reading([i]):
                self._images.read_direct(out, np.s_[int(i)], np.s_[k])
        self._check_values(out[: len(indices)], indices)
        return out

    def _check_values(self, images: np.ndarray, rows: Sequence[int]) -> None:
        """DataError naming the first patient of `images` ``(K, M, S, H, W)`` (store `rows`)
        whose values break the store's promise (finite, in [0, 1]): a damaged store, or one
        not made by smri (HDF5 external storage in another file had been read as voxels)."""
        if within_promise(images):
            return
        for k, row in enumerate(rows):
            found = value_problem(images[k])
            if found is None:
                continue
            pid = self.patient_ids[int(row)]
            count, seen = found
            raise DataError(
                nonfinite_message(self.path, pid, count) if count
                else range_message(self.path, pid, seen)
            )  # fmt: skip

    def meta(self, i: int) -> dict[str, Any]:
        """Per-patient metadata (original shape, spacing in the images' axis order (slice, y,
        x) whatever the version, min/max, source files; v2: has_mask, tumour voxel counts, axis
        codes; v3: affine and slab_start)."""
        group = self._file[META]
        out: dict[str, Any] = {}
        for name in (*META_FIELDS, *added_fields(self.version)):
            value = group[name][i]
            if name in ("source_files", "axis_codes"):
                out[name] = [_text(v) for v in value]
            else:
                out[name] = value.tolist()
        if self.version < 3:  # stored in NIfTI order (x, y, z) before version 3
            out["spacing"] = [row[::-1] for row in out["spacing"]]
        return out

    def placement(self, i: int) -> Placement:
        """Where patient `i`'s images lie in its scan: the affine of the images' voxel
        indices (slice, y, x) to scanner millimetres, with the slab's start and the scan's
        shape (of the first modality, which the MetaTensor of a sample carries; BraTS
        modalities are co-registered). For a row without a usable one (a store before
        version 3, a non-finite or singular affine) the affine is the spacing alone and
        `known` is False."""
        group = self._file[META]
        spacing = np.asarray(self.meta(i)["spacing"][0], dtype=np.float64)
        shape = tuple(int(v) for v in group["original_shape"][i][0])
        if self.version >= 3:
            affine = np.asarray(group["affine"][i][0], dtype=np.float64)
            start = int(group["slab_start"][i][0])
            if _usable(affine) and start >= 0:
                return Placement(affine, True, start, shape)
        return Placement(np.diag([*spacing, 1.0]), False, -1, shape)

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
