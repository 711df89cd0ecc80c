"""Before any file is written: the store and settings checked, the device, cache and splits
resolved (`plan`), and what `smri train --dry-run` prints of them (`describe`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smri.config import TrainConfig
from smri.data import Split, resolve_cache, stratified_folds, stratified_split
from smri.data.holdout import read_holdout
from smri.errors import ConfigError, plural
from smri.model_io import resolve_device
from smri.networks import ModelConfig, build_model, count_parameters, field_note
from smri.store import StoreInfo, StoreReader
from smri.training.distributed import SINGLE, Dist
from smri.training.distributed import describe as describe_dist
from smri.training.runs import versions


@dataclass
class Setup:
    """What the store and the machine decide before the first epoch."""

    info: StoreInfo
    patient_ids: list[str]
    labels: np.ndarray  # -1 for unlabelled and held-out patients: never trained or validated on
    device: torch.device
    cache: str
    amp: bool
    held_out: tuple[str, ...] = ()  # the store's patients listed in --holdout


@dataclass(frozen=True)
class Job:
    """What every fit of one training shares: the store, the settings, their `Setup`, and
    whether each run folder continues from its last.pt (picklable: a fold worker gets it whole)."""

    store: Path
    model_cfg: ModelConfig
    cfg: TrainConfig
    setup: Setup
    resume: bool = False


def _prepare(store: Path, cfg: TrainConfig, dist: Dist = SINGLE) -> Setup:
    with StoreReader(store) as reader:
        info, ids, labels = reader.info, reader.patient_ids, reader.labels.copy()
    held_out: tuple[str, ...] = ()
    if cfg.holdout is not None:  # the untouched test patients: as if unlabelled from here on
        listed = set(read_holdout(Path(cfg.holdout)))
        out = np.array([pid in listed for pid in ids], dtype=bool)
        labels[out] = -1
        held_out = tuple(pid for pid, o in zip(ids, out, strict=True) if o)
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    nbytes = int(np.sum(labels >= 0)) * math.prod(info.volume_shape) * np.dtype(info.dtype).itemsize
    if device.type == "cpu":  # every rank (or fold worker) holds its own copy in host memory
        nbytes *= max(dist.local_world_size, cfg.jobs if cfg.folds and cfg.fold is None else 1)
    cache = resolve_cache(cfg.cache, device, nbytes)
    return Setup(info, ids, labels, device, cache, amp=cfg.amp and device.type == "cuda",
                 held_out=held_out)  # fmt: skip


def check_global_batch(batch_size: int, world_size: int) -> None:
    """ConfigError unless the global batch splits evenly over the ranks."""
    if batch_size % world_size:
        raise ConfigError(
            f"{batch_size} is the global batch and must be divisible by the {world_size} "
            f"processes (WORLD_SIZE); use a multiple of {world_size}",
            option="--batch-size",
        )


def make_splits(setup: Setup, cfg: TrainConfig, world_size: int = 1) -> list[Split]:
    """The run's split, or its K folds (each checked against the batch size)."""
    check_global_batch(cfg.batch_size, world_size)
    if cfg.seeds < 1:
        raise ConfigError(f"must be 1 or more, got {cfg.seeds}", option="--seeds")
    if not 0 <= cfg.repeat < cfg.seeds:
        raise ConfigError(f"must be in 0..{cfg.seeds - 1}, got {cfg.repeat}", option="repeat")
    if cfg.jobs > 1:
        if cfg.folds is None and cfg.seeds == 1:
            raise ConfigError(
                "--jobs trains folds (or --seeds repeats) at once: it needs --folds K or --seeds N",
                option="--jobs",
            )
        if setup.device.type != "cpu" or world_size > 1:
            raise ConfigError(
                "--jobs trains folds in parallel processes on the CPU; on a GPU train them one "
                "after another (--jobs 1), or spread one training over GPUs with torchrun",
                option="--jobs",
            )
    if cfg.fold is not None and cfg.folds is None:
        raise ConfigError("--fold needs --folds K", option="--fold")
    if cfg.folds is None:
        splits = [stratified_split(setup.labels, setup.info.classes, cfg.val_fraction, cfg.seed)]
    else:
        splits = stratified_folds(setup.labels, setup.info.classes, cfg.folds, cfg.seed)
        if cfg.fold is not None:
            if not 0 <= cfg.fold < cfg.folds:
                raise ConfigError(f"must be in 0..{cfg.folds - 1}, got {cfg.fold}", option="--fold")
            splits = [splits[cfg.fold]]
    n_train = min(len(s.train) for s in splits)
    if cfg.batch_size > n_train:
        raise ConfigError(
            f"batch size {cfg.batch_size} is larger than the training split "
            f"({plural(n_train, 'patient')})",
            option="--batch-size",
        )
    return splits


def run_config(
    model_cfg: ModelConfig, cfg: TrainConfig, setup: Setup, dist: Dist = SINGLE
) -> dict[str, Any]:
    """config.json content (a "distributed" block only for multi-process runs)."""
    config = {
        "model": asdict(model_cfg),
        "train": asdict(cfg),
        "resolved": {"device": str(setup.device), "cache": setup.cache, "amp_bf16": setup.amp},
        # absolute, so that --resume and `smri plot` find the store from any folder
        "store": {**setup.info.as_dict(), "path": str(Path(setup.info.path).resolve())},
        "versions": versions(),
    }
    if dist.enabled:
        config["distributed"] = describe_dist(dist, cfg.batch_size)
    return config


def plan(
    store: Path, model_cfg: ModelConfig, cfg: TrainConfig, dist: Dist = SINGLE
) -> tuple[Setup, ModelConfig, list[Split]]:
    """Check the store and settings; the resolved setup, model config and splits (no files)."""
    setup = _prepare(store, cfg, dist)
    model_cfg = replace(model_cfg, volume_shape=tuple(setup.info.volume_shape[1:]))
    build_model(model_cfg)  # shape errors before anything is written
    return setup, model_cfg, make_splits(setup, cfg, dist.world_size)


def describe(
    store: Path, model_cfg: ModelConfig, cfg: TrainConfig, dist: Dist = SINGLE
) -> list[str]:
    """What `smri train --dry-run` prints: model size, data, device, cache and split sizes."""
    setup, model_cfg, splits = plan(store, model_cfg, cfg, dist)
    model = build_model(model_cfg)
    cnn = count_parameters(model.cnn)
    m, s, h, w = setup.info.volume_shape
    lines = [
        f"model     {model_cfg.name} width {model_cfg.width:g}"
        f"{f' input pool {model_cfg.input_pool}' if model_cfg.input_pool > 1 else ''}: "
        f"{count_parameters(model):,} "
        f"parameters ({cnn:,} CNN, {count_parameters(model) - cnn:,} LSTM + head)",
        f"store     {store}: {setup.info.n_patients} patients, {m} modalities x {s}x{h}x{w} "
        f"{setup.info.dtype}",
        f"device    {setup.device} | cache {setup.cache} | bf16 {'on' if setup.amp else 'off'}",
    ]
    if dist.enabled:
        lines.append(
            f"ranks     {dist.world_size} ({dist.backend}): global batch {cfg.batch_size} = "
            f"{cfg.batch_size // dist.world_size} patients per rank per step"
        )
    for split in splits:
        where = "" if split.fold is None else f"fold {split.fold}: "
        lines.append(f"split     {where}{len(split.train)} train / {len(split.val)} val patients")
    note = field_note(model_cfg)
    return [*lines, note] if note else lines
