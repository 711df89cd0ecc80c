"""`smri show`: a PNG of what preprocessing keeps of one patient, from a raw folder or a store.

The figure is a function of arrays (`slab_figure`); loading is separate (`slab_from_folder`,
`slab_from_store`) and applies exactly the preprocessing's min–max and central slab.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from smri.atomic import OutputLock, check_not_input
from smri.errors import ConfigError, DataError, plural
from smri.files import special_kind
from smri.plots import PNG_SIGNATURE, content_box, mosaic, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STORE_SUFFIXES = (".h5", ".hdf5")
GRADE_OF_FOLDER = {"hgg": "HGG", "lgg": "LGG"}


@dataclass(frozen=True)
class ShownPatient:
    """One patient's preprocessed slab and how to title it."""

    patient_id: str
    label_text: str  # e.g. "HGG (1)", or "unlabelled"
    modalities: tuple[str, ...]
    slab: np.ndarray  # (M, S, H, W) float32 in [0, 1]
    first_slice: int | None  # index of the slab's first slice in the original volume
    depth: int | None  # slices in the original volume
    seg: np.ndarray | None = None  # (S, H, W) labels of the same slab, when a segmentation exists
    store_version: int | None = None  # the schema version, when drawn from a store


def is_store(path: Path) -> bool:
    """Whether `path` names an HDF5 store (a file with an .h5/.hdf5 suffix)."""
    return path.is_file() and path.suffix.lower() in STORE_SUFFIXES


def find_patient_folder(root: Path, patient_id: str) -> Path:
    """`root/<id>` or `root/<class>/<id>`; DataError naming the id when neither exists."""
    if patient_id in ("", ".", "..") or Path(patient_id).name != patient_id:
        raise DataError(f"{patient_id!r} is not a patient id (a folder name, no path)")
    for candidate in [root / patient_id, *(d / patient_id for d in sorted(root.iterdir()))]:
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"{root}: no patient folder '{patient_id}' (looked in {root} and one level down)"
    )


def folder_label(folder: Path) -> str:
    """The class of a raw patient folder: its class folder (HGG/LGG) or name_mapping.csv."""
    grade = GRADE_OF_FOLDER.get(folder.parent.name.lower())
    if grade is None:
        mapping = folder.parent / "name_mapping.csv"
        if mapping.is_file():
            with mapping.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    if row.get("BraTS_2020_subject_ID") == folder.name:
                        grade = (row.get("Grade") or "").strip().upper() or None
                        break
    if grade is None:
        return "unlabelled"
    return f"{grade} ({int(grade == 'HGG')})" if grade in ("HGG", "LGG") else grade


def slab_from_folder(folder: Path, modalities: Sequence[str], slices: int) -> ShownPatient:
    """Load a raw patient folder and apply the preprocessing: min–max, central `slices` slab."""
    from smri.discovery import patient_from_folder
    from smri.volume import central_slab, load_volume, minmax_normalize, slab_start

    folder = Path(folder)
    patient = patient_from_folder(folder, modalities)
    slabs = []
    depth = None
    for path in patient.files:
        vol = load_volume(path).data
        if vol.shape[2] < slices:
            raise DataError(
                f"{path}: {plural(vol.shape[2], 'slice')}, fewer than the {slices} asked for"
            )
        if slabs and vol.shape[:2] != slabs[0].shape[1:][::-1]:
            raise DataError(f"{path}: in-plane shape {vol.shape[:2]} differs from the others")
        depth = vol.shape[2]
        slabs.append(central_slab(minmax_normalize(vol), slices))
    seg = None
    seg_files = sorted(p for p in folder.iterdir() if _is_seg(p.name))
    if seg_files:
        seg_vol = load_volume(seg_files[0]).data
        if seg_vol.shape[2] == depth:
            seg = np.ascontiguousarray(central_slab(seg_vol, slices)).astype(np.uint8)
    assert depth is not None  # patient_from_folder guarantees at least one file
    return ShownPatient(
        patient_id=patient.patient_id,
        label_text=folder_label(folder),
        modalities=tuple(modalities),
        slab=np.stack(slabs),
        first_slice=slab_start(depth, slices),
        depth=depth,
        seg=seg,
    )


def _is_seg(name: str) -> bool:
    low = name.lower()
    return not low.startswith(".") and "seg" in low and (low.endswith((".nii", ".nii.gz")))


def slab_from_store(path: Path, patient_id: str, modalities: Sequence[str] | None) -> ShownPatient:
    """One patient's stored slab (selected modalities, in the order asked) from a store."""
    from smri.store import StoreReader

    with StoreReader(path) as reader:
        info = reader.info
        wanted = tuple(modalities) if modalities else tuple(info.modalities)
        unknown = [m for m in wanted if m not in info.modalities]
        if unknown:
            raise ConfigError(
                f"{path} holds {', '.join(info.modalities)}; no {', '.join(unknown)}",
                option="--modalities",
            )
        i = reader.index_of(patient_id)
        images = reader.read(i)
        label = int(reader.labels[i])
        meta = reader.meta(i)
        seg = reader.read_mask(i)
        version = reader.version
    names = {v: k for k, v in info.classes.items()}
    label_text = f"{names.get(label, label)} ({label})" if label >= 0 else "unlabelled"
    order = [info.modalities.index(m) for m in wanted]
    depth = int(meta["original_shape"][0][2]) if "original_shape" in meta else None
    first = (depth - info.slices) // 2 if depth is not None else None
    return ShownPatient(
        patient_id=patient_id,
        label_text=label_text,
        modalities=wanted,
        slab=np.asarray(images[order], dtype=np.float32),
        first_slice=first,
        depth=depth,
        seg=seg,
        store_version=version,
    )


def slab_figure(patient: ShownPatient, *, montage: bool = False, contours: bool = False) -> Figure:
    """The figure: one column per modality (middle slice), or one row per modality (montage).

    Intensities are shown on the fixed [0, 1] range preprocessing produced, so what looks dim
    here is dim for the model too.
    """
    from matplotlib.figure import Figure

    m, s, h, w = patient.slab.shape
    mid = s // 2
    where = ""
    if patient.first_slice is not None and patient.depth is not None:
        where = (
            f"slab = slices {patient.first_slice}–{patient.first_slice + s - 1} of {patient.depth}"
        )
    title = f"{patient.patient_id} · class {patient.label_text}"
    if montage:
        crop = content_box(patient.slab)
        tiles = patient.slab[:, :, crop[0], crop[1]]
        columns = min(8, s)
        rows = math.ceil(s / columns)
        th, tw = tiles.shape[2:]
        panel_w = 12.0
        panel_h = panel_w * rows * th / (columns * tw)
        fig = Figure(figsize=(panel_w, m * (panel_h + 0.35) + 0.7), layout="constrained")
        axes = fig.subplots(m, 1, squeeze=False)[:, 0]
        for ax, name, vol in zip(axes, patient.modalities, tiles, strict=True):
            ax.imshow(
                mosaic(vol, columns), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest"
            )
            ax.set_title(
                f"{name} · slab slices 1–{s}, row by row (cropped to the head)", fontsize=10
            )
            ax.set_axis_off()
    else:
        fig = Figure(figsize=(3.2 * m, 3.2 * h / w + 0.9), layout="constrained")
        axes = fig.subplots(1, m, squeeze=False)[0]
        for ax, name, vol in zip(axes, patient.modalities, patient.slab, strict=True):
            ax.imshow(vol[mid], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if contours and patient.seg is not None:
                _draw_regions(ax, patient.seg[mid])
            ax.set_title(f"{name} · slab slice {mid + 1}/{s}", fontsize=10)
            ax.set_axis_off()
    fig.suptitle(f"{title}\n{where}" if where else title, fontsize=11)
    return fig


REGIONS = (  # BraTS evaluation regions: whole tumour, tumour core, enhancing tumour
    ("whole tumour", (1, 2, 4), "#2bd92b"),
    ("tumour core", (1, 4), "#ffd400"),
    ("enhancing", (4,), "#ff3b3b"),
)


def _draw_regions(ax: object, seg: np.ndarray) -> None:
    """Outline the BraTS regions of one (H, W) label slice."""
    for _, labels, colour in REGIONS:
        mask = np.isin(seg, labels)
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.7)


def show_patient(
    source: Path,
    patient_id: str | None,
    out: Path,
    *,
    modalities: Sequence[str] | None = None,
    slices: int = 32,
    montage: bool = False,
    contours: bool = False,
    overwrite: bool = False,
) -> ShownPatient:
    """Draw one patient (raw folder, cohort root + id, or store + id) into the PNG `out`.

    `out` must not be, or lie inside, what is read (the store, the patient folder); an existing
    file there that is not a PNG is replaced only with `overwrite`.
    """
    from smri.discovery import DEFAULT_MODALITIES

    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: does not exist (expected a patient folder or an .h5 store)")
    if is_store(source):
        if not patient_id:
            raise ConfigError(
                f"{source} is a store: name the patient to show (PATIENT_ID)", option="PATIENT_ID"
            )
        check_out_png(out, {"SOURCE": source}, overwrite)
        patient = slab_from_store(source, patient_id, modalities)
        if contours and patient.seg is None:
            why = (
                "a schema v1 store keeps no segmentation; preprocess it again"
                if patient.store_version == 1
                else "the store holds no mask for this patient (no *seg* file, or --no-masks)"
            )
            raise DataError(f"{source}: cannot outline {patient_id}'s tumour (--contours): {why}")
    elif source.is_dir():
        folder = find_patient_folder(source, patient_id) if patient_id else source
        check_out_png(out, {"the patient folder": folder}, overwrite)
        patient = slab_from_folder(folder, tuple(modalities or DEFAULT_MODALITIES), slices)
        if contours and patient.seg is None:
            raise DataError(
                f"{folder}: no *seg* file with the volumes' {patient.depth} slices to outline "
                "(--contours)"
            )
    else:
        raise DataError(f"{source}: neither a folder nor an .h5/.hdf5 store")
    fig = slab_figure(patient, montage=montage, contours=contours)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(Path(out)):
        check_out_png(out, {}, overwrite)  # again: another may have written it meanwhile
        save_figure(fig, out, tight=False)
    return patient


def check_out_png(out: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """ConfigError (--out) when `out` is, or is inside, one of `inputs`, is not a regular file,
    or holds something other than a PNG image and `overwrite` is off."""
    check_not_input(out, inputs, "--out")
    out = Path(out)
    kind = special_kind(out)
    if kind is not None:
        raise ConfigError(f"{out} is {kind}, not a file to write a PNG to", option="--out")
    if overwrite or not out.is_file():
        return
    try:
        with open(out, "rb") as fh:
            head = fh.read(len(PNG_SIGNATURE))
    except OSError:
        head = b""
    if head != PNG_SIGNATURE:
        raise ConfigError(
            f"{out} exists and is not a PNG image; choose another --out, or pass --overwrite "
            "to replace it",
            option="--out",
        )
