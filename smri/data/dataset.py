"""`smri.StoreDataset`: a store's patients as a map-style torch Dataset.

For training loops of your own, plain DataLoaders, MONAI or TorchIO transforms. An item is one
patient: ``(images, label)`` with ``images`` a float32 tensor ``(M, S, H, W)`` (modality, slice,
height, width) and ``label`` an int (0/1; -1 where the store has none); or, with
``as_dict=True``, a dictionary in MONAI's form whose image carries its affine (`sample`).
smri's own training reads whole batches through `smri.data.Batches` instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from smri.data.lazy import LazyReader
from smri.errors import ConfigError, DataError, plural
from smri.store import StoreReader

SIDES = ("train", "val")


class StoreDataset(LazyReader, Dataset):
    """Patients of an smri store as ``(images (M, S, H, W) float tensor, int label)``, or as
    dictionaries (``as_dict=True``) that MONAI's dictionary transforms and TorchIO take.

    The file is indexed here and then closed; each process (every DataLoader worker) opens it
    on its first item, so no HDF5 handle is carried across a fork or pickled.

    Args:
        store: a store written by `smri.preprocess`.
        rows: None for every patient; ``"train"`` or ``"val"`` for a side of the split of
            the run folder `run`; or a sequence of store rows (0-based ints) or patient ids.
        run: the run folder whose split.json `rows` ``"train"``/``"val"`` take (for a K-fold
            run, a fold folder such as ``run/fold2``).
        transform: called on each images tensor (a MONAI or TorchIO transform takes it as
            channels-first 3D: the channels are the modalities); with ``as_dict=True``, on
            each sample dictionary (MONAI's ``RandFlipd(keys=["image", "mask"])`` and alike).
        dtype: the images' dtype.
        as_dict: yield ``{"image", "affine", "label", "patient_id"}`` (plus ``"mask"`` and
            ``"has_mask"`` when the store holds segmentations): ``image`` is a MONAI
            ``MetaTensor`` carrying the patient's affine when MONAI is installed, else a
            tensor; ``affine`` is that 4x4 float64 matrix, voxel index (slice, y, x) to
            scanner millimetres (a store before schema version 3 records none: the spacing
            alone, and ``affine_known`` False); ``mask`` is ``(1, S, H, W)`` uint8 (zeros and
            ``has_mask`` False for a patient without one).
    """

    def __init__(
        self,
        store: str | os.PathLike,
        rows: str | Sequence[int | str] | None = None,
        *,
        run: str | os.PathLike | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        dtype: torch.dtype = torch.float32,
        as_dict: bool = False,
    ):
        if not as_dict:
            _refuse_dictionary_transform(transform)
        self.path = Path(store)
        with StoreReader(self.path) as reader:
            self.info = reader.info
            ids, labels = reader.patient_ids, reader.labels.copy()
            self.masks = as_dict and bool(reader.mask_table()["has_mask"].any())
        self.identity = self.info.identity  # each process's reader checks it is this file
        self.rows = _select(rows, run, ids, self.path)
        self.patient_ids = [ids[r] for r in self.rows]
        self.labels = labels[self.rows].astype(np.int64)
        self.transform = transform
        self.dtype = dtype
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        row = int(self.rows[index])  # IndexError past the end, as a Dataset should
        images = torch.from_numpy(self.reader.read(row)).to(self.dtype)
        if self.as_dict:
            item = self.sample(index, images)
            return item if self.transform is None else self.transform(item)
        if self.transform is not None:
            images = self.transform(images)
        return images, int(self.labels[index])

    def sample(self, index: int, images: torch.Tensor) -> dict[str, Any]:
        """Item `index` as a dictionary (``as_dict``), its `images` already read."""
        row, pid = int(self.rows[index]), self.patient_ids[index]
        place = self.reader.placement(row)
        affine = torch.from_numpy(place.affine)
        meta = {"patient_id": pid, "filename_or_obj": pid, "affine_known": place.known}
        out: dict[str, Any] = {
            "image": _with_affine(images, affine, meta),
            "affine": affine,
            "affine_known": place.known,
            "label": int(self.labels[index]),
            "patient_id": pid,
        }
        if self.masks:
            mask = self.reader.read_mask(row)
            out["has_mask"] = mask is not None
            if mask is None:
                mask = np.zeros(images.shape[1:], dtype=np.uint8)
            out["mask"] = _with_affine(torch.from_numpy(mask)[None], affine, meta)
        return out

    def __repr__(self) -> str:
        m, s, h, w = self.info.volume_shape
        return f"StoreDataset({str(self.path)!r}, {len(self)} patients, images {m}x{s}x{h}x{w})"


@functools.cache
def _meta_tensor() -> type | None:
    """MONAI's MetaTensor class, or None where MONAI is not installed."""
    try:
        from monai.data import MetaTensor
    except ImportError:
        return None
    return MetaTensor


def _with_affine(t: torch.Tensor, affine: torch.Tensor, meta: dict[str, Any]) -> Any:
    """`t` as a MetaTensor carrying `affine` (channels first, RAS millimetres, as MONAI's
    NIfTI reader gives); `t` itself without MONAI."""
    cls = _meta_tensor()
    if cls is None:
        return t
    return cls(t, affine=affine.clone(), meta={**meta, "original_channel_dim": 0, "space": "RAS"})


def _refuse_dictionary_transform(transform: Any) -> None:
    """ConfigError when `transform` (or one inside a Compose) is a MONAI dictionary transform:
    tuple samples would reach it as a tensor and fail with an unrelated-looking message."""
    monai = sys.modules.get("monai.transforms")  # a MONAI transform means MONAI is imported
    base = getattr(monai, "MapTransform", None)
    stack = [transform]
    while base is not None and stack:
        t = stack.pop()
        if isinstance(t, base):
            raise ConfigError(
                f"transform: {type(t).__name__} is a dictionary transform (it takes samples "
                "such as {'image': ..., 'label': ...}); pass as_dict=True for such samples"
            )
        inner = getattr(t, "transforms", None)  # a Compose's
        if isinstance(inner, (list, tuple)):
            stack.extend(inner)


def _select(
    rows: str | Sequence[int | str] | None, run: Any, ids: list[str], path: Path
) -> np.ndarray:
    """Store rows of the dataset, in the order given (a split side: in store order)."""
    if rows is None:
        if run is not None:
            raise ConfigError("run= selects a split side: give rows='train' or rows='val' too")
        return np.arange(len(ids))
    if isinstance(rows, str):
        return _split_rows(rows, run, ids, path)
    index = {pid: k for k, pid in enumerate(ids)}
    out = []
    for r in rows:
        if isinstance(r, str):
            if r not in index:
                raise DataError(f"{path}: no patient '{r}' in the store ({len(ids)} patients)")
            out.append(index[r])
        elif isinstance(r, (int, np.integer)) and not isinstance(r, bool) and 0 <= r < len(ids):
            out.append(int(r))  # no negative rows: -1 is as much not a row as len(ids) is
        else:
            raise ConfigError(
                f"rows: expected row numbers in 0..{len(ids) - 1} or patient ids, got {r!r}"
            )
    return np.array(out, dtype=np.int64)


def _split_rows(side: str, run: Any, ids: list[str], path: Path) -> np.ndarray:
    """Rows of `side` of the run folder's split.json."""
    if side not in SIDES:
        raise ConfigError(f"rows: expected 'train', 'val', None or a sequence, got {side!r}")
    if run is None:
        raise ConfigError(f"rows={side!r} needs run=RUN_DIR: the run whose split.json to use")
    split_path = Path(run) / "split.json"
    try:
        split = json.loads(split_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{split_path}: cannot read the run's split ({exc})") from None
    if isinstance(split, list):
        raise ConfigError(
            f"{run} is a {len(split)}-fold run: give one fold's folder, "
            f"e.g. run={str(Path(run) / 'fold0')!r}"
        )
    index = {pid: k for k, pid in enumerate(ids)}
    missing = [pid for pid in split[side] if pid not in index]
    if missing:
        raise DataError(
            f"{split_path}: {plural(len(missing), side + ' patient')} "
            f"{'is' if len(missing) == 1 else 'are'} not in {path} (first: "
            f"{missing[0]}); was the run trained on another store?"
        )
    return np.sort(np.array([index[pid] for pid in split[side]], dtype=np.int64))
