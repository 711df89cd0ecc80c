"""Training: one epoch, evaluation, fit (one run folder), K-fold runs, checkpoints, resume.

A run folder holds config.json, split.json, metrics.csv, last.pt, best.pt (best validation AUC),
predictions.csv, summary.json and loss_curve.png, and TensorBoard event files when the
tensorboard package is installed. Checkpoints carry the model config and the store's
preprocessing config, so `evaluate` and `predict` need nothing else.

Under torchrun (a `Dist` with world_size > 1, see smri.distributed) the same loop runs on every
rank with DistributedDataParallel: `--batch-size` is the global batch, each rank trains on its
strided shard of every epoch's order, validation is sharded and gathered so its metrics equal a
single-process evaluation, and rank 0 alone logs and writes the run folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smri.atomic import OutputLock, check_not_input
from smri.checkpoint import (
    checkpoint_header,
    load_checkpoint,
    load_weights,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
    store_fields,
)
from smri.config import TrainConfig
from smri.data import (
    Batches,
    Split,
    contiguous_shard,
    nonfinite_message,
    nonfinite_output_message,
    nonfinite_rows,
    random_flips,
    resolve_cache,
    stratified_folds,
    stratified_split,
)
from smri.distributed import SINGLE, Dist
from smri.distributed import describe as describe_dist
from smri.errors import ConfigError, DataError, plural
from smri.files import check_regular
from smri.metrics import binary_metrics
from smri.models import ModelConfig, build_model, check_config, count_parameters, field_note
from smri.runs import (
    fold_summary,
    merge_predictions,
    prepare_out,
    read_metrics,
    read_run_json,
    split_json,
    summary_line,
    versions,
    write_json,
    write_metrics,
    write_predictions,
)
from smri.store import StoreInfo, StoreReader
from smri.tensorboard_log import Board
from smri.tensorboard_log import resolve as resolve_tensorboard

Log = Callable[[str], None]


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Torch seed of an epoch (dropout); other ranks draw their own masks."""
    key = [seed, epoch, 0x70C4] if rank == 0 else [seed, epoch, 0x70C4, rank]
    return int(np.random.default_rng(key).integers(2**62))


def _silent(_line: str) -> None:
    """The log of ranks other than 0."""


# ------------------------------------------------------------------------------------ the loop
def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epoch: int,
    *,
    amp: bool,
    augment: bool,
    seed: int,
    dist: Dist = SINGLE,
    progress: bool | None = None,
) -> dict[str, float]:
    """One pass over the training batches; returns mean loss, accuracy, seconds, patients/s,
    and ``bad_step``: the first step whose loss was NaN or Inf on this rank (None: none was),
    ``bad_steps`` their number over all ranks. Flagged on the device (no wait per step); the
    caller stops the run before such an epoch is saved.

    With several ranks the loss, accuracy and patient count are summed over all of them.
    `progress`: a bar on rank 0 (None: when stderr is a terminal).
    """
    from tqdm import tqdm

    model.train()
    device = batches.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bad = torch.zeros(len(batches), device=device, dtype=torch.bool)
    n = 0
    start = time.perf_counter()
    show = (_tty() if progress is None else progress) and dist.is_main
    bar = tqdm(total=len(batches), desc=f"epoch {epoch}", leave=False, disable=not show)
    for step, (images, labels) in enumerate(batches.epoch(epoch)):
        if augment:
            images = random_flips(images, seed, epoch, step, dist.rank, dist.world_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bad[step] = ~torch.isfinite(loss.detach())
        loss_sum += loss.detach() * len(labels)
        correct += ((logits.detach() >= 0) == (labels >= 0.5)).sum()
        n += len(labels)
        bar.update()
    bar.close()
    steps = np.flatnonzero(bad.cpu().numpy())  # waits for the GPU
    loss_total, n_correct, n, n_bad = dist.sum([loss_sum.item(), correct.item(), n, len(steps)])
    mean_loss, acc = loss_total / n, n_correct / n
    seconds = time.perf_counter() - start
    return {"loss": mean_loss, "accuracy": acc, "seconds": seconds, "patients_per_s": n / seconds,
            "bad_step": int(steps[0]) if len(steps) else None, "bad_steps": int(n_bad)}  # fmt: skip


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Batches, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every patient of `batches`, in order (eval mode)."""
    model.eval()
    logits, labels = [], []
    for images, y in batches.epoch(0):
        with torch.autocast(batches.device.type, dtype=torch.bfloat16, enabled=amp):
            logits.append(model(images).float())
        labels.append(y)
    if not logits:  # a rank whose validation shard is empty
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    return torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(
    model: nn.Module, batches: Batches, criterion: nn.Module, amp: bool, dist: Dist = SINGLE
) -> tuple[dict[str, float], np.ndarray]:
    """Validation loss and metrics; also returns the probabilities of class 1.

    With several ranks, `batches` is this rank's contiguous shard; the logits and labels of
    all shards are gathered in order, so every rank computes the metrics of the whole split.
    """
    logits, labels = predict_batches(model, batches, amp)
    logits, labels = dist.gather(logits), dist.gather(labels)
    bad = np.flatnonzero(~np.isfinite(logits))
    if bad.size:  # never a metric: NaN is no class
        raise NonFiniteOutput(bad)
    loss = criterion(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return {"loss": loss, **binary_metrics(labels, probs)}, probs


def _tty() -> bool:
    return sys.stderr.isatty()


class NonFiniteOutput(DataError):
    """The model's output for some patients was NaN or Inf (positions in the batches' order)."""

    def __init__(self, positions: np.ndarray):
        super().__init__(f"the model's output is not a number for {len(positions)} patients")
        self.positions = positions


def _diverged(store: Path, epoch: int, tr: dict[str, Any], batches: Batches, ids: Sequence[str]
              ) -> str:  # fmt: skip
    """The line for an epoch whose training loss became NaN or Inf."""
    if tr["bad_step"] is None:  # on another rank
        return (f"training diverged: the loss became NaN or Inf at epoch {epoch} (on another "
                f"rank); this epoch was not saved ({_kept(epoch)})")  # fmt: skip
    step = tr["bad_step"]
    at = f"at epoch {epoch}, batch {step + 1} of {len(batches)}"
    found = nonfinite_rows(store, batches.batch_rows(epoch, step))
    if found:
        return nonfinite_message(store, *found[0]) + f" (the training loss became NaN {at})"
    return (
        f"training diverged: the loss became NaN or Inf {at}, with finite inputs; this epoch "
        f"was not saved ({_kept(epoch)}); try a lower --lr"
    )


def _kept(epoch: int) -> str:
    """What last.pt holds when epoch `epoch` fails."""
    return "no epoch had finished" if epoch <= 1 else f"last.pt holds epoch {epoch - 1}"


# ------------------------------------------------------------------------------------ one run
@dataclass
class _Setup:
    """What `fit` builds before the first epoch."""

    info: StoreInfo
    patient_ids: list[str]
    labels: np.ndarray
    device: torch.device
    cache: str
    amp: bool


def _prepare(store: Path, cfg: TrainConfig, dist: Dist = SINGLE) -> _Setup:
    with StoreReader(store) as reader:
        info, ids, labels = reader.info, reader.patient_ids, reader.labels.copy()
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    nbytes = int(np.sum(labels >= 0)) * math.prod(info.volume_shape) * np.dtype(info.dtype).itemsize
    if device.type == "cpu":  # every rank (or fold worker) holds its own copy in host memory
        nbytes *= max(dist.local_world_size, cfg.jobs if cfg.folds and cfg.fold is None else 1)
    cache = resolve_cache(cfg.cache, device, nbytes)
    return _Setup(info, ids, labels, device, cache, amp=cfg.amp and device.type == "cuda")


def check_global_batch(batch_size: int, world_size: int) -> None:
    """ConfigError unless the global batch splits evenly over the ranks."""
    if batch_size % world_size:
        raise ConfigError(
            f"{batch_size} is the global batch and must be divisible by the {world_size} "
            f"processes (WORLD_SIZE); use a multiple of {world_size}",
            option="--batch-size",
        )


def make_splits(setup: _Setup, cfg: TrainConfig, world_size: int = 1) -> list[Split]:
    """The run's split, or its K folds (each checked against the batch size)."""
    check_global_batch(cfg.batch_size, world_size)
    if cfg.jobs > 1:
        if cfg.folds is None:
            raise ConfigError("--jobs trains folds at once: it needs --folds K", option="--jobs")
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
    model_cfg: ModelConfig, cfg: TrainConfig, setup: _Setup, dist: Dist = SINGLE
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


def _build(
    model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device, dist: Dist, log: Log
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The network on `device` (the module checkpoints save), what training calls (DDP and
    torch.compile around it, where used) and what validation calls.

    Validation bypasses DDP: the first DDP forward after a training step broadcasts buffers,
    a collective that would hang waiting for a rank whose validation shard is empty.
    """
    torch.manual_seed(cfg.seed)
    net, synced = dist.prepare_model(build_model(model_cfg))
    if dist.enabled and not synced:
        log(
            f"note: {dist.world_size} processes on {device.type}: SyncBatchNorm needs CUDA, so "
            f"each rank normalises its own {cfg.batch_size // dist.world_size} patients "
            "(running statistics are rank 0's)"
        )
    net = net.to(device, memory_format=torch.channels_last_3d)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not cfg.compile:
        return net, dist.wrap(net), net  # dist.wrap(net) is net itself in a single process
    compiled = torch.compile(net)
    return net, torch.compile(dist.wrap(net)) if dist.enabled else compiled, compiled


def fit(
    store: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    split: Split,
    setup: _Setup,
    *,
    resume: bool = False,
    log: Log = print,
    dist: Dist = SINGLE,
    progress: bool | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train one split into run folder `out` (resuming from out/last.pt); returns the summary.

    `tensorboard`: rank 0 writes event files into `out` (see `smri.tensorboard_log`).
    """
    dist.on_main(lambda: out.mkdir(parents=True, exist_ok=True))
    device = setup.device
    net, model, eval_model = _build(model_cfg, cfg, device, dist, log)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)

    y_train = setup.labels[split.train]
    n_pos, n_neg = int((y_train == 1).sum()), int((y_train == 0).sum())
    pos_weight = torch.tensor(n_neg / n_pos) if cfg.class_weight == "auto" else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    criterion_dev = nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else pos_weight.to(device)
    )
    common = {"seed": cfg.seed, "cache": setup.cache, "device": device, "workers": cfg.workers}
    per_rank = cfg.batch_size // dist.world_size
    train_batches = Batches(
        store, split.train, batch_size=per_rank, shuffle=True, rank=dist.rank,
        world=dist.world_size, **common,
    )  # fmt: skip
    val_rows = contiguous_shard(split.val, dist.rank, dist.world_size)
    val_batches = Batches(store, val_rows, batch_size=cfg.batch_size, shuffle=False, **common)

    base = {
        **checkpoint_header(),
        "model_config": asdict(model_cfg),
        "train_config": asdict(cfg),
        "preprocess_config": setup.info.config,
        "store": store_fields(setup.info),
    }
    start_epoch, best = 0, {"epoch": 0, "auc": -math.inf, "loss": math.inf}
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.csv"
    resumable = resume and last_path.exists()
    ckpt = dist.on_main(lambda: load_checkpoint(last_path) if resumable else None)
    if ckpt is not None:  # every rank resumes from rank 0's last.pt
        load_weights(net, ckpt, model_cfg, str(last_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best = int(ckpt["epoch"]), {"loss": math.inf, **ckpt["best"]}
        log(f"resuming {out} after epoch {start_epoch}")
    rows = dist.on_main(lambda: _history(out, ckpt, start_epoch, resume)) or []
    if dist.is_main:
        write_metrics(metrics_path, rows)

    board = Board(out, start_epoch + 1, enabled=tensorboard and dist.is_main)
    params = count_parameters(net)
    ranks = f" | {dist.world_size} ranks x {per_rank} patients/step" if dist.enabled else ""
    log(
        f"{model_cfg.name}: {params:,} parameters | {device} | cache {setup.cache} | "
        f"bf16 {'on' if setup.amp else 'off'} | {len(split.train)} train / {len(split.val)} val"
        + ranks
    )
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            torch.manual_seed(_epoch_seed(cfg.seed, epoch, dist.rank))
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(
                model,
                train_batches,
                optimizer,
                criterion_dev,
                epoch,
                amp=setup.amp,
                augment=cfg.augment,
                seed=cfg.seed,
                dist=dist,
                progress=progress,
            )
            if tr["bad_steps"]:  # stop before a NaN epoch is saved or validated
                raise DataError(_diverged(store, epoch, tr, train_batches, setup.patient_ids))
            dist.sync_buffers(net)  # evaluate and save rank 0's BatchNorm statistics everywhere
            try:
                va, _ = evaluate(eval_model, val_batches, criterion, setup.amp, dist)
            except NonFiniteOutput as exc:
                rows, when = split.val[exc.positions], f"in validation after epoch {epoch}"
                then = f"this epoch was not saved ({_kept(epoch)}); try a lower --lr"
                raise DataError(
                    nonfinite_output_message(store, rows, setup.patient_ids, when, then)
                ) from None
            scheduler.step()
            row = {
                "epoch": epoch,
                "train_loss": tr["loss"],
                "train_accuracy": tr["accuracy"],
                **{f"val_{k}": v for k, v in va.items()},
                "lr": lr,
                "seconds": time.perf_counter() - t0,
                "patients_per_s": tr["patients_per_s"],
            }
            rows.append(row)
            score = va["auc"] if math.isfinite(va["auc"]) else -1.0
            # best validation AUC; on a tie (small cohorts saturate at 1.0) the lower loss wins
            improved = score > best["auc"] or (score == best["auc"] and va["loss"] < best["loss"])
            if improved:
                best = {"epoch": epoch, "auc": score, "loss": va["loss"]}
            if dist.is_main:  # every rank holds the same weights and metrics; one writes them
                if improved:
                    save_checkpoint(best_path, {**base, "epoch": epoch, "model": net.state_dict()})
                save_checkpoint(
                    last_path,
                    {
                        **base,
                        "epoch": epoch,
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": rng_state(),
                        "best": best,
                        # the history, should metrics.csv be lost or cut (plain floats)
                        "metrics": [{k: float(v) for k, v in r.items()} for r in rows],
                    },
                )
                write_metrics(metrics_path, rows)
                board.epoch(row)
            log(_epoch_line(row, cfg.epochs, improved))
        return _finish(
            out, split, setup, net, model_cfg, rows, params, val_batches, criterion, dist, board
        )
    finally:
        board.close()
        train_batches.close()
        val_batches.close()


def _history(
    out: Path, ckpt: dict[str, Any] | None, start_epoch: int, resume: bool
) -> list[dict[str, float]]:
    """The metrics rows of the epochs finished so far: last.pt's history when it carries one,
    else metrics.csv's rows up to last.pt's epoch, which must all be there (the summary needs
    the best epoch's row). On --resume without last.pt, metrics.csv must record no epoch: it
    is written after last.pt, so recorded epochs mean last.pt was lost, and starting over
    would replace best.pt."""
    last_path, metrics_path = out / "last.pt", out / "metrics.csv"
    if ckpt is None:
        recorded = read_metrics(metrics_path) if resume else []
        if recorded:
            recorded_epochs = _epochs([int(r["epoch"]) for r in recorded])
            raise DataError(
                f"{last_path}: missing, but {metrics_path.name} records finished "
                f"{recorded_epochs}; --resume continues from last.pt, so the run is left as it "
                "is (start a new run with --out)"
            )
        return []
    if "metrics" in ckpt:  # last.pt carries the history since smri wrote it there
        try:
            return [{k: float(v) for k, v in r.items()} for r in ckpt["metrics"]][:start_epoch]
        except (AttributeError, TypeError, ValueError) as exc:
            raise DataError(
                f"{last_path}: damaged smri checkpoint: bad metrics ({type(exc).__name__}: {exc})"
            ) from None
    rows = read_metrics(metrics_path, upto=start_epoch)
    have = [int(r["epoch"]) for r in rows]
    if have != list(range(1, start_epoch + 1)):
        found = "missing" if not metrics_path.exists() else f"records {_epochs(have)}"
        done = _epochs(range(1, start_epoch + 1))
        raise DataError(
            f"{metrics_path}: {found}, but {last_path} has finished {done}; the run's history "
            "is incomplete, so it cannot be continued (start a new run with --out)"
        )
    return rows


def _epochs(epochs: Sequence[int]) -> str:
    """'no epoch', 'epoch 3', 'epochs 1, 3' or 'epochs 1-30' (consecutive)."""
    epochs = list(epochs)
    if not epochs:
        return "no epoch"
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]}-{epochs[-1]}"
    return "epochs " + ", ".join(str(e) for e in epochs)


def _epoch_line(row: dict[str, float], epochs: int, improved: bool) -> str:
    return (
        f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.3f} | val loss {row['val_loss']:.4f} "
        f"acc {row['val_accuracy']:.3f} bacc {row['val_balanced_accuracy']:.3f} "
        f"auc {row['val_auc']:.3f} | lr {row['lr']:.2e} | {row['seconds']:.1f} s "
        f"{row['patients_per_s']:.1f} patients/s" + ("  *best" if improved else "")
    )


def _finish(
    out: Path,
    split: Split,
    setup: _Setup,
    net: nn.Module,
    model_cfg: ModelConfig,
    rows: list[dict[str, float]],
    params: int,
    val_batches: Batches,
    criterion: nn.Module,
    dist: Dist = SINGLE,
    board: Board | None = None,
) -> dict[str, Any]:
    """Predictions of best.pt on the validation split, summary.json and loss_curve.png (and
    the ROC of best.pt in the event files)."""
    ckpt = dist.on_main(lambda: load_checkpoint(out / "best.pt"))
    load_weights(net, ckpt, model_cfg, str(out / "best.pt"))
    try:
        metrics, probs = evaluate(net, val_batches, criterion, setup.amp, dist)
    except NonFiniteOutput as exc:
        when = f"for {out / 'best.pt'} on its validation patients"
        raise DataError(
            nonfinite_output_message(val_batches.store, split.val[exc.positions],
                                     setup.patient_ids, when, "no prediction is written")
        ) from None  # fmt: skip
    if board is not None:
        board.roc(setup.labels[split.val], probs, int(ckpt["epoch"]), model_cfg.name)
    return dist.on_main(
        lambda: _write_results(out, split, setup, model_cfg, rows, params, ckpt, metrics, probs)
    )


def _write_results(
    out: Path,
    split: Split,
    setup: _Setup,
    model_cfg: ModelConfig,
    rows: list[dict[str, float]],
    params: int,
    ckpt: dict[str, Any],
    metrics: dict[str, float],
    probs: np.ndarray,
) -> dict[str, Any]:
    """predictions.csv, summary.json and loss_curve.png of a finished run; returns the summary."""
    write_predictions(
        out / "predictions.csv",
        [setup.patient_ids[i] for i in split.val],
        setup.labels[split.val],
        probs,
        setup.info.classes,
        fold=split.fold,
    )
    best_row = next(r for r in rows if r["epoch"] == ckpt["epoch"])
    summary = {
        "model": model_cfg.name,
        "parameters": params,
        "device": str(setup.device),
        "device_name": _device_name(setup.device),
        "cache": setup.cache,
        "amp_bf16": setup.amp,
        "fold": split.fold,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "epochs": len(rows),
        "best_epoch": int(ckpt["epoch"]),
        "best": {k: v for k, v in metrics.items()},
        "best_row": best_row,
        "final": rows[-1],
        "epoch_seconds_mean": float(np.mean([r["seconds"] for r in rows])),
        "patients_per_s_mean": float(np.mean([r["patients_per_s"] for r in rows])),
    }
    write_json(out / "summary.json", summary)
    from smri.plots import loss_curve_figure, save_figure

    save_figure(
        loss_curve_figure(rows, title=f"{model_cfg.name.upper()} loss"), out / "loss_curve.png"
    )
    return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def plan(
    store: Path, model_cfg: ModelConfig, cfg: TrainConfig, dist: Dist = SINGLE
) -> tuple[_Setup, ModelConfig, list[Split]]:
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


def train(
    store: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Log = print,
    dist: Dist = SINGLE,
    progress: bool | None = None,
    tensorboard: bool | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train one split or every fold into `out`; for K folds, summary.json holds mean ± std.

    With a started `dist` every rank calls this; rank 0 alone logs and touches `out`, and
    every rank returns the same summary. `progress`: a bar per epoch (None: when stderr is a
    terminal); `quiet`: no log lines, from fold workers either; `tensorboard`: event files in
    each run or fold folder (None: when the
    tensorboard package is installed, saying once how to get it when not).
    """
    log = log if dist.is_main and not quiet else _silent
    board = resolve_tensorboard(tensorboard, log)
    extra = {"log": log, "dist": dist, "progress": progress, "tensorboard": board}
    setup, model_cfg, splits = plan(store, model_cfg, cfg, dist)
    split_dicts = [split_json(s, setup.patient_ids) for s in splits]
    if note := field_note(model_cfg):
        log(note)

    lock = OutputLock(out)

    def start_run() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # a second `smri train` (or --resume) of this folder stops here
        if resume:
            _check_resume(out, setup, split_dicts)
        else:  # --overwrite deletes the folder: never with the store in it
            check_not_input(out, {"STORE": store}, "--out", folder=True, inside=False,
                            holding=True)  # fmt: skip
            prepare_out(out, overwrite)
        write_json(out / "config.json", run_config(model_cfg, cfg, setup, dist))
        single = cfg.folds is None or cfg.fold is not None
        write_json(out / "split.json", split_dicts[0] if single else split_dicts)

    try:
        dist.on_main(start_run)
        if cfg.folds is None or cfg.fold is not None:
            return fit(store, model_cfg, cfg, out, splits[0], setup, resume=resume, **extra)
        return _train_folds(store, model_cfg, cfg, out, splits, setup, resume, extra)
    finally:
        lock.release()


def _train_folds(
    store: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    splits: list[Split],
    setup: _Setup,
    resume: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Every fold of a K-fold run (already started in `out`); the summary over folds."""
    log, dist, tensorboard = extra["log"], extra["dist"], extra["tensorboard"]
    summaries: dict[int, dict[str, Any]] = {}
    pending = []
    for split in splits:
        fold_dir = out / f"fold{split.fold}"
        done = fold_dir / "summary.json"
        finished = dist.on_main(
            lambda done=done: read_run_json(done) if resume and done.exists() else None
        )
        if finished is not None:
            log(f"fold {split.fold}/{cfg.folds}: already finished")
            summaries[split.fold] = finished
            continue

        def start_fold(fold_dir: Path = fold_dir, split: Split = split) -> None:
            fold_dir.mkdir(exist_ok=True)
            fold_cfg = replace(cfg, fold=split.fold)
            write_json(fold_dir / "config.json", run_config(model_cfg, fold_cfg, setup, dist))
            write_json(fold_dir / "split.json", split_json(split, setup.patient_ids))

        dist.on_main(start_fold)
        pending.append(split)
    if cfg.jobs > 1 and len(pending) > 1 and not dist.enabled:
        job = FoldJob(store, model_cfg, cfg, out, setup, resume, log is not _silent, tensorboard)
        summaries.update(fit_folds_in_parallel(job, pending, cfg.jobs, log))
    for split in pending:
        if split.fold not in summaries:
            log(f"fold {split.fold}/{cfg.folds}")
            fold_dir = out / f"fold{split.fold}"
            summaries[split.fold] = fit(
                store, model_cfg, cfg, fold_dir, split, setup, resume=resume, **extra
            )
    ordered = [summaries[s.fold] for s in splits]
    summary = dist.on_main(lambda: _finish_folds(out, model_cfg, cfg, ordered))
    log(summary_line(summary))
    return summary


# ------------------------------------------------------------------- folds in parallel (CPU)
@dataclass(frozen=True)
class FoldJob:
    """What a worker process needs to train one fold (picklable)."""

    store: Path
    model_cfg: ModelConfig
    cfg: TrainConfig
    out: Path
    setup: _Setup
    resume: bool
    verbose: bool
    tensorboard: bool | None


def fit_folds_in_parallel(
    job: FoldJob, splits: list[Split], jobs: int, log: Log
) -> dict[int, dict[str, Any]]:
    """Train `splits` in `jobs` worker processes at once, each on its share of the CPU threads;
    returns each fold's summary.

    Two single-threaded trainings do more per second than one on two threads (small 3D
    convolutions scale poorly across threads: benchmarks/RESULTS.md). Each worker prints its
    own lines, prefixed "fold k:". Ctrl-C or an error stops every worker; each fold keeps its
    last finished epoch in last.pt (checkpoints are written atomically), and workers end with
    the parent however it ends.
    """
    import multiprocessing

    from smri.parallel import cap_jobs

    jobs = min(cap_jobs(jobs, log), len(splits))
    threads = max(1, torch.get_num_threads() // jobs)
    log(f"folds {', '.join(str(s.fold) for s in splits)}: {jobs} at a time, "
        f"{threads} thread{'s' if threads > 1 else ''} each")  # fmt: skip
    ctx = multiprocessing.get_context("spawn")  # no forked torch or HDF5 state in the workers
    pool = ctx.Pool(jobs, initializer=_fold_worker_init, initargs=(os.getpid(), threads))
    done = False
    try:
        results = dict(pool.imap_unordered(_fold_worker, [(job, s) for s in splits]))
        pool.close()  # done: the workers leave on their own (terminating them here would
        done = True  # leave their semaphores to a resource_tracker warning)
        return results
    finally:
        if not done:
            pool.terminate()  # Ctrl-C, SIGTERM or an error in one fold: no worker outlives this
        pool.join()


def _fold_worker_init(parent: int, threads: int) -> None:
    """A fold worker: Ctrl-C is the parent's to handle; end if the parent is gone."""
    import threading

    from tqdm import tqdm

    from smri.parallel import worker_init

    worker_init(parent)  # the parent was killed: stop training into its run folder
    torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing semaphore; a worker ended by the parent (Ctrl-C,
    # SIGTERM) cannot release it, and Python would warn of "leaked semaphore objects"
    tqdm.set_lock(threading.RLock())


def _fold_worker(task: tuple[FoldJob, Split]) -> tuple[int, dict[str, Any]]:
    job, split = task

    def log(line: str) -> None:
        if job.verbose:
            print(f"fold {split.fold}: {line}", flush=True)

    board = resolve_tensorboard(job.tensorboard, _silent)  # the parent said it once
    fold_dir = job.out / f"fold{split.fold}"
    summary = fit(job.store, job.model_cfg, job.cfg, fold_dir, split, job.setup,
                  resume=job.resume, log=log, progress=False, tensorboard=board)  # fmt: skip
    return split.fold, summary


def _finish_folds(
    out: Path, model_cfg: ModelConfig, cfg: TrainConfig, summaries: list[dict[str, Any]]
) -> dict[str, Any]:
    """The K-fold summary.json, out-of-fold predictions.csv and loss_curve.png."""
    summary = fold_summary(summaries)
    write_json(out / "summary.json", summary)
    merge_predictions(out, len(summaries))
    from smri.plots import fold_loss_figure, save_figure

    rows = [read_metrics(out / f"fold{k}" / "metrics.csv") for k in range(len(summaries))]
    save_figure(
        fold_loss_figure(rows, title=f"{model_cfg.name.upper()} loss, {cfg.folds} folds"),
        out / "loss_curve.png",
    )
    return summary


def _check_resume(out: Path, setup: _Setup, splits: list[dict[str, Any]]) -> None:
    if not (out / "config.json").exists():
        raise ConfigError(f"{out} is not an smri run folder (no config.json)", option="--resume")
    saved = read_run_json(out / "config.json")["store"]
    diffs = [
        f"{k} {getattr(setup.info, k)} vs {saved[k]}"
        for k in ("modalities", "volume_shape")
        if list(getattr(setup.info, k)) != list(saved[k])
    ]
    if diffs:
        raise DataError(f"the store differs from the one {out} was trained on: " + "; ".join(diffs))
    saved_split = read_run_json(out / "split.json") if (out / "split.json").exists() else None
    if saved_split is not None:
        saved_list = saved_split if isinstance(saved_split, list) else [saved_split]
        if [(d["train"], d["val"]) for d in saved_list] != [(d["train"], d["val"]) for d in splits]:
            raise DataError(
                f"the split recomputed from the store differs from {out / 'split.json'}; "
                "was the store rebuilt with other patients? Start a new run instead"
            )


def load_run_config(run: Path) -> tuple[Path, ModelConfig, TrainConfig]:
    """Store path, model and training settings of an existing run folder (for --resume)."""
    path = Path(run) / "config.json"
    if not path.exists():
        if Path(run).is_dir():  # a run another process has just started: say that (OutputLocked)
            with OutputLock(Path(run)):
                pass
        raise ConfigError(f"{run} is not an smri run folder (no config.json)", option="--resume")
    try:
        config = json.loads(check_regular(path).read_text())
        model_cfg = ModelConfig.from_dict(config["model"])
        check_config(model_cfg)  # a config asking for an absurd model: refused, not built
        return (
            Path(config["store"]["path"]),
            model_cfg,
            TrainConfig.from_dict(config["train"]),
        )
    except (ConfigError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: damaged run config ({type(exc).__name__}: {exc}); start a new run with --out"
        ) from None
