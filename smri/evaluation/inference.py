"""Using a trained model (a checkpoint, or a folder written by `smri export`): metrics on a store
(`smri evaluate`), with the share of its saliency inside the tumour when asked, and predictions
for raw folders (`smri predict`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smri.data import Batches, nonfinite_output_message, resolve_cache
from smri.errors import ConfigError, DataError, PatientError
from smri.evaluation.explanation import patient_saliency, rounded, run_validation_ids
from smri.evaluation.saliency import DEFAULT_STEPS, METHOD, share_inside
from smri.messages import python_log, warning
from smri.metrics import binary_metrics
from smri.metrics.calibration import brier, ece, undo_class_weight
from smri.model_io import (
    calibration_of,
    check_compatible,
    load_model,
    model_from_checkpoint,
    resolve_device,
)
from smri.store import StoreReader


@dataclass
class Evaluation:
    """Per-patient probabilities of class 1 on a store, and metrics over its labelled patients."""

    patient_ids: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    metrics: dict[str, float]
    classes: dict[str, int]
    threshold: float  # class 1 at and above it (calibrated probabilities)
    calibration: str  # how the probabilities were calibrated


@dataclass(frozen=True)
class Prediction:
    """One patient folder's result."""

    patient_id: str
    probability: float  # calibrated probability of class 1
    predicted: str  # class 1 at and above the model's threshold


@torch.no_grad()
def _probabilities(
    model: torch.nn.Module, images: torch.Tensor, amp: bool, offset: float
) -> np.ndarray:
    """Calibrated probabilities of class 1: the logits shifted by the checkpoint's offset."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(images)
    return undo_class_weight(logits.float().cpu().numpy(), offset)


def evaluate_store(
    checkpoint: Path,
    store: Path,
    *,
    device: str = "auto",
    batch_size: int = 8,
    cache: str = "auto",
    workers: int = 0,
    amp: bool = True,
    progress: bool = False,
    saliency_patients: int = 0,
    saliency_steps: int = 32,
    patients: Sequence[str] | None = None,
) -> Evaluation:
    """Run the checkpoint (or exported folder) on every patient of `store` (which must match
    its training store), or on `patients` only (ids; DataError naming one the store lacks);
    `progress` shows a bar over the batches. With `saliency_patients` and a store with masks,
    the metrics add the mean share of saliency inside the tumour over that many patients at
    most (`saliency_in_tumour`, below)."""
    from tqdm.auto import tqdm

    ckpt = load_model(checkpoint)
    offset, threshold, method = calibration_of(ckpt, str(checkpoint))
    with StoreReader(store) as reader:
        info, ids, labels = reader.info, reader.patient_ids, reader.labels.copy()
    check_compatible(ckpt["store"], info, str(checkpoint))
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, dev, str(checkpoint))  # before any data is loaded
    all_ids = ids
    rows = np.arange(len(ids)) if patients is None else _rows_of(patients, ids, store)
    ids, labels = [ids[i] for i in rows], labels[rows]
    nbytes = len(ids) * int(np.prod(info.volume_shape)) * np.dtype(info.dtype).itemsize
    batches = Batches(
        store, rows, batch_size=batch_size, seed=0, shuffle=False, device=dev, workers=workers,
        cache=resolve_cache(cache, dev, nbytes), identity=info.identity,
    )  # fmt: skip
    use_amp = amp and dev.type == "cuda"
    bar = tqdm(total=len(batches), desc="evaluate", unit="batch", disable=not progress)
    try:
        probs = []
        for x, _ in batches.epoch(0):
            probs.append(_probabilities(model, x, use_amp, offset))
            bar.update()
        probs = np.concatenate(probs)
    finally:
        bar.close()
        batches.close()
    bad = np.flatnonzero(~np.isfinite(probs))
    if bad.size:  # never counted as a class
        when = f"for {checkpoint} on {store}"
        then = "no metric is computed from it"
        raise DataError(nonfinite_output_message(store, rows[bad], all_ids, when, then))
    known = labels >= 0
    metrics = {"n": int(known.sum()), **(binary_metrics(labels[known], probs[known], threshold)
                                         if known.any() else {})}  # fmt: skip
    if known.any():
        metrics["brier"] = brier(labels[known], probs[known])
        metrics["ece"] = ece(labels[known], probs[known])
    if saliency_patients > 0:  # where the model looks: its saliency against the tumour masks
        with StoreReader(store, expect=info.identity) as reader:
            metrics.update(saliency_in_tumour(
                model, reader, Path(checkpoint), dev, limit=saliency_patients,
                steps=saliency_steps, batch_size=batch_size, progress=progress,
            ) or {})  # fmt: skip
    return Evaluation(ids, labels, probs, metrics, dict(info.classes), threshold, method)


def _rows_of(patients: Sequence[str], ids: list[str], store: Path) -> np.ndarray:
    """Store rows of `patients`, in store order; DataError for an id the store lacks."""
    index = {pid: i for i, pid in enumerate(ids)}
    missing = [pid for pid in patients if pid not in index]
    if missing:
        raise DataError(
            f"{store}: no patient {missing[0]!r}"
            + (
                f" (and {len(missing) - 1} more of the {len(patients)} asked for)"
                if len(missing) > 1
                else ""
            )
        )
    return np.array(sorted({index[pid] for pid in patients}), dtype=np.int64)


def saliency_in_tumour(
    model: torch.nn.Module,
    reader: StoreReader,
    checkpoint: Path,
    device: torch.device,
    *,
    limit: int,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any] | None:
    """`smri evaluate`'s saliency number: the mean share inside the tumour over at most `limit`
    patients with tumour voxels in the slab (the run's validation patients when the store holds
    them, else all), in store order. None when the store has no such patient."""
    from tqdm.auto import tqdm

    if not reader.has_masks or limit < 1:
        return None
    val = set(run_validation_ids(checkpoint) or ())
    table = reader.mask_table()
    usable = table["has_mask"] & (table["tumour_voxels_in_slab"] > 0)
    rows = np.flatnonzero(usable)
    chosen = [i for i in rows if reader.patient_ids[i] in val] or list(rows)
    chosen = chosen[:limit]
    if not chosen:
        return None
    shares = []
    for i in tqdm(chosen, desc="saliency", unit="patient", disable=not progress):
        p = patient_saliency(model, reader, int(i), device, steps, batch_size)
        shares.append(share_inside(p.attributions, p.mask))
    shares = [s for s in shares if s is not None]
    return {
        "saliency_in_tumour_mean": rounded(float(np.mean(shares))) if shares else None,
        "saliency_in_tumour_n": len(shares),
        "saliency_method": f"{METHOD}, {steps} steps, baseline zeros, toward the predicted class",
    }


def predict_folders(
    checkpoint: Path,
    folders: Sequence[Path],
    *,
    device: str = "auto",
    batch_size: int = 4,
    amp: bool = True,
    warn: Callable[[str], None] = python_log,
    progress: bool = False,
) -> list[Prediction]:
    """Preprocess each raw patient folder exactly as the training store was made, then predict.

    A folder that cannot be used is reported through `warn` and skipped; none usable is an error.
    `progress` shows a bar over the folders (preprocessing them is most of the time).
    """
    from tqdm.auto import tqdm

    from smri.discovery import raw_patient
    from smri.preprocessing import PreprocessConfig, load_patient

    ckpt = load_model(checkpoint)
    offset, threshold, _ = calibration_of(ckpt, str(checkpoint))
    try:
        cfg = PreprocessConfig.from_dict({**ckpt["preprocess_config"], "masks": False})
    except (TypeError, ValueError, ConfigError) as exc:  # a value of the file, not an option
        raise DataError(
            f"{checkpoint}: damaged smri checkpoint or export: bad preprocess_config ({exc})"
        ) from None
    expected = tuple(ckpt["store"]["volume_shape"])
    modalities = tuple(ckpt["store"]["modalities"])
    names = {v: k for k, v in ckpt["store"]["classes"].items()}
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, dev, str(checkpoint))  # refused before any folder is read
    ids, given, arrays, seen = [], [], [], set()
    for folder in tqdm(folders, desc="predict", unit="patient", disable=not progress):
        key = Path(folder).resolve()
        if key in seen:
            warn(warning(f"skipped: {folder} is listed again; predicted once"))
            continue
        seen.add(key)
        try:
            patient = raw_patient(Path(folder), modalities)
            images = load_patient(patient, cfg).images
            if images.shape != expected:
                raise PatientError(
                    patient.patient_id,
                    f"preprocessed shape {images.shape} differs from the model's {expected}",
                )
        except PatientError as exc:
            warn(warning(f"skipped: {exc}"))
            continue
        ids.append(patient.patient_id)
        given.append(str(folder))
        arrays.append(images)
    if not ids:
        raise DataError("no patient folder could be used (see the messages above)")
    use_amp = amp and dev.type == "cuda"
    probs = []
    for start in range(0, len(arrays), batch_size):
        batch = torch.from_numpy(np.stack(arrays[start : start + batch_size])).to(dev).float()
        probs.append(_probabilities(model, batch, use_amp, offset))
    p = np.concatenate(probs)
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:  # finite inputs (preprocessing refuses others) and finite weights: never seen
        raise DataError(
            f"{given[bad[0]]}: the model's output is {p[bad[0]]} (not a number); no prediction "
            "is made from it"
        )
    # Folders of one name (a/P and b/P) would be two rows "P": the folder as given tells them apart
    counts = {pid: ids.count(pid) for pid in ids}
    ids = [pid if counts[pid] == 1 else folder for pid, folder in zip(ids, given, strict=True)]
    return [
        Prediction(pid, float(prob), names.get(int(prob >= threshold), str(int(prob >= threshold))))
        for pid, prob in zip(ids, p, strict=True)
    ]
