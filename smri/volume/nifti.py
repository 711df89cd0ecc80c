"""Loading one NIfTI volume whole: its bytes (inflated no further than its header declares),
its header as nibabel checks it, its voxels, and its axis codes.

`load_volume` is the path for volumes the stream does not handle (scaled, reoriented, odd
headers) and for every error message; `smri.volume.stream` reads the rest.
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import igzip

from smri.errors import DataError, plural
from smri.files import changed_message, check_regular, file_state
from smri.volume.notes import NIBABEL_LOG, nibabel_notes

# Intel ISA-L's gzip (the standard library's interface): inflating is most of preprocessing,
# and ISA-L does it about 1.7x faster than zlib (benchmarks/RESULTS.md). A module attribute,
# so the benchmark can measure the standard library's `gzip` in its place (the streamed reader
# reads it from here too, at each call).
GZIP = igzip

FLOAT32_MAX = float(np.finfo(np.float32).max)
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Volume:
    """One 3D volume as stored in its file (native dtype, NIfTI (i, j, k) axis order); while
    `load_volumes` reads a 4D file, its ``(i, j, k, m)`` array."""

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
    with open(path, "rb") as raw:  # one open: the bytes all come from one version of the file
        before = file_state(raw.fileno())
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        try:
            data = _inflated_bytes(path, raw, compressed)
        finally:  # written to while it was read (truncated, say): said as such, not as damage
            if file_state(raw.fileno()) != before:
                raise DataError(changed_message(path)) from None
        return data


def _inflated_bytes(path: Path, raw: BinaryIO, compressed: bool) -> bytes:
    """`read_nifti_bytes` of the open file `raw`."""
    try:
        with GZIP.open(raw, "rb") if compressed else nullcontext(raw) as f:
            head = f.read(544)  # NIfTI-2's header + extension flag; NIfTI-1 needs 352
            need = _declared_bytes(head)
            if need is None:  # not a header smri reads: enough for the parser to say why
                return head + f.read(MAX_HEADER_BYTES)
            offset, count, size = need
            if count > MAX_WHOLE_VOXELS:  # read (and drop) no more than the limit allows
                held = skip_bytes(f, offset - len(head) + MAX_WHOLE_VOXELS * size + 1)
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
            data = f.read(offset + count * size)
            if len(data) == offset + count * size and skip_bytes(f, TRAILING_SLACK + 1) > (
                TRAILING_SLACK
            ):
                raise DataError(f"{path}: {TRAILING_MESSAGE}")
            return data
    except ValueError as exc:  # a header that declares more than the file holds
        raise DataError(f"{path}: not a readable NIfTI volume ({short_reason(exc)})") from None
    except (OSError, EOFError, zlib.error) as exc:
        if not compressed:
            raise
        raise DataError(f"{path}: corrupt gzip stream ({short_reason(exc)})") from None


# Volumes read whole (scaled, reoriented, `smri show`): at most 512^3 voxels (BraTS: 240x240x155)
MAX_WHOLE_VOXELS = 2**27
TRAILING_SLACK = 1 << 20  # bytes after the declared voxels that are ignored; more is refused
TRAILING_MESSAGE = (
    "more data follow the voxels its header declares (over 1 MiB more); not a NIfTI volume "
    "smri reads (a damaged file, or one made to inflate without end)"
)
MAX_HEADER_BYTES = 1 << 24  # header + extensions larger than this are read by load_volume


def _declared_bytes(head: bytes) -> tuple[int, int, int] | None:
    """(voxel offset, voxel count, bytes per voxel) of a header's fixed part; None when it
    cannot say (not a NIfTI header, an unknown data type: the full parser names the problem)."""
    try:
        header = header_from_bytes(head, extensions=False)
        offset = int(header.get_data_offset())
        count = math.prod(int(n) for n in header.get_data_shape())
        size = header.get_data_dtype().itemsize
    except Exception:
        return None
    if offset < 0 or count < 0 or offset > MAX_HEADER_BYTES:
        return None
    return max(offset, len(head)), count, size


def skip_bytes(f: BinaryIO, n: int) -> int:
    """Read and drop up to `n` bytes of `f`, a small buffer at a time; how many there were."""
    total = 0
    while total < n:
        want = min(1 << 16, n - total)
        got = len(f.read(want))
        total += got
        if got < want:
            break
    return total


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's text (200 characters at most), for a one-line message."""
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


def load_volumes(path: Path, *, canonical: bool = False) -> list[Volume]:
    """The 3D volumes of one NIfTI file, read once: the volume of a 3D file, or one per index
    of a 4D file's fourth axis, ``(X, Y, Z, M)`` -> M views ``(X, Y, Z)`` (the Medical
    Segmentation Decathlon's modalities). Otherwise as `load_volume`."""
    path = Path(path)
    with nibabel_notes() as notes:
        vol = _load_volume(path, canonical, notes, four_d=True)
    if vol.data.ndim == 3:
        return [vol]
    return [replace(vol, data=vol.data[..., k]) for k in range(vol.data.shape[3])]


def _load_volume(path: Path, canonical: bool, notes: list[str], four_d: bool = False) -> Volume:
    try:
        raw = read_nifti_bytes(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or short_reason(exc)})") from None
    if len(raw) == 0:
        raise DataError(f"{path}: empty file (0 bytes), expected a NIfTI volume")
    try:
        header = header_from_bytes(raw)
        if canonical or is_scaled(header):  # nibabel's image: reorientation, scaled voxel values
            img = _image_class(header).from_bytes(raw)
            if canonical:
                img = nib.as_closest_canonical(img)
            header, data = img.header, np.asanyarray(img.dataobj)
            affine = img.affine
        else:
            data, affine = _voxels(header, raw), header.get_best_affine()
    except Exception as exc:  # nibabel raises many types for malformed headers and data
        reason = short_reason(exc)  # nibabel logs its refusal too: said once, here
        extra = [n for n in notes if n not in reason and reason not in n][:1]
        raise DataError(
            f"{path}: not a readable NIfTI volume ({'; '.join([reason, *extra])})"
        ) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 and not (four_d and data.ndim == 4):
        expected = "a 3D or 4D volume" if four_d else "a 3D volume"
        raise DataError(f"{path}: expected {expected}, got {data.ndim}D with shape {data.shape}")
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
        problem = float32_problem(lo, hi)
        if problem:
            raise DataError(f"{path}: {problem}")
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    return Volume(data=data, spacing=zooms, affine=np.asarray(affine), notes=tuple(notes))


def float32_problem(lo: float, hi: float) -> str | None:
    """Why finite intensities from `lo` to `hi` cannot be min-max normalised in float32 (the
    seed's ``astype(float32)``), or None: values beyond float32's range become Inf, and a
    range wider than it overflows to NaN (said here, before numpy warns of either)."""
    with np.errstate(over="ignore", invalid="ignore"):
        lo32, hi32 = np.float32(lo), np.float32(hi)
        span = hi32 - lo32
    if hi - lo > FLOAT32_MAX:
        return (
            f"intensities span {lo:g} to {hi:g}, wider than float32 (±{FLOAT32_MAX:.3g}) in "
            "which they are normalised"
        )
    if not (np.isfinite(lo32) and np.isfinite(hi32) and np.isfinite(span)):
        far = hi if abs(hi) >= abs(lo) else lo
        return (
            f"intensities reach {far:g}, beyond float32 (±{FLOAT32_MAX:.3g}) in which they "
            "are normalised"
        )
    return None


def header_from_bytes(raw: bytes, *, extensions: bool = True) -> nib.Nifti1Header:
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
    header.check_fix(logger=NIBABEL_LOG, error_level=40)  # as nibabel's check=True, but logged
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


def _image_class(header: nib.Nifti1Header) -> type[nib.Nifti1Image]:
    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image


def is_scaled(header: nib.Nifti1Header) -> bool:
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
