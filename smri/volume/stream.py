"""The streamed reader: a volume's header first, then its voxels in one pass through a small
buffer, keeping only the central slab (`SlabSource`). Anything it does not handle goes through
`smri.volume.nifti.load_volume`, so results and messages are the same either way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

import smri.volume.nifti as nifti  # nifti.GZIP, read at each call (swapped by the benchmark)
from smri.errors import DataError
from smri.files import FileState, changed_message, check_regular, file_state, special_kind
from smri.volume.nifti import (
    GZIP_MAGIC,
    MAX_HEADER_BYTES,
    TRAILING_MESSAGE,
    TRAILING_SLACK,
    Volume,
    axis_codes,
    float32_problem,
    header_from_bytes,
    is_scaled,
    load_volume,
    load_volumes,
    short_reason,
    skip_bytes,
)
from smri.volume.notes import nibabel_notes
from smri.volume.slab import cast_into, normalize_into, normalized_slab, slab_start


@dataclass(frozen=True)
class SlabSource:
    """One volume to preprocess: its shape and spacing (from the header), its voxels on demand.

    `open_volume` makes it. `normalized_slab_into` then reads the voxels once, in pieces of
    STREAM_CHUNK bytes: each piece's min and max are taken while it is in the CPU cache and
    only the central slab is kept. The whole volume is never in memory: no fresh 18 MB buffer
    per BraTS volume for the allocator to fault in (the measured gain is in
    benchmarks/RESULTS.md). Volumes the stream does not handle (reoriented, scaled, odd
    headers, multi-member gzip such as bgzip's, and every error) go through `load_volume`, so
    results and error messages are the same either way.
    """

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header | None = None  # streamed: the parsed header
    volume: Volume | None = None  # not streamed: the volume, loaded whole
    notes: tuple[str, ...] = ()  # what nibabel said of the header (and fixed), for a warning
    state: FileState | None = None  # streamed: the file the header was read from (`file_state`)

    @property
    def streamed(self) -> bool:
        return self.volume is None

    @property
    def affine(self) -> np.ndarray:
        """The volume's NIfTI affine (voxel (i, j, k) to scanner mm; after `canonical`, RAS's)."""
        return self.volume.affine if self.volume is not None else self.header.get_best_affine()

    @property
    def axis_codes(self) -> str:
        """The volume's NIfTI axis codes as stored (``"LPS"``; ``"RAS"`` after `canonical`).
        DataError naming the file when its affine gives none (singular, not finite)."""
        try:
            return axis_codes(self.affine)
        except (np.linalg.LinAlgError, ValueError) as exc:  # found by the fuzz test
            raise DataError(
                f"{self.path}: not a readable NIfTI volume (its affine has no orientation: "
                f"{short_reason(exc)})"
            ) from None

    def normalized_slab_into(self, slices: int, out: np.ndarray) -> tuple[float, float]:
        """Write the seed's normalised central ``(S, Y, X)`` slab into `out`; the volume's min, max.

        `out` may be float16 or float32 (float16 is rounded from the float32 result, as numpy
        rounds). DataError naming the file for anything unusable.
        """
        x, y, z = self.shape
        if out.shape != (slices, y, x) or z < slices:
            raise ValueError(f"cannot fit {slices} slices of a {self.shape} volume in {out.shape}")
        if self.volume is not None:
            return _slab_from(self.volume, slices, out)
        direct = out.dtype == np.float32 and out.flags.c_contiguous
        slab = out if direct else np.empty(out.shape, np.float32)
        try:
            lo, hi = _stream_slab(self.path, self.header, self.shape, slab.reshape(-1), self.state)
        except DataError:
            raise
        except Exception:  # truncated, corrupt, unreadable: load_volume says which
            return _slab_from(self._whole_again(), slices, out)
        is_float = self.header.get_data_dtype().kind == "f"
        if is_float and float32_problem(float(lo), float(hi)):
            return _slab_from(self._whole_again(), slices, out)  # it names the problem
        normalize_into(slab, slab, lo, hi)
        if slab is not out:
            cast_into(out, slab)
        return float(lo), float(hi)

    def _whole_again(self) -> Volume:
        """The volume read whole, to say what the stream could not use: from the same file
        as the header (DataError when the path now leads to another one, or it changed)."""
        try:
            now = file_state(self.path)
        except OSError:
            now = None
        if now != self.state:
            raise DataError(changed_message(self.path))
        return load_volume(self.path)


STREAM_CHUNK = 1 << 20  # bytes inflated at a time: fits the L2 cache of current x86 cores


def open_volume(path: Path, *, canonical: bool = False) -> SlabSource:
    """Read a NIfTI volume's header (only) for `SlabSource.normalized_slab_into`.

    DataError naming the file when it is unusable; anything `load_volume` accepts is accepted.
    """
    path = check_regular(Path(path))
    if not canonical:
        try:  # every reading of the header: nibabel raises for values it cannot interpret
            with nibabel_notes() as notes:  # load_volume below reads it again if unusable
                header, limit, state = _stream_header(path)
            shape = _streamable_shape(header)
            zooms = tuple(float(z) for z in header.get_zooms()[:3])
            if shape is not None and not _holds_voxels(header, shape, limit):
                shape = None  # a header promising more than the file holds: no big allocation
        except Exception:  # load_volume below names the problem
            shape = None
        if shape is not None:
            return SlabSource(path, shape, zooms, header=header, notes=tuple(notes), state=state)  # type: ignore[arg-type]
    vol = load_volume(path, canonical=canonical)
    return SlabSource(path, vol.data.shape, vol.spacing, volume=vol, notes=vol.notes)


def open_volumes(path: Path, *, canonical: bool = False) -> list[SlabSource]:
    """Every 3D volume of a NIfTI file (`load_volumes`), for `SlabSource.normalized_slab_into`:
    a 4D file (MSD's modalities on the fourth axis) is loaded whole, once, and gives one
    source per volume. 3D files go through `open_volume`, which streams them."""
    path = check_regular(Path(path))
    return [
        SlabSource(path, vol.data.shape, vol.spacing, volume=vol, notes=vol.notes)
        for vol in load_volumes(path, canonical=canonical)
    ]


def header_shape(path: Path, *, canonical: bool = False) -> tuple[int, ...] | None:
    """The data shape a NIfTI file's header declares (header only, nothing printed); with
    `canonical`, the shape after reorienting to RAS (its first three axes permuted as
    `nib.as_closest_canonical` permutes them). None when the file or its header is unusable
    (the loading reports why)."""
    try:
        if special_kind(path) is not None:
            return None
        with nibabel_notes():
            header, _, _ = _stream_header(Path(path))
        shape = tuple(int(n) for n in header.get_data_shape())
        if canonical and len(shape) >= 3:
            axes = nib.orientations.io_orientation(header.get_best_affine())[:, 0]
            permuted = list(shape)
            for axis, target in enumerate(axes[:3]):
                permuted[int(target)] = shape[axis]
            shape = tuple(permuted)
        return shape
    except Exception:
        return None


def _slab_from(vol: Volume, slices: int, out: np.ndarray) -> tuple[float, float]:
    tmp = out if out.dtype == np.float32 else None
    slab, lo, hi = normalized_slab(vol.data, slices, out=tmp)
    if slab is not out:
        cast_into(out, slab)
    return lo, hi


def _streamable_shape(header: nib.Nifti1Header) -> tuple[int, int, int] | None:
    """The 3D shape of an unscaled integer/float volume the stream handles; None otherwise."""
    shape = tuple(int(n) for n in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    dtype = header.get_data_dtype()
    if len(shape) != 3 or min(shape) < 1 or dtype.kind not in "iuf" or is_scaled(header):
        return None
    return shape  # type: ignore[return-value]


def _holds_voxels(header: nib.Nifti1Header, shape: tuple[int, int, int], limit: int) -> bool:
    """Whether a stream of `limit` bytes (see `_open_stream`) holds the voxels the header
    declares: checked before the caller allocates for them."""
    needed = int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize
    return needed <= limit


@contextmanager
def _unchanged(path: Path, raw: BinaryIO, state: FileState | None) -> Iterator[None]:
    """DataError (`changed_message`) when the open file `raw` is not the version `state`
    saw, or becomes another while the block reads it; also when the block fails for it."""
    if state is not None and file_state(raw.fileno()) != state:
        raise DataError(changed_message(path))
    try:
        yield
    finally:
        if state is not None and file_state(raw.fileno()) != state:
            raise DataError(changed_message(path)) from None


@contextmanager
def _open_stream(path: Path) -> Iterator[tuple[BinaryIO, int, BinaryIO]]:
    """The file's uncompressed bytes as a stream (gzip-compressed or not), their number as
    far as the file tells it cheaply (its size, or for gzip the size in its trailer, ISIZE:
    modulo 4 GiB, of the last member only, so a file with more members shows less), and the
    file itself (for `file_state`). The file is opened once: every byte comes from it."""
    with open(check_regular(path), "rb") as raw:
        if raw.read(2) != GZIP_MAGIC:
            raw.seek(0)
            yield raw, os.fstat(raw.fileno()).st_size, raw
            return
        raw.seek(-4, os.SEEK_END)
        isize = int.from_bytes(raw.read(4), "little")
        raw.seek(0)
        with nifti.GZIP.open(raw, "rb") as f:
            yield f, isize, raw


def _stream_header(path: Path) -> tuple[nib.Nifti1Header, int, FileState]:
    """The NIfTI header (and extensions) from the start of the file, without its voxels, the
    stream's length as `_open_stream` gives it, and the file's `file_state`."""
    with _open_stream(path) as (f, limit, raw):
        state = file_state(raw.fileno())
        head = f.read(544)  # NIfTI-2's 540 bytes + the extension flag; NIfTI-1 needs 352
        try:
            return header_from_bytes(head), limit, state
        except Exception:  # extensions that run past `head`: read up to the voxels, try again
            fixed = header_from_bytes(head, extensions=False)
            offset = int(fixed.get_data_offset())
            if not len(head) < offset <= MAX_HEADER_BYTES:
                raise
            return header_from_bytes(head + f.read(offset - len(head))), limit, state


def _stream_slab(
    path: Path,
    header: nib.Nifti1Header,
    shape: tuple[int, int, int],
    slab: np.ndarray,
    state: FileState | None = None,
) -> tuple[np.generic, np.generic]:
    """One pass over the voxels: their min and max; the central slab into `slab` as float32.

    `slab` is flat float32, as long as the slab: slices ``start..start+S`` of the
    Fortran-ordered volume are one contiguous run of voxels, which read as C order is
    ``(S, Y, X)``. Each piece is cast while it is in cache (the seed's astype(float32)). The
    stream is read to its end, so gzip's checksum is verified. ValueError when the file holds
    fewer voxels than its header says. DataError when the file is not the one whose header
    was read (`state`), or changes while it is read: a header of one version is never used
    with the voxels of another.
    """
    x, y, z = shape
    dtype = header.get_data_dtype()
    size = dtype.itemsize
    count = x * y * z
    s0 = slab_start(z, slab.size // (x * y)) * x * y
    s1 = s0 + slab.size
    step = max(STREAM_CHUNK // size, 1)  # voxels per piece
    lo = hi = None
    done = 0  # voxels read
    with _open_stream(path) as (f, _, raw), _unchanged(path, raw, state):
        skip = int(header.get_data_offset())
        if skip < 0:
            raise ValueError(f"negative voxel offset {skip}")
        if skip_bytes(f, skip) < skip:  # the header and extensions, already parsed
            raise ValueError("the file ends inside its header")
        while done < count:
            data = f.read(min(step, count - done) * size)  # fewer bytes only at the end
            take = len(data) // size
            if not take:
                break
            piece = np.frombuffer(data, dtype=dtype, count=take)
            p_lo, p_hi = piece.min(), piece.max()
            lo = p_lo if lo is None else np.minimum(lo, p_lo)  # NaN stays NaN
            hi = p_hi if hi is None else np.maximum(hi, p_hi)
            a, b = max(done, s0), min(done + take, s1)
            if a < b:  # values beyond float32 become Inf: refused after the pass, unwarned
                with np.errstate(over="ignore"):
                    slab[a - s0 : b - s0] = piece[a - done : b - done]
            done += take
        # what follows the voxels: a little is ignored, more refused
        if done == count and skip_bytes(f, TRAILING_SLACK + 1) > TRAILING_SLACK:
            raise DataError(f"{path}: {TRAILING_MESSAGE}")
    if done < count:
        raise ValueError(f"expected {count} voxels after the header, the file holds {done}")
    return lo, hi
