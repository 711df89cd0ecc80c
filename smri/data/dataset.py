"""`smri.StoreDataset`: a store's patients as a map-style torch Dataset of (images, label).

For training loops of your own, plain DataLoaders, MONAI or TorchIO transforms. An item is one
patient: ``images``, a float32 tensor ``(M, S, H, W)`` (modality, slice, height, width), and
``label``, an int (0/1; -1 where the store has none). smri's own training reads whole batches
through `smri.data.Batches` instead.
"""

from __future__ import annotations

import json
import os
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
    """Patients of an smri store as ``(images (M, S, H, W) float tensor, int label)``.

    The file is indexed here and then closed; each process (every DataLoader worker) opens it
    on its first item, so no HDF5 handle is carried across a fork or pickled.

    Args:
        store: a store written by `smri.preprocess`.
        rows: None for every patient; ``"train"`` or ``"val"`` for a side of the split of
            the run folder `run`; or a sequence of store rows (0-based ints) or patient ids.
        run: the run folder whose split.json `rows` ``"train"``/``"val"`` take (for a K-fold
            run, a fold folder such as ``run/fold2``).
        transform: called on each images tensor (a MONAI or TorchIO transform takes it as
            channels-first 3D: the channels are the modalities).
        dtype: the images' dtype.
    """

    def __init__(
        self,
        store: str | os.PathLike,
        rows: str | Sequence[int | str] | None = None,
        *,
        run: str | os.PathLike | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.path = Path(store)
        with StoreReader(self.path) as reader:
            self.info = reader.info
            ids, labels = reader.patient_ids, reader.labels.copy()
        self.identity = self.info.identity  # each process's reader checks it is this file
        self.rows = _select(rows, run, ids, self.path)
        self.patient_ids = [ids[r] for r in self.rows]
        self.labels = labels[self.rows].astype(np.int64)
        self.transform = transform
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        row = int(self.rows[index])  # IndexError past the end, as a Dataset should
        images = torch.from_numpy(self.reader.read(row)).to(self.dtype)
        if self.transform is not None:
            images = self.transform(images)
        return images, int(self.labels[index])

    def __repr__(self) -> str:
        m, s, h, w = self.info.volume_shape
        return f"StoreDataset({str(self.path)!r}, {len(self)} patients, images {m}x{s}x{h}x{w})"


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
