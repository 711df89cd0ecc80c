"""Loading one NIfTI volume and the seed's volume operations (min–max, central slab).

Array functions here are pure: arrays in, arrays out, shapes in the docstrings. The seed's
method, which the tests check against a direct numpy computation::

    v = vol.astype(np.float32)
    v = (v - v.min()) / (v.max() - v.min() + 1e-8)
    start = (D - S) // 2
    out = v[:, :, start:start + S].T          # (S, H, W) = NIfTI axes (k, j, i)

`normalized_slab` gives the same bits while doing the float maths on the slab only (min and
max are taken on the raw array: rounding to float32 is monotonic, so they agree).
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import igzip

from smri.errors import DataError, plural
from smri.files import check_regular, special_kind

# Intel ISA-L's gzip (the standard library's interface): inflating is most of preprocessing,
# and ISA-L does it about 1.7x faster than zlib (benchmarks/RESULTS.md). A module attribute,
# so the benchmark can measure the standard library's `gzip` in its place.
GZIP = igzip

EPS = 1e-8
FLOAT32_MAX = float(np.finfo(np.float32).max)
GZIP_MAGIC = b"\x1f\x8b"
CAST_CHUNK = 32768  # elements per float16 conversion: torch runs a copy this small inline


@dataclass(frozen=True)
class Volume:
    """One 3D volume as stored in its file (native dtype, NIfTI (i, j, k) axis order)."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    notes: tuple[str, ...] = ()  # what nibabel said of the header (and fixed), for a warning


def read_nifti_bytes(path: Path) -> bytes:
    """The uncompressed NIfTI bytes of `path` (`.nii` or gzip-compressed `.nii.gz`) that its
    header accounts for: header, extensions and the voxels it declares.

    No more is inflated than that (a small file can inflate to gigabytes), plus TRAILING_SLACK
    to see where the data end: DataError when more follows, or when the header declares more
    voxels than MAX_WHOLE_VOXELS (this path holds the volume whole; the streamed one does not).
    OSError when the file cannot be read.
    """
    path = check_regular(Path(path))
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    try:
        with (GZIP.open if compressed else open)(path, "rb") as f:
            head = f.read(544)  # NIfTI-2's header + extension flag; NIfTI-1 needs 352
            need = _declared_bytes(head)
            if need is None:  # not a header smri reads: enough for the parser to say why
                return head + f.read(MAX_HEADER_BYTES)
            offset, count, size = need
            if count > MAX_WHOLE_VOXELS:  # read (and drop) no more than the limit allows
                held = _skip(f, offset - len(head) + MAX_WHOLE_VOXELS * size + 1)
                held_voxel_bytes = max(held + len(head) - offset, 0)
                if held_voxel_bytes <= MAX_WHOLE_VOXELS * size:  # a short file: as ever
                    raise ValueError(
                        f"expected {count * size} bytes of voxel data after the header, the "
                        f"file holds {held_voxel_bytes}"
                    )
                raise DataError(
                    f"{path}: its header declares {count:,} voxels, more than smri loads whole "
                    f"({MAX_WHOLE_VOXELS:,}: scaled or reoriented volumes, `smri show`)"
                )
            f.seek(0)  # read again from the start, into one buffer: the volume is held once
            raw = f.read(offset + count * size)
            if len(raw) == offset + count * size and _skip(f, TRAILING_SLACK + 1) > (
                TRAILING_SLACK
            ):
                raise DataError(f"{path}: {TRAILING_MESSAGE}")
            return raw
    except ValueError as exc:  # a header that declares more than the file holds
        raise DataError(f"{path}: not a readable NIfTI volume ({_reason(exc)})") from None
    except (OSError, EOFError, zlib.error) as exc:
        if not compressed:
            raise
        raise DataError(f"{path}: corrupt gzip stream ({_reason(exc)})") from None


# Volumes read whole (scaled, reoriented, `smri show`): at most 512^3 voxels (BraTS: 240x240x155)
MAX_WHOLE_VOXELS = 2**27
TRAILING_SLACK = 1 << 20  # bytes after the declared voxels that are ignored; more is refused
TRAILING_MESSAGE = (
    "more data follow the voxels its header declares (over 1 MiB more); not a NIfTI volume "
    "smri reads (a damaged file, or one made to inflate without end)"
)


def _declared_bytes(head: bytes) -> tuple[int, int, int] | None:
    """(voxel offset, voxel count, bytes per voxel) of a header's fixed part; None when it
    cannot say (not a NIfTI header, an unknown data type: the full parser names the problem)."""
    try:
        header = _header_from_bytes(head, extensions=False)
        offset = int(header.get_data_offset())
        count = math.prod(int(n) for n in header.get_data_shape())
        size = header.get_data_dtype().itemsize
    except Exception:
        return None
    if offset < 0 or count < 0 or offset > MAX_HEADER_BYTES:
        return None
    return max(offset, len(head)), count, size


def _skip(f: BinaryIO, n: int) -> int:
    """Read and drop up to `n` bytes of `f`, a small buffer at a time; how many there were."""
    total = 0
    while total < n:
        want = min(1 << 16, n - total)
        got = len(f.read(want))
        total += got
        if got < want:
            break
    return total


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def load_volume(path: Path, *, canonical: bool = False) -> Volume:
    """Load one 3D NIfTI volume; DataError naming the file for anything unusable.

    Trailing singleton dimensions (``(X, Y, Z, 1)``) are dropped; anything else that is not
    3D, or that holds NaN/Inf, is an error. With `canonical`, the volume is first reoriented to
    the closest canonical (RAS+) orientation.
    """
    path = Path(path)
    with nibabel_notes() as notes:
        return _load_volume(path, canonical, notes)


def _load_volume(path: Path, canonical: bool, notes: list[str]) -> Volume:
    try:
        raw = read_nifti_bytes(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or _reason(exc)})") from None
    if len(raw) == 0:
        raise DataError(f"{path}: empty file (0 bytes), expected a NIfTI volume")
    try:
        header = _header_from_bytes(raw)
        if canonical or _scaled(header):  # nibabel's image: reorientation, scaled voxel values
            img = _image_class(header).from_bytes(raw)
            if canonical:
                img = nib.as_closest_canonical(img)
            header, data = img.header, np.asanyarray(img.dataobj)
            affine = img.affine
        else:
            data, affine = _voxels(header, raw), header.get_best_affine()
    except Exception as exc:  # nibabel raises many types for malformed headers and data
        reason = _reason(exc)  # nibabel logs its refusal too: said once, here
        extra = [n for n in notes if n not in reason and reason not in n][:1]
        raise DataError(
            f"{path}: not a readable NIfTI volume ({'; '.join([reason, *extra])})"
        ) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got {data.ndim}D with shape {data.shape}")
    if data.size == 0:  # a header dim of 0 reads as an empty array, which min-max cannot use
        raise DataError(f"{path}: empty volume (shape {data.shape}); its header has a 0 dimension")
    if data.dtype.kind not in "iuf":
        raise DataError(f"{path}: unsupported voxel type {data.dtype}, expected integers or floats")
    if data.dtype.kind == "f":
        lo, hi = float(data.min()), float(data.max())  # NaN and ±Inf show up here
        if not (np.isfinite(lo) and np.isfinite(hi)):
            n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise DataError(
                f"{path}: {plural(n_bad, 'voxel')} {'is' if n_bad == 1 else 'are'} NaN or Inf"
            )
        if hi - lo > FLOAT32_MAX:  # min–max runs in float32: the range would overflow to NaN
            raise DataError(
                f"{path}: intensities span {lo:g} to {hi:g}, wider than float32 "
                f"(±{FLOAT32_MAX:.3g}) in which they are normalised"
            )
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    return Volume(data=data, spacing=zooms, affine=np.asarray(affine), notes=tuple(notes))


def _header_from_bytes(raw: bytes, *, extensions: bool = True) -> nib.Nifti1Header:
    """The file's NIfTI-1 or NIfTI-2 header, checked as nibabel checks it when loading.

    Parsed once, without building an image (a third of a millisecond saved per volume). Without
    `extensions`, only the fixed-size part is read (unchecked): enough for the voxel offset.
    """
    if len(raw) < 348:
        raise ValueError(f"too short for a NIfTI header: {len(raw)} bytes, need at least 348")
    header_size = int.from_bytes(raw[:4], "little")
    if header_size not in (348, 540):
        header_size = int.from_bytes(raw[:4], "big")
    if header_size not in (348, 540):
        raise ValueError("no NIfTI header: sizeof_hdr is neither 348 nor 540")
    klass = nib.Nifti2Header if header_size == 540 else nib.Nifti1Header
    if not extensions:
        return klass(raw[:header_size], check=False)
    header = klass.from_fileobj(io.BytesIO(raw), check=False)
    header.check_fix(logger=_NIBABEL_LOG, error_level=40)  # as nibabel's check=True, but logged
    magic, offset = bytes(header["magic"]), int(header.get_data_offset())  # to smri's notes
    if magic.rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise ValueError(
            f"magic {magic!r} is not that of a single-file NIfTI (n+1 or n+2): its voxels are "
            "in another file"
        )
    if offset < header_size + 4:
        raise ValueError(
            f"voxel offset {offset} is inside the header: a single-file NIfTI's voxels start at "
            f"byte {header_size + 4} or later, else its header is read as voxels"
        )
    return header


# --- nibabel's header-check log lines -------------------------------------------------------
# nibabel logs what it finds wrong in a header (and raises the same text when it cannot go on);
# printed by its own handler they would stand beside smri's one-line message, once per reading.
# While smri reads a file they are collected instead: folded into the error, or a warning.
_NIBABEL_LOG = logging.getLogger("nibabel.global")
_NOTES = threading.local()


class _Collect(logging.Filter):
    """Divert nibabel's records to the notes of the reading in progress on this thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        notes = getattr(_NOTES, "notes", None)
        if notes is None:
            return True
        if record.levelno >= logging.WARNING and record.getMessage() not in notes:
            notes.append(record.getMessage())
        return False


_NIBABEL_LOG.addFilter(_Collect())
_show_warning = warnings.showwarning


def _divert_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """nibabel's warnings (an odd extension size, ...) go to the notes of the reading in
    progress on this thread, like its log lines; any other warning is shown as before."""
    notes = getattr(_NOTES, "notes", None)
    if notes is not None and "nibabel" in str(filename):
        if str(message) not in notes:
            notes.append(str(message))
        return
    _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _divert_warning


@contextmanager
def nibabel_notes() -> Iterator[list[str]]:
    """Collect (not print) what nibabel logs on this thread while the block runs."""
    outer = getattr(_NOTES, "notes", None)
    notes: list[str] = [] if outer is None else outer
    _NOTES.notes = notes
    try:
        yield notes
    finally:
        _NOTES.notes = outer


def _image_class(header: nib.Nifti1Header) -> type[nib.Nifti1Image]:
    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image


def _scaled(header: nib.Nifti1Header) -> bool:
    """Whether the header scales stored values (scl_slope/scl_inter other than 1 and 0)."""
    slope, inter = header.get_slope_inter()
    return slope not in (None, 1.0) or inter not in (None, 0.0)


def _voxels(header: nib.Nifti1Header, raw: bytes) -> np.ndarray:
    """The unscaled voxel array: a view of `raw` with nibabel's dtype, shape and Fortran order.

    Checks first that `raw` holds all the voxels the header declares: nibabel's array proxy
    would allocate that much before finding out (72 GB for a forged 30000 x 30000 x 40 header).
    """
    shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize > len(raw):
        raise ValueError(
            f"expected {count * dtype.itemsize} bytes of voxel data after the "
            f"header, the file holds {max(len(raw) - offset, 0)}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")


def axis_codes(affine: np.ndarray) -> str:
    """Where each array axis points, as NIfTI axis codes: ``"RAS"``, ``"LPS"``, ...

    Two volumes whose codes differ are stored flipped (or transposed) against each other.
    """
    affine = np.asarray(affine, dtype=np.float64)
    return _axis_codes(affine.shape, affine.tobytes())


@functools.lru_cache(maxsize=256)
def _axis_codes(shape: tuple[int, ...], affine: bytes) -> str:
    # Worked out once per distinct affine: a patient's volumes share one, and nibabel's SVD
    # takes about 76 us with the GIL held, which the other preprocessing workers wait for.
    codes = nib.aff2axcodes(np.frombuffer(affine, dtype=np.float64).reshape(shape))
    return "".join(str(c) for c in codes)


def label_slab(seg: np.ndarray, slices: int) -> tuple[np.ndarray, int, int]:
    """A segmentation's central slab as stored beside the images, and its tumour voxel counts.

    `seg` is ``(X, Y, Z)`` labels (any integer or float type holding whole numbers 0..255).
    Returns the ``(S, Y, X)`` uint8 slab (`central_slab`'s crop and axis order, labels
    unchanged) and the voxels with label > 0 in the whole volume and in the slab. ValueError
    naming the values when a label is not a whole number in 0..255.
    """
    slab = central_slab(seg, slices)
    if seg.dtype != np.uint8:
        bad = (slab < 0) | (slab > 255) | (slab != np.round(slab))
        if bad.any():
            raise ValueError(
                f"labels must be whole numbers 0..255; found {float(slab[bad].ravel()[0]):g} "
                "in the slab"
            )
    total = np.count_nonzero(seg) if seg.dtype.kind == "u" else np.count_nonzero(seg > 0)
    out = np.ascontiguousarray(slab, dtype=np.uint8)
    return out, int(total), int(np.count_nonzero(out))


def slab_start(depth: int, slices: int) -> int:
    """First slice of the central `slices`-slice slab of a depth-`depth` axis (the seed's rule)."""
    return (depth - slices) // 2


def minmax_normalize(x: np.ndarray) -> np.ndarray:
    """Min–max to [0, 1] over the whole array, in float32: ``(x - min) / (max - min + 1e-8)``."""
    v = np.asarray(x, dtype=np.float32)
    return (v - v.min()) / (v.max() - v.min() + EPS)


def central_slab(vol: np.ndarray, slices: int) -> np.ndarray:
    """The central `slices` slices of the third axis, transposed: ``(X, Y, Z) -> (S, Y, X)``."""
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    depth = vol.shape[2]
    if depth < slices:
        raise ValueError(f"volume has {depth} slices, fewer than the {slices} asked for")
    start = slab_start(depth, slices)
    return vol[:, :, start : start + slices].T


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` with numpy's rounding (to nearest, ties to even).

    float32 -> float16, the store's default, goes through torch's vectorised conversion:
    bit-identical to numpy's (tested) and many times faster than numpy's scalar loop (gain in
    benchmarks/RESULTS.md). It runs in pieces of CAST_CHUNK elements, each below torch's
    parallel grain (32768), so it stays on the calling thread: a whole-slab copy wakes torch's
    OpenMP pool, whose threads then spin on the cores the other preprocessing workers need.
    """
    if (
        dst.dtype == np.float16
        and src.dtype == np.float32
        and dst.shape == src.shape
        and dst.flags.c_contiguous
        and src.flags.c_contiguous
    ):
        import torch  # only float16 stores need it; imported once, on first use

        pieces = zip(
            torch.from_numpy(dst.reshape(-1)).split(CAST_CHUNK),
            torch.from_numpy(src.reshape(-1)).split(CAST_CHUNK),
            strict=True,
        )
        for d, s in pieces:
            d.copy_(s)
    else:
        dst[...] = src


def normalized_slab(
    vol: np.ndarray, slices: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """`central_slab(minmax_normalize(vol), slices)` bit for bit, with float maths on the slab only.

    Returns the ``(S, Y, X)`` float32 slab (written into `out` when given) and the min and max
    of the whole volume.
    """
    lo, hi = vol.min(), vol.max()
    slab = central_slab(vol, slices)
    if out is None:
        out = np.empty(slab.shape, dtype=np.float32)
    normalize_into(out, slab, lo, hi)
    return out, float(lo), float(hi)


def normalize_into(out: np.ndarray, x: np.ndarray, lo: object, hi: object) -> None:
    """``out = (float32(x) - float32(lo)) / (float32(hi) - float32(lo) + 1e-8)`` in float32.

    The seed's min-max with the volume's `lo` and `hi` (taken on the raw values: rounding to
    float32 is monotonic, so they agree with the seed's min and max of the float32 volume).
    `out` is float32 with `x`'s shape.
    """
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if x is not out:
        out[...] = x  # the seed's astype(float32); a plain cast, 3x faster than a casting ufunc
    np.subtract(out, lo32, out=out)
    np.divide(out, hi32 - lo32 + np.float32(EPS), out=out)


# --- Streaming: header first, then the voxels in one pass through a small buffer -----------


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

    @property
    def streamed(self) -> bool:
        return self.volume is None

    @property
    def axis_codes(self) -> str:
        """The volume's NIfTI axis codes as stored (``"LPS"``; ``"RAS"`` after `canonical`).
        DataError naming the file when its affine gives none (singular, not finite)."""
        affine = self.volume.affine if self.volume is not None else self.header.get_best_affine()
        try:
            return axis_codes(affine)
        except (np.linalg.LinAlgError, ValueError) as exc:  # found by the fuzz test
            raise DataError(
                f"{self.path}: not a readable NIfTI volume (its affine has no orientation: "
                f"{_reason(exc)})"
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
            lo, hi = _stream_slab(self.path, self.header, self.shape, slab.reshape(-1))
        except DataError:
            raise
        except Exception:  # truncated, corrupt, unreadable: load_volume says which
            return _slab_from(load_volume(self.path), slices, out)
        is_float = self.header.get_data_dtype().kind == "f"
        if is_float and not _usable_float_range(float(lo), float(hi)):
            return _slab_from(load_volume(self.path), slices, out)  # it names the problem
        normalize_into(slab, slab, lo, hi)
        if slab is not out:
            cast_into(out, slab)
        return float(lo), float(hi)


STREAM_CHUNK = 1 << 20  # bytes inflated at a time: fits the L2 cache of current x86 cores
MAX_HEADER_BYTES = 1 << 24  # header + extensions larger than this are read by load_volume


def open_volume(path: Path, *, canonical: bool = False) -> SlabSource:
    """Read a NIfTI volume's header (only) for `SlabSource.normalized_slab_into`.

    DataError naming the file when it is unusable; anything `load_volume` accepts is accepted.
    """
    path = check_regular(Path(path))
    if not canonical:
        try:  # every reading of the header: nibabel raises for values it cannot interpret
            with nibabel_notes() as notes:  # load_volume below reads it again if unusable
                header, limit = _stream_header(path)
            shape = _streamable_shape(header)
            zooms = tuple(float(z) for z in header.get_zooms()[:3])
            if shape is not None and not _holds_voxels(header, shape, limit):
                shape = None  # a header promising more than the file holds: no big allocation
        except Exception:  # load_volume below names the problem
            shape = None
        if shape is not None:
            return SlabSource(path, shape, zooms, header=header, notes=tuple(notes))  # type: ignore[arg-type]
    vol = load_volume(path, canonical=canonical)
    return SlabSource(path, vol.data.shape, vol.spacing, volume=vol, notes=vol.notes)


def header_shape(path: Path) -> tuple[int, ...] | None:
    """The data shape a NIfTI file's header declares (header only, nothing printed); None when
    the file or its header is unusable (the loading reports why)."""
    try:
        if special_kind(path) is not None:
            return None
        with nibabel_notes():
            header, _ = _stream_header(Path(path))
        return tuple(int(n) for n in header.get_data_shape())
    except Exception:
        return None


def _slab_from(vol: Volume, slices: int, out: np.ndarray) -> tuple[float, float]:
    tmp = out if out.dtype == np.float32 else None
    slab, lo, hi = normalized_slab(vol.data, slices, out=tmp)
    if slab is not out:
        cast_into(out, slab)
    return lo, hi


def _usable_float_range(lo: float, hi: float) -> bool:
    return bool(np.isfinite(lo) and np.isfinite(hi) and hi - lo <= FLOAT32_MAX)


def _streamable_shape(header: nib.Nifti1Header) -> tuple[int, int, int] | None:
    """The 3D shape of an unscaled integer/float volume the stream handles; None otherwise."""
    shape = tuple(int(n) for n in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    dtype = header.get_data_dtype()
    if len(shape) != 3 or min(shape) < 1 or dtype.kind not in "iuf" or _scaled(header):
        return None
    return shape  # type: ignore[return-value]


def _holds_voxels(header: nib.Nifti1Header, shape: tuple[int, int, int], limit: int) -> bool:
    """Whether a stream of `limit` bytes (see `_open_stream`) holds the voxels the header
    declares: checked before the caller allocates for them."""
    needed = int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize
    return needed <= limit


def _open_stream(path: Path) -> tuple[BinaryIO, int]:
    """The file's uncompressed bytes as a stream (gzip-compressed or not), and their number as
    far as the file tells it cheaply: its size, or for gzip the size in its trailer (ISIZE:
    modulo 4 GiB, of the last member only, so a file with more members shows less)."""
    with open(check_regular(path), "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return open(path, "rb"), os.fstat(f.fileno()).st_size
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    return GZIP.open(path, "rb"), isize


def _stream_header(path: Path) -> tuple[nib.Nifti1Header, int]:
    """The NIfTI header (and extensions) from the start of the file, without its voxels, and
    the stream's length as `_open_stream` gives it."""
    stream, limit = _open_stream(path)
    with stream as f:
        head = f.read(544)  # NIfTI-2's 540 bytes + the extension flag; NIfTI-1 needs 352
        try:
            return _header_from_bytes(head), limit
        except Exception:  # extensions that run past `head`: read up to the voxels, try again
            fixed = _header_from_bytes(head, extensions=False)
            offset = int(fixed.get_data_offset())
            if not len(head) < offset <= MAX_HEADER_BYTES:
                raise
            return _header_from_bytes(head + f.read(offset - len(head))), limit


def _stream_slab(
    path: Path, header: nib.Nifti1Header, shape: tuple[int, int, int], slab: np.ndarray
) -> tuple[np.generic, np.generic]:
    """One pass over the voxels: their min and max; the central slab into `slab` as float32.

    `slab` is flat float32, as long as the slab: slices ``start..start+S`` of the
    Fortran-ordered volume are one contiguous run of voxels, which read as C order is
    ``(S, Y, X)``. Each piece is cast while it is in cache (the seed's astype(float32)). The
    stream is read to its end, so gzip's checksum is verified. ValueError when the file holds
    fewer voxels than its header says.
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
    with _open_stream(path)[0] as f:
        skip = int(header.get_data_offset())
        if skip < 0:
            raise ValueError(f"negative voxel offset {skip}")
        if _skip(f, skip) < skip:  # the header and extensions, already parsed
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
            if a < b:
                slab[a - s0 : b - s0] = piece[a - done : b - done]
            done += take
        # what follows the voxels: a little is ignored, more refused
        if done == count and _skip(f, TRAILING_SLACK + 1) > TRAILING_SLACK:
            raise DataError(f"{path}: {TRAILING_MESSAGE}")
    if done < count:
        raise ValueError(f"expected {count} voxels after the header, the file holds {done}")
    return lo, hi
