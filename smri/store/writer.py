"""Writing a store: `StoreWriter`, the single writer, to a hidden file renamed into place."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import smri.store.schema as schema  # schema.MASK_COMPRESSION, read at each creation
from smri.atomic import partial_path, publish
from smri.errors import DataError
from smri.store.direct import DirectChunks, MaskChunk, StoredMask
from smri.store.errors import check_room, create_h5, open_error
from smri.store.probe import probe
from smri.store.reader import StoreReader
from smri.store.schema import (
    AXIS_ORDER,
    COMPRESSIONS,
    DESCRIPTIONS,
    DIMENSIONS,
    DTYPES,
    FORMAT,
    IMAGES,
    LABELS,
    MASKS,
    META,
    META_FIELDS,
    PARTIAL_STATE,
    PATIENT_ID,
    SCHEMA_VERSION,
    added_fields,
)
from smri.version import __version__


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
        self._file = create_h5(
            self.tmp_path, **(DirectChunks.file_options(chunk_bytes) if placed else {})
        )
        self._direct: DirectChunks | None = None
        try:
            _write_attrs(self._file, modalities, s, classes, config)
            self._create_datasets(volume_shape, dtype, comp, placed)
            self._keep_rows()
            self._direct = DirectChunks.open(self.tmp_path, self.images)
        except BaseException:
            self.abort()
            raise

    def _create_datasets(
        self,
        volume_shape: tuple[int, int, int, int],
        dtype: str,
        comp: dict[str, Any],
        placed: bool,
    ) -> None:
        """The store's datasets, `n_patients` rows each; `placed`: image chunks allocated now,
        for `DirectChunks`. Resizable along patients: rows that preprocessing skips are trimmed
        at commit."""
        f, n = self._file, self.n_patients
        m, s, h, w = volume_shape
        self.images = f.create_dataset(
            IMAGES,
            shape=(n, m, s, h, w),
            maxshape=(None, m, s, h, w),
            dtype=dtype,
            chunks=(1, 1, s, h, w),
            dcpl=DirectChunks.creation_plist() if placed else None,
            **comp,
        )
        self.labels = f.create_dataset(
            LABELS, shape=(n,), maxshape=(None,), dtype="int8", fillvalue=-1
        )
        self.ids = f.create_dataset(
            PATIENT_ID, shape=(n,), maxshape=(None,), dtype=h5py.string_dtype("utf-8")
        )
        # Rows of patients without a segmentation are never written: they read as zeros
        # and take no space (HDF5 allocates a chunk only when it is written). The compression
        # is read here, at each creation, so a test can swap it.
        self.masks = f.create_dataset(
            MASKS, shape=(n, s, h, w), maxshape=(None, s, h, w), dtype="uint8",
            chunks=(1, s, h, w), fillvalue=0, **schema.MASK_COMPRESSION,
        )  # fmt: skip
        self.meta = _create_meta(f.create_group(META), n, m)
        self._datasets = [self.images, self.labels, self.ids, self.masks, *self.meta.values()]
        _describe(self._datasets)

    def write(
        self,
        i: int,
        *,
        images: np.ndarray,
        label: int,
        patient_id: str,
        meta: dict[str, Any] | None = None,
        mask: StoredMask | None = None,
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
        probe(self.tmp_path)  # a partial damaged so that libhdf5 loops: start over
        try:
            self._file = h5py.File(self.tmp_path, "r+")
        except OSError as exc:
            raise open_error(tmp_path, exc) from None
        try:
            f = self._file
            state = json.loads(f.attrs[PARTIAL_STATE])
            self.images, self.labels, self.ids = f[IMAGES], f[LABELS], f[PATIENT_ID]
            self.masks = f[MASKS]
            names = (*META_FIELDS, *added_fields(SCHEMA_VERSION))
            self.meta = {name: f[META][name] for name in names}
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


def _write_attrs(
    f: h5py.File,
    modalities: Sequence[str],
    slices: int,
    classes: dict[str, int],
    config: dict[str, Any],
) -> None:
    """A new store's root attributes (the schema's; `skipped` empty until the run sets it)."""
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["smri_version"] = __version__
    f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    f.attrs["modalities"] = json.dumps(list(modalities))
    f.attrs["slices"] = slices
    f.attrs["axis_order"] = AXIS_ORDER
    f.attrs["classes"] = json.dumps(classes)
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["skipped"] = "[]"


def _create_meta(meta: h5py.Group, n: int, m: int) -> dict[str, h5py.Dataset]:
    """The per-patient metadata datasets of `n` rows for `m` modalities; the fields added
    since version 1 filled with their value when unknown."""
    datasets = {
        name: meta.create_dataset(name, shape=(n, *shape(m)), maxshape=(None, *shape(m)), dtype=dt)
        for name, (dt, shape) in META_FIELDS.items()
    }
    for name, (dt, shape, unknown) in added_fields(SCHEMA_VERSION).items():
        datasets[name] = meta.create_dataset(
            name, shape=(n, *shape(m)), maxshape=(None, *shape(m)), dtype=dt,
            fillvalue=unknown if unknown != "" else None,
        )  # fmt: skip
    return datasets


def _describe(datasets: Sequence[h5py.Dataset]) -> None:
    """Label each dataset's dimensions and say what it holds (`schema.DIMENSIONS`)."""
    for ds in datasets:
        name = ds.name.rsplit("/", 1)[-1]
        for dim, label in zip(ds.dims, DIMENSIONS[name], strict=True):
            dim.label = label
        ds.attrs["description"] = DESCRIPTIONS[name]
