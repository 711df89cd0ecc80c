"""The direct writer: image chunks written with O_DIRECT (`DirectChunks`) where the store and
the file system allow it, masks compressed by the workers (`MaskChunk`); the single writer thread
then does no per-byte work. The preprocessing worker calls `empty_images` and `encode_mask`, and
so fills and encodes what the writer stores without knowing how it is written.
"""

from __future__ import annotations

import errno
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import h5py
import numpy as np
from isal import isal_zlib

# False: images and masks go through h5py (and the page cache). A module attribute, so the
# benchmark can measure the plain write in its place.
DIRECT_WRITES = True
PAGE_BYTES = 4096
# The writer goes back to page-cache writes when waiting for O_DIRECT writes takes more than
# this share of its time (checked from the DIRECT_PROBE_ROWS-th row written on): the disk, not
# the CPU, is then the limit, and the page cache (RAM) absorbs what the disk cannot yet take.
DIRECT_SHARE_MAX = 0.5
DIRECT_PROBE_ROWS = 8


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


StoredMask: TypeAlias = "np.ndarray | MaskChunk"  # a mask as `encode_mask` gives it


def empty_images(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised images row ``(M, S, H, W)`` for a worker to fill: the writer stores each
    of its volumes from there as it is, without copying it first (page-aligned for O_DIRECT)."""
    return aligned_empty(shape, dtype)


def encode_mask(mask: np.ndarray) -> StoredMask:
    """A mask ``(S, H, W)`` uint8 as the writer stores it: compressed now, by the worker, when
    the writer stores chunk bytes (DIRECT_WRITES); unchanged when h5py compresses it."""
    return MaskChunk.encode(mask) if DIRECT_WRITES else mask


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
    def file_options(chunk_bytes: int) -> dict[str, int]:
        """h5py.File options for placed chunks: each of `chunk_bytes` starts on a page."""
        return {"alignment_threshold": chunk_bytes, "alignment_interval": PAGE_BYTES}

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
