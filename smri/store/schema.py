"""The store's schema: the one file contract between `smri preprocess` and everything after it.

Dataset names, per-patient fields and the schema version are named here (root attributes by
the writer and the reader beside it); no module outside `smri.store` spells a key.

Schema version 3 (version 1 is the same without the items marked v2 and v3)
---------------------------------------------------------------------------
- ``images``     float16/float32 ``(N, M, S, H, W)``, chunk ``(1, 1, S, H, W)``
- ``labels``     int8 ``(N,)``: 0/1, -1 where unlabelled
- ``patient_id`` UTF-8 strings ``(N,)``, sorted
- ``masks``      v2: uint8 ``(N, S, H, W)``, chunk ``(1, S, H, W)``, gzip-1: the segmentation
  labels of the same slab, in the images' axis order (0 where a patient has none)
- ``meta/*``     per patient: original shape (NIfTI x, y, z), voxel spacing (mm; v3: in the
  images' axis order slice, y, x; before v3 NIfTI's x, y, z), min and max used, source files;
  v2: ``has_mask``, ``tumour_voxels`` and ``tumour_voxels_in_slab`` (label > 0 in the whole
  segmentation and in the slab; -1 without one), ``axis_codes`` (NIfTI axis codes per volume);
  v3: ``affine`` float64 ``(M, 4, 4)``, each stored volume's own affine: voxel index
  (slice, y, x) of the images to scanner millimetres (`smri.volume.stored_affine`: the scan's
  affine with the slab's start and the axis order folded in; NaN where unknown), and
  ``slab_start`` int32 ``(M,)``, the first slice of the slab in the scan (-1 where unknown)
- every dataset carries ``dimension labels`` (h5py ``dims[i].label``: patient, modality,
  slice, y, x, ...) and a ``description`` attribute (v3)
- root attrs     ``format``, ``schema_version``, ``smri_version``, ``created``, ``modalities``,
  ``slices``, ``axis_order``, ``classes`` (JSON), ``config`` (JSON), ``skipped`` (JSON)

Version 2 adds keys and changes none of version 1's, so v1 stores are read as v2 stores whose
patients have no mask and unknown axis codes. Version 3 adds ``affine`` and ``slab_start`` and
stores ``spacing`` in the images' axis order; `StoreReader.meta` gives every version's spacing in
that order, and older rows an unknown affine. Training never reads ``masks``.
Attributes are plain HDF5 strings and numbers (JSON text for structures): nothing is pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

FORMAT = "smri-store"
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
ROOT_ATTRS = (  # what `checks.read_attrs` reads, in its order
    "format", "schema_version", "smri_version", "created", "axis_order", "slices",
    "modalities", "classes", "config", "skipped",
)  # fmt: skip
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
# Version 3's: each volume's place in its scan, so results can be written back onto it.
META_FIELDS_V3 = {
    "affine": ("float64", lambda m: (m, 4, 4), float("nan")),
    "slab_start": ("int32", lambda m: (m,), -1),
}


def added_fields(version: int) -> dict[str, tuple[Any, Any, Any]]:
    """The per-patient fields a store of `version` holds beyond version 1's, with the value
    each has when unknown (the rows of an older store copied into a newer one)."""
    return {**(META_FIELDS_V2 if version >= 2 else {}), **(META_FIELDS_V3 if version >= 3 else {})}


# Dimension labels of each dataset (h5py `dims[i].label`), and what it holds: for h5dump,
# HDFView and readers in other languages, which see no docstring.
DIMENSIONS = {
    IMAGES: ("patient", "modality", "slice", "y", "x"),
    LABELS: ("patient",),
    PATIENT_ID: ("patient",),
    MASKS: ("patient", "slice", "y", "x"),
    "original_shape": ("patient", "modality", "nifti_axis"),
    "spacing": ("patient", "modality", "axis"),
    "intensity_min": ("patient", "modality"),
    "intensity_max": ("patient", "modality"),
    "source_files": ("patient", "modality"),
    "has_mask": ("patient",),
    "tumour_voxels": ("patient",),
    "tumour_voxels_in_slab": ("patient",),
    "axis_codes": ("patient", "modality"),
    "affine": ("patient", "modality", "row", "column"),
    "slab_start": ("patient", "modality"),
}
DESCRIPTIONS = {
    IMAGES: "min-max normalised central slab of each modality, values in [0, 1]",
    LABELS: "class of each patient: 0 or 1 (the classes attribute names them), -1 unlabelled",
    PATIENT_ID: "patient ids, sorted",
    MASKS: "segmentation labels of the same slab (0 where the patient has none)",
    "original_shape": "shape of each scan as read (NIfTI x, y, z)",
    "spacing": "voxel size in mm, in the images' axis order (slice, y, x)",
    "intensity_min": "minimum of each scan, used by the min-max",
    "intensity_max": "maximum of each scan, used by the min-max",
    "source_files": "each modality's file, relative to the input folder",
    "has_mask": "whether the patient has a segmentation in masks",
    "tumour_voxels": "voxels with label > 0 in the whole segmentation (-1: none)",
    "tumour_voxels_in_slab": "voxels with label > 0 in the slab (-1: none)",
    "axis_codes": "NIfTI axis codes of each scan as stored (e.g. LPS, RAS)",
    "affine": "voxel index (slice, y, x) of the images to scanner mm (NaN: unknown)",
    "slab_start": "first slice of the slab in the scan's third axis (-1: unknown)",
}
NO_MASK = {"has_mask": False, "tumour_voxels": -1, "tumour_voxels_in_slab": -1}
# Masks are mostly zeros: gzip keeps 1-1.5 % of the bytes. One chunk per patient, so the
# preprocessing workers compress each mask (`direct.MaskChunk`) and the writer stores the bytes.
MASK_COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}

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
class StoreIdentity:
    """Which file a store was when it was opened: device, inode, size, modification time
    (ns). A reader that opens the path again (a DataLoader worker, a cache, the next fold)
    compares it, so a store replaced meanwhile (`--append`, `--overwrite`) is never read as
    the one its rows were planned on."""

    device: int
    inode: int
    size: int
    mtime_ns: int


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
    # the file this was read from (not part of what the store says: never saved or compared)
    identity: StoreIdentity | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `smri info --json`, run configs and checkpoints)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "identity"}
        d["path"] = str(self.path)
        d["modalities"] = list(self.modalities)
        d["volume_shape"] = list(self.volume_shape)
        return d


LABEL_VALUES = (-1, 0, 1)
PARTIAL_STATE = "partial_state"  # attr of an unfinished store: JSON resume state
