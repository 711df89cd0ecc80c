"""`smri explain`: where a trained model looks, patient by patient, against the tumour.

For each patient: integrated gradients (`saliency`) of every modality, a PNG montage of the
slab with the positive saliency over the images and the tumour's contour where the store holds a
mask, and the share of the positive saliency that falls inside the tumour. A model whose
saliency lies mostly outside the tumour is called out: it may have learnt something other than
the tumour (the "Clever Hans" effect reported for brain-tumour MRI classifiers, Wallis & Buvat
2022). `smri evaluate` reports the same share over its patients (`inference.saliency_in_tumour`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smri.atomic import WRITE_ERRORS
from smri.config import MOSTLY_OUTSIDE
from smri.errors import ConfigError, DataError, plural
from smri.evaluation.saliency import (
    BASELINE,
    DEFAULT_STEPS,
    METHOD,
    chance_share,
    integrated_gradients,
    share_by_modality,
    share_inside,
)
from smri.evaluation.scan_space import SUFFIX as SALIENCY_SUFFIX
from smri.evaluation.scan_space import check_placements, write_saliency_nifti
from smri.messages import python_log, warning
from smri.metrics.calibration import undo_class_weight
from smri.model_io import (
    calibration_of,
    check_compatible,
    load_model,
    model_from_checkpoint,
    resolve_device,
)
from smri.plots import content_box, mosaic, save_figure
from smri.store import StoreReader

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_PATIENTS = 8  # explained when no ids are given and the run's split is unknown
CHANCE_FACTOR = 1.5  # a mean share under this many times chance is called no better than chance
SALIENCY_CMAP = "inferno"
CONTOUR_COLOUR = "#00e5ff"


@dataclass(frozen=True)
class Choice:
    """Which patients (store rows) to explain, and how they were chosen (said to the user)."""

    rows: list[int]
    how: str


def choose_patients(
    reader: StoreReader, checkpoint: Path, ids: Sequence[str] = (), limit: int = DEFAULT_PATIENTS
) -> Choice:
    """The given ids; else the validation patients of the checkpoint's run (its split.json)
    that the store holds; else the store's first `limit` patients."""
    if ids:
        return Choice([reader.index_of(pid) for pid in dict.fromkeys(ids)], "given")
    val = run_validation_ids(checkpoint)
    present = set(reader.patient_ids)
    if val:
        rows = [reader.index_of(pid) for pid in val if pid in present]
        if rows:
            return Choice(rows, f"the {len(rows)} validation patients of the run (split.json)")
    n = min(limit, len(reader))
    if val is None:
        why = "no split.json beside the model"
    else:
        why = "none of the run's validation patients is in the store"
    return Choice(list(range(n)), f"the first {n} patients of the store ({why})")


def run_validation_ids(checkpoint: Path) -> list[str] | None:
    """The validation patient ids in the split.json beside a checkpoint, or None."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    try:
        split = json.loads((folder / "split.json").read_text())
    except (OSError, ValueError):
        return None
    return [str(v) for v in split["val"]] if isinstance(split, dict) and "val" in split else None


@dataclass
class PatientSaliency:
    """One patient's saliency and how it lies against the tumour."""

    patient_id: str
    label: int
    images: np.ndarray  # (M, S, H, W) float32
    attributions: np.ndarray  # (M, S, H, W) float32, toward the predicted class
    mask: np.ndarray | None  # (S, H, W) uint8 labels, None without a segmentation
    probability: float  # calibrated (the class weighting undone), as evaluate and predict say
    completeness_error: float
    threshold: float = 0.5  # class 1 at and above it: the model's balanced threshold

    def row(self, modalities: Sequence[str], classes: dict[str, int]) -> dict[str, Any]:
        """The patient's numbers, JSON-ready (shares in [0, 1]; None where undefined)."""
        names = {v: k for k, v in classes.items()}
        predicted = int(self.probability >= self.threshold)
        in_slab = int((self.mask > 0).sum()) if self.mask is not None else None
        per_mod = zip(modalities, self.attributions, share_by_modality(self.attributions),
                      strict=True)  # fmt: skip
        row = {
            "patient_id": self.patient_id,
            "label": self.label,
            "probability": round(self.probability, 6),
            "predicted": names.get(predicted, str(predicted)),
            "has_mask": self.mask is not None,
            "tumour_voxels_in_slab": in_slab,
            "share_in_tumour": None,
            "share_in_tumour_by_modality": dict.fromkeys(modalities),
            "chance_share": None,
            "saliency_by_modality": {},
            "completeness_error": rounded(self.completeness_error),
            "note": "no mask in the store" if self.mask is None else "no tumour voxel in the slab",
        }
        for m, attr, part in per_mod:
            row["saliency_by_modality"][m] = rounded(float(part))
            if in_slab:
                row["share_in_tumour_by_modality"][m] = rounded(share_inside(attr, self.mask))
        if in_slab:
            row["share_in_tumour"] = rounded(share_inside(self.attributions, self.mask))
            row["chance_share"] = rounded(chance_share(self.images, self.mask))
            row["note"] = None
        return row


def rounded(value: float | None) -> float | None:
    """A number for JSON, to 4 decimals; None when missing or not finite."""
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def patient_saliency(
    model: torch.nn.Module,
    reader: StoreReader,
    row: int,
    device: torch.device,
    steps: int,
    batch_size: int,
    calibration: tuple[float, float] = (0.0, 0.5),
) -> PatientSaliency:
    """Integrated gradients of one store row, with its mask (when the store has one);
    `calibration`: the checkpoint's logit offset and threshold (`calibration_of`)."""
    images = np.asarray(reader.read(row), dtype=np.float32)
    attr = integrated_gradients(
        model, torch.from_numpy(images).to(device), steps=steps, batch_size=batch_size
    )
    offset, threshold = calibration
    probability = float(undo_class_weight(np.array([attr.logit]), offset)[0])
    return PatientSaliency(
        reader.patient_ids[row], int(reader.labels[row]), images, attr.attributions,
        reader.read_mask(row), probability, attr.completeness_error, threshold,
    )  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and median share inside the tumour over the rows that have one, and the verdict."""
    shares = [r["share_in_tumour"] for r in rows if r["share_in_tumour"] is not None]
    chance = [r["chance_share"] for r in rows if r["chance_share"] is not None]
    mean = rounded(float(np.mean(shares))) if shares else None
    chance_mean = rounded(float(np.mean(chance))) if chance else None
    out = {
        "n": len(rows),
        "n_with_tumour": len(shares),
        "share_in_tumour_mean": mean,
        "share_in_tumour_median": rounded(float(np.median(shares))) if shares else None,
        "chance_share_mean": chance_mean,
        "share_over_chance": rounded(mean / chance_mean)
        if mean is not None and chance_mean
        else None,
        "mostly_outside": None if mean is None else mean < MOSTLY_OUTSIDE,
    }
    out["verdict"] = verdict(out)
    return out


def _fraction(x: float | None) -> str:
    """A share for a sentence: two decimals, or two significant digits below 0.01 (a tumour
    barely inside the slab has shares of a few thousandths, which .2f shows as 0.00)."""
    if x is None:
        return "unknown"
    return f"{x:.2f}" if x == 0 or x >= 0.01 else f"{x:.2g}"


def percent(x: float | None) -> str:
    """A share for a table in whole percent; a share above 0 never shows as 0 %, nor one
    below 1 as 100 %."""
    if x is None:
        return "-"
    text = f"{100 * x:.0f}"
    if text == "0" and x > 0:
        return "<1 %"
    if text == "100" and x < 1:
        return ">99 %"
    return f"{text} %"


def verdict(s: dict[str, Any]) -> str:
    """One sentence on where the model looks, from `summarise`'s numbers."""
    if s["share_in_tumour_mean"] is None:
        return (
            "no patient has a mask with tumour voxels in the slab, so where the saliency lies "
            "against the tumour is unknown (preprocess a cohort with *_seg files into the store)"
        )
    where = (
        f"mean share of the positive saliency inside the tumour "
        f"{_fraction(s['share_in_tumour_mean'])} over {plural(s['n_with_tumour'], 'patient')}"
    )
    ratio = s["share_over_chance"]
    if ratio is not None:
        where += (
            f", {ratio:.1f} times the {_fraction(s['chance_share_mean'])} of a saliency spread "
            "evenly over the head"
        )
    if not s["mostly_outside"]:
        return f"the saliency lies mostly inside the tumour ({where})"
    if ratio is None:
        return (
            f"WARNING: the saliency lies mostly outside the tumour ({where}); look at the montages"
        )
    if ratio < CHANCE_FACTOR:
        return (
            f"WARNING: the saliency lies mostly outside the tumour ({where}): no better than "
            "chance, the model may rely on something other than the tumour; look at the montages"
        )
    return (
        f"WARNING: the saliency lies mostly outside the tumour ({where}): the model looks at "
        "the tumour more than at the rest, but most of its evidence lies elsewhere; look at "
        "the montages"
    )


def saliency_figure(
    p: PatientSaliency, modalities: Sequence[str], row: dict[str, Any], label_text: str
) -> Figure:
    """Every slice of the slab, one panel per modality: the image in grey, the positive saliency
    over it (one colour scale for the patient: its 99.5th percentile) and the tumour contour."""
    from matplotlib.figure import Figure

    m, s = p.images.shape[:2]
    crop = content_box(p.images)
    columns = min(8, s)
    tiles_h, tiles_w = p.images[0, 0][crop].shape
    rows = math.ceil(s / columns)
    panel_w = 12.0
    panel_h = panel_w * rows * tiles_h / (columns * tiles_w)
    fig = Figure(figsize=(panel_w, m * (panel_h + 0.3) + 0.8), layout="compressed")
    axes = fig.subplots(m, 1, squeeze=False)[:, 0]
    positive = np.clip(p.attributions, 0, None)
    if (positive > 0).any():  # one scale for the patient: modalities compare
        positive = positive / float(np.percentile(positive[positive > 0], 99.5))
    outline = mosaic(p.mask[:, crop[0], crop[1]].astype(np.float32), columns) if _drawn(p) else None
    shown = None
    for ax, name, image, sal in zip(axes, modalities, p.images, positive, strict=True):
        ax.imshow(mosaic(image[:, crop[0], crop[1]], columns), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")  # fmt: skip
        heat = mosaic(sal[:, crop[0], crop[1]], columns)
        shown = ax.imshow(np.ma.masked_less(heat, 0.05), cmap=SALIENCY_CMAP, vmin=0, vmax=1,
                          alpha=0.75, interpolation="nearest")  # fmt: skip
        if outline is not None:
            ax.contour(outline > 0, levels=[0.5], colors=[CONTOUR_COLOUR], linewidths=0.8)
        share = row["share_in_tumour_by_modality"][name]
        part = row["saliency_by_modality"][name]
        inside = f", {100 * share:.0f} % of it inside the tumour" if share is not None else ""
        ax.set_title(f"{name}: {100 * part:.0f} % of the positive saliency{inside} · slab slices "
                     f"1–{s}, row by row", fontsize=10)  # fmt: skip
        ax.set_axis_off()
    fig.colorbar(shown, ax=list(axes), location="bottom", shrink=0.5, aspect=40,
                 label="positive saliency toward the predicted class (integrated gradients), "
                 "over its 99.5th percentile in this patient; under 0.05 not drawn")  # fmt: skip
    total, where = row["share_in_tumour"], row["note"]
    if total is not None:
        where = (
            f"{100 * total:.0f} % of the saliency inside the tumour (contour; chance "
            f"{100 * row['chance_share']:.0f} %)"
        )
    fig.suptitle(
        f"{p.patient_id} · class {label_text} · predicted {row['predicted']} "
        f"(P = {p.probability:.2f}) · {where}",
        fontsize=11,
    )
    return fig


def _drawn(p: PatientSaliency) -> bool:
    return p.mask is not None and bool((p.mask > 0).any())


def explain_store(
    checkpoint: Path,
    store: Path,
    out: Path,
    ids: Sequence[str] = (),
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
    nifti: bool = False,
    log: Callable[[str], None] = python_log,
) -> dict[str, Any]:
    """Explain `checkpoint` (or an exported model) on patients of `store`: one PNG per patient
    (and, with `nifti`, its saliency on the scan's grid: `scan_space`) and ``explain.json`` in
    `out`; returns explain.json's content."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    ckpt = load_model(checkpoint)
    offset, threshold, _ = calibration_of(ckpt, str(checkpoint))
    dev = resolve_device(device)
    with StoreReader(store) as reader:
        check_compatible(ckpt["store"], reader.info, str(checkpoint))
        model = model_from_checkpoint(ckpt, dev, str(checkpoint))
        if nifti:
            check_placements(reader)
        choice = choose_patients(reader, checkpoint, ids)
        log(f"explaining {choice.how}")
        if not reader.has_masks:
            log(warning(f"{store} is a schema v{reader.version} store: no masks to compare "
                        "the saliency with (re-run smri preprocess on folders with *_seg "
                        "files)"))  # fmt: skip
        files = file_names([reader.patient_ids[i] for i in choice.rows])
        rows, skipped = [], []
        out.mkdir(parents=True, exist_ok=True)
        for i in tqdm(choice.rows, desc="explain", unit="patient", disable=not progress):
            pid = reader.patient_ids[i]
            try:
                calibration = (offset, threshold)
                rows.append(_explain_one(model, reader, i, dev, steps, batch_size,
                                         out / files[pid], calibration, nifti, log))  # fmt: skip
            except (DataError, OSError) as exc:  # this patient only; a full disk stops all
                if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
                    raise
                reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) else str(exc)
                log(warning(f"skipped: patient {pid}: {reason}"))
                skipped.append({"patient_id": pid, "reason": reason})
    if not rows:
        raise DataError(f"{store}: no patient could be explained (see the lines above)")
    report = {
        "checkpoint": str(checkpoint),
        "store": str(store),
        "method": METHOD,
        "steps": steps,
        "baseline": BASELINE,
        "target": "the predicted class",
        "patients": choice.how,
        **summarise(rows),
        "rows": rows,
        "skipped": skipped,
    }
    from smri.jsonfiles import write_json

    write_json(out / "explain.json", report)
    return report


def _explain_one(
    model: torch.nn.Module,
    reader: StoreReader,
    i: int,
    device: torch.device,
    steps: int,
    batch_size: int,
    png: Path,
    calibration: tuple[float, float],
    nifti: bool = False,
    log: Callable[[str], None] = python_log,
) -> dict[str, Any]:
    """One patient's row of explain.json, its montage saved as `png` (and with `nifti` its
    saliency on the scan's grid beside it: a patient whose scan it cannot be placed on keeps
    its row and montage, with a warning)."""
    info = reader.info
    names = {v: k for k, v in info.classes.items()}
    p = patient_saliency(model, reader, i, device, steps, batch_size, calibration)
    row = p.row(info.modalities, info.classes)
    label_text = f"{names.get(p.label, p.label)} ({p.label})" if p.label >= 0 else "?"
    fig = saliency_figure(p, info.modalities, row, label_text)
    row["png"] = save_figure(fig, png, tight=False).name
    if nifti:
        row["nifti"] = None
        try:
            path = png.with_name(png.stem + SALIENCY_SUFFIX)
            row["nifti"] = write_saliency_nifti(reader, i, p.attributions, path).name
        except DataError as exc:
            log(warning(f"no NIfTI: {exc}"))
    return row


FILE_NAME_CHARS = 100  # of an id kept in its file name (a name may hold 255 bytes)


def file_names(patient_ids: Sequence[str]) -> dict[str, str]:
    """A PNG file name for each id: safe (letters, digits, ``-_.``; no separator, no leading
    dot, at most FILE_NAME_CHARS of the id) and distinct, also where case is ignored (macOS,
    Windows). An id that is not already such a name keeps its safe part and gains a hash of
    the whole id, so ``a/b`` and ``a_b`` (or two 300-character ids alike in their first 100)
    never share a file."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for pid in patient_ids:
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in pid)
        name = safe
        if safe != pid or len(pid) > FILE_NAME_CHARS or safe.startswith(".") or not safe:
            name = f"{safe.lstrip('.')[:FILE_NAME_CHARS]}-{_digest(pid)}"
        while name.lower() in taken:  # a safe id equal to another's name, or in another case
            name = f"{name}-{_digest(name)}"
        taken.add(name.lower())
        names[pid] = f"{name}.png"
    return names


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that holds an earlier explain.json unless `overwrite`."""
    if (out / "explain.json").exists() and not overwrite:
        raise ConfigError(
            f"{out} already holds explain.json; choose another --out, or pass --overwrite to "
            "replace it",
            option="--out",
        )
