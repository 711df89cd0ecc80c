"""The worker's per-patient work: one patient folder -> its store row.

`load_patient` turns one patient into its ``(M, S, H, W)`` array, and its segmentation into the
``(S, H, W)`` mask of the same slab: a picklable top-level function, run by the preprocessing
workers and by `smri predict`. It fills buffers the store gives it (`smri.store.empty_images`,
`smri.store.encode_mask`) and knows nothing of how the writer writes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smri.discovery import DEFAULT_MODALITIES, Patient
from smri.errors import ConfigError, DataError, PatientError, plural
from smri.store import COMPRESSIONS, DTYPES, NO_MASK, StoredMask, empty_images, encode_mask
from smri.volume import (
    SlabSource,
    axis_codes,
    flat_note,
    header_shape,
    label_slab,
    load_volume,
    open_volume,
    open_volumes,
    slab_start,
    stored_affine,
)

DEFAULT_SLICES = 32


@dataclass(frozen=True)
class PreprocessConfig:
    """How volumes become store rows; saved in the store and in every checkpoint."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    slices: int = DEFAULT_SLICES
    dtype: str = "float16"
    compression: str = "none"
    canonical: bool = False
    # None until discovery names them (`smri.discovery.Discovery.classes`): a store records names
    classes: dict[str, int] | None = None
    masks: bool = True  # store each patient's segmentation of the slab (never used in training)

    def __post_init__(self) -> None:
        if self.slices < 1:
            raise ConfigError(f"must be at least 1, got {self.slices}", option="--slices")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"expected one of {', '.join(DTYPES)}, got {self.dtype!r}", option="--dtype"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"expected one of {', '.join(COMPRESSIONS)}, got {self.compression!r}",
                option="--compression",
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Rebuild from `to_dict` output (a store's or checkpoint's config); extra keys ignored."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "modalities" in known:
            known["modalities"] = tuple(known["modalities"])
        return cls(**known)


@dataclass
class PatientResult:
    """One preprocessed patient: images ``(M, S, H, W)`` in the store dtype, plus metadata, and
    the ``(S, H, W)`` uint8 mask of its segmentation when it has one."""

    patient_id: str
    label: int
    images: np.ndarray
    meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    mask: StoredMask | None = None  # as the writer stores it (`smri.store.encode_mask`)


# the metadata `load_patient` records per modality, in the order of the patient's files
_PER_MODALITY = (
    "original_shape",
    "spacing",
    "intensity_min",
    "intensity_max",
    "source_files",
    "axis_codes",
    "affine",
    "slab_start",
)


def load_patient(
    patient: Patient,
    cfg: PreprocessConfig,
    expect_inplane: tuple[int, int] | None = None,
    relative_to: Path | None = None,
) -> PatientResult:
    """Load, min–max normalise and crop every modality of `patient` (the seed's method).

    Raises PatientError naming the patient, the file and the problem.
    """
    pid = patient.patient_id
    images: np.ndarray | None = None
    meta: dict[str, Any] = {key: [] for key in _PER_MODALITY}
    notes: list[str] = []
    first_file: Path | None = None
    first_shape: tuple[int, int, int] | None = None
    held: dict[Path, list[SlabSource]] = {}  # 4D files, read once for all their modalities
    for m, path in enumerate(patient.files):
        try:
            vol = _source(patient, m, cfg.canonical, held)
        except DataError as exc:
            raise PatientError(pid, str(exc)) from None
        x, y, z = vol.shape
        if z < cfg.slices:
            raise PatientError(
                pid,
                f"{path}: {plural(z, 'slice')} along the third axis, fewer than the "
                f"{cfg.slices} asked for (--slices)",
            )
        if images is None:
            first_file, first_shape = path, vol.shape
            inplane = (y, x)
            if expect_inplane is not None and inplane != tuple(expect_inplane):
                raise PatientError(
                    pid,
                    f"{path}: in-plane shape {x}x{y} differs from the store's "
                    f"{expect_inplane[1]}x{expect_inplane[0]} (the most "
                    "common shape in this cohort)",
                )
            # the writer stores each volume from here as it is, without a copy first
            images = empty_images((len(patient.files), cfg.slices, y, x), cfg.dtype)
        elif (y, x) != images.shape[2:]:
            raise PatientError(
                pid,
                f"{path}: shape {vol.shape} disagrees with "
                f"{first_file.name} ({images.shape[3]}, {images.shape[2]}, ...)",
            )
        try:
            lo, hi = vol.normalized_slab_into(cfg.slices, images[m])
        except DataError as exc:
            raise PatientError(pid, str(exc)) from None
        flat = flat_note(lo, hi)  # constant, or too narrow for the min-max: warned alike
        if flat:
            notes.append(f"patient {pid}: {path.name} {flat}")
        notes += [f"patient {pid}: {path.name}: {note}" for note in vol.notes]
        meta["original_shape"].append([x, y, z])
        meta["spacing"].append(list(vol.spacing)[::-1])  # the images' axis order (slice, y, x)
        meta["intensity_min"].append(lo)
        meta["intensity_max"].append(hi)
        meta["source_files"].append(_relative(path, relative_to))
        try:
            meta["axis_codes"].append(vol.axis_codes)
        except DataError as exc:
            raise PatientError(pid, str(exc)) from None
        start = slab_start(z, cfg.slices)  # where the slab lies, to put results back on the scan
        meta["slab_start"].append(start)
        meta["affine"].append(stored_affine(vol.affine, start).tolist())
    assert images is not None and first_shape is not None  # a Patient has at least one file
    notes += _orientation_notes(patient, meta["axis_codes"])
    mask = _stored_mask(patient, cfg, first_shape, meta, notes)
    return PatientResult(pid, patient.label, images, meta, notes, mask)


def _orientation_notes(patient: Patient, codes: list[str]) -> list[str]:
    """A warning when `patient`'s volumes differ in orientation (stored flipped otherwise)."""
    if len(set(codes)) <= 1:
        return []
    named = ", ".join(f"{p.name} {c}" for p, c in zip(patient.files, codes, strict=True))
    return [
        f"patient {patient.patient_id}: its volumes have different orientations ({named}) and "
        "are stored flipped against each other; --canonical reorients every volume to RAS"
    ]


def _stored_mask(
    patient: Patient,
    cfg: PreprocessConfig,
    first_shape: tuple[int, int, int],
    meta: dict[str, Any],
    notes: list[str],
) -> StoredMask | None:
    """`patient`'s segmentation of the slab, encoded as the writer stores it, with its label
    counts in `meta`; a bad segmentation costs the mask (a note), never the images."""
    meta.update(NO_MASK)
    if not (cfg.masks and patient.seg_files):
        return None
    try:
        mask, counts = _load_mask(patient, cfg, first_shape, meta["axis_codes"][0])
    except ValueError as exc:
        notes.append(f"patient {patient.patient_id}: {exc}; stored without a mask")
        return None
    meta.update(counts)
    return encode_mask(mask)  # compressed here where the writer stores the bytes


def _source(
    patient: Patient, m: int, canonical: bool, held: dict[Path, list[SlabSource]]
) -> SlabSource:
    """Modality `m` of `patient`: its 3D file, streamed; or, for a patient with `channels`
    (MSD), volume ``channels[m]`` of its 4D file, which is read whole once (into `held`) for
    all the modalities it holds. DataError naming the file when it has no such volume."""
    path = patient.files[m]
    if not patient.channels:
        return open_volume(path, canonical=canonical)
    if path not in held:
        held[path] = open_volumes(path, canonical=canonical)
    volumes, k = held[path], patient.channels[m]
    if k >= len(volumes):
        raise DataError(
            f"{path}: holds {plural(len(volumes), 'volume')} along its fourth axis, no "
            f"volume {k} (counted from 0) for its modality {m + 1}"
        )
    return volumes[k]


def _load_mask(
    patient: Patient, cfg: PreprocessConfig, shape: tuple[int, int, int], codes: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The patient's segmentation cropped as its images were (`codes`: their axis codes), and
    its tumour voxel counts. ValueError saying why it cannot be used."""
    if len(patient.seg_files) > 1:
        names = ", ".join(p.name for p in patient.seg_files)
        raise ValueError(f"{len(patient.seg_files)} segmentation files ({names})")
    path = patient.seg_files[0]
    try:
        seg = load_volume(path, canonical=cfg.canonical)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    if seg.data.shape != shape:
        raise ValueError(
            f"{path}: segmentation shape {seg.data.shape} differs from the images' {shape}"
        )
    if axis_codes(seg.affine) != codes:
        raise ValueError(
            f"{path}: segmentation orientation {axis_codes(seg.affine)} differs from the "
            f"images' {codes} (it would be stored flipped; --canonical reorients both)"
        )
    try:
        mask, total, in_slab = label_slab(seg.data, cfg.slices)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return mask, {"has_mask": True, "tumour_voxels": total, "tumour_voxels_in_slab": in_slab}


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def load_or_error(
    patient: Patient, cfg: PreprocessConfig, inplane: tuple[int, int] | None, root: Path
) -> PatientResult | PatientError:
    """Worker entry point: a result, or the patient's error as a value (never a lost traceback)."""
    try:
        return load_patient(patient, cfg, inplane, root)
    except PatientError as exc:
        return exc
    except MemoryError:
        return PatientError(patient.patient_id, "out of memory while loading")


def _inplane_of(patient: Patient, canonical: bool) -> tuple[int, int] | None:
    """The (y, x) shape of a patient's first volume from its header alone (no voxel data), as
    it is stored (after reorienting to RAS with `canonical`)."""
    shape = header_shape(patient.files[0], canonical=canonical)  # None: the worker says why
    return (int(shape[1]), int(shape[0])) if shape is not None and len(shape) >= 3 else None


def common_inplane(patients: list[Patient], canonical: bool = False) -> tuple[int, int] | None:
    """The most common in-plane shape among the patients' first volumes as stored (header
    reads only)."""
    shapes = Counter(s for p in patients if (s := _inplane_of(p, canonical)) is not None)
    return shapes.most_common(1)[0][0] if shapes else None
