"""glibc's allocation policy for a process that handles volumes and activations of tens of MB,
and page-aligned buffers for writing them with O_DIRECT."""

from __future__ import annotations

import ctypes
import math
import os

import numpy as np

_kept = False


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Volumes and activations are tens of MB: glibc serves each from a fresh mmap and unmaps it
    when freed, so every training step and every decompressed volume pays page faults on
    first touch again (slow on VMs: measured here, 45 % less CPU time per CPU training step).
    Disabling mmap for large blocks and trimming the heap only past 1 GiB keeps the pages
    mapped. The price is peak memory: glibc before 2.38 cannot reuse a freed block of exactly
    the size of torch's next aligned (posix_memalign) request, so free blocks pile up to about
    1 GiB (CNN2 step, batch 8 of 4x32x64x64: 815 vs 1640 ms, peak RSS 3.2 vs 1.5 GB); batch-
    sized tensors are allocated through plain malloc instead (`smri.data.host_empty`).
    One arena for all threads: the per-thread arenas that preprocessing's
    worker threads would get are separate heaps that glibc does shrink, so each decompressed
    volume faulted its pages in again (measured: 2 threads 16.6 -> 19.3 patients/s). Set
    MALLOC_MMAP_MAX_ yourself to opt out; no-op off glibc. Idempotent: worker processes call it
    for every task.
    """
    global _kept
    if _kept or os.environ.get("MALLOC_MMAP_MAX_") is not None:
        return
    _kept = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap for large blocks
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the heap top
        libc.mallopt(-8, 1)  # M_ARENA_MAX: threads share the main heap, which is never trimmed
    except (OSError, AttributeError):
        pass


PAGE_BYTES = 4096


def aligned_empty(shape: tuple[int, ...], dtype: object, align: int = PAGE_BYTES) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on an `align`-byte boundary.

    For buffers written with O_DIRECT (`smri.store`), which needs page-aligned memory. Carved
    from a plain malloc'd block, so freed buffers are reused as `keep_freed_memory` arranges
    (an mmap per buffer would fault its pages in every time).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def is_aligned(a: np.ndarray, align: int = PAGE_BYTES) -> bool:
    """Whether `a`'s data starts on an `align`-byte boundary."""
    return a.ctypes.data % align == 0
