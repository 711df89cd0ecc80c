"""One run folder: `fit` trains one split, epoch by epoch, keeping checkpoints and metrics.

A run folder holds config.json, split.json, metrics.csv, last.pt, best.pt (best validation AUC),
predictions.csv, summary.json and loss_curve.png, and TensorBoard event files when the
tensorboard package is installed. Checkpoints carry the model config and the store's
preprocessing config, so `evaluate` and `predict` need nothing else. Under torchrun every rank
fits, and rank 0 alone logs and writes the folder.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smri.config import TrainConfig
from smri.data import (
    Batches,
    Split,
    contiguous_shard,
    nonfinite_message,
    nonfinite_output_message,
    nonfinite_rows,
)
from smri.errors import DataError
from smri.jsonfiles import write_json
from smri.messages import python_log, warning
from smri.metrics.calibration import logit_offset
from smri.model_io import (
    calibration_fields,
    checkpoint_header,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
    store_fields,
)
from smri.networks import ModelConfig, build_model, count_parameters
from smri.training.distributed import SINGLE, Dist
from smri.training.loop import NonFiniteOutput, evaluate, train_one_epoch
from smri.training.plan import Job
from smri.training.runs import read_metrics, write_metrics, write_predictions
from smri.training.tensorboard import Board, hparams_of

Log = Callable[[str], None]


def silent(_line: str) -> None:
    """The log of ranks other than 0."""


@dataclass
class _Training:
    """What one fit trains and validates with, built before its first epoch."""

    net: nn.Module  # the network: what checkpoints save
    model: nn.Module  # what training calls (DDP and torch.compile around `net`, where used)
    eval_model: nn.Module  # what validation calls
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module  # validation's loss, on the gathered logits (CPU)
    train_criterion: nn.Module  # the same loss on the device
    train_batches: Batches
    val_batches: Batches
    logit_offset: float  # undoes the class weighting: calibrated probabilities


def fit(
    job: Job,
    out: Path,
    split: Split,
    *,
    log: Log = python_log,
    dist: Dist = SINGLE,
    progress: bool | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train one split into run folder `out` (resuming from out/last.pt when `job.resume`);
    returns the summary.

    The steps: build the network, optimiser and batches; restore last.pt and the history;
    each epoch train and validate, then save best.pt (when it improved), last.pt and
    metrics.csv; at the end, predict the validation split with best.pt and write the results.
    `tensorboard`: rank 0 writes event files into `out` (see `smri.training.tensorboard`).
    """
    dist.on_main(lambda: out.mkdir(parents=True, exist_ok=True))
    run = _build(job, split, dist, log)
    base = {
        **checkpoint_header(),
        "model_config": asdict(job.model_cfg),
        "train_config": asdict(job.cfg),
        "preprocess_config": job.setup.info.config,
        "store": store_fields(job.setup.info),
        "calibration": calibration_fields(run.logit_offset),
    }
    start_epoch, best, rows = _restore(job, out, run, dist, log)
    board = Board(out, start_epoch + 1, enabled=tensorboard and dist.is_main)
    params = count_parameters(run.net)
    log(_header(job, split, params, dist))
    try:
        for epoch in range(start_epoch + 1, job.cfg.epochs + 1):
            row = _epoch(job, split, run, epoch, dist, progress)
            rows.append(row)
            score = row["val_auc"] if math.isfinite(row["val_auc"]) else -1.0
            # best validation AUC; on a tie (small cohorts saturate at 1.0) the lower loss wins
            improved = score > best["auc"] or (
                score == best["auc"] and row["val_loss"] < best["loss"]
            )
            if improved:
                best = {"epoch": epoch, "auc": score, "loss": row["val_loss"]}
            if dist.is_main:  # every rank holds the same weights and metrics; one writes them
                _save(out, base, run, epoch, best, rows, improved)
                board.epoch(row)
            log(_epoch_line(row, job.cfg.epochs, improved))
        return _finish(job, out, split, run, rows, params, dist, board)
    finally:
        board.close()
        run.train_batches.close()
        run.val_batches.close()


# ------------------------------------------------------------------------------ before epoch 1
def _build(job: Job, split: Split, dist: Dist, log: Log) -> _Training:
    """The network, optimiser, scheduler, losses and batches of one fit."""
    cfg, setup, device = job.cfg, job.setup, job.setup.device
    net, model, eval_model = _networks(job.model_cfg, cfg, device, dist, log)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)

    y_train = setup.labels[split.train]
    n_pos, n_neg = int((y_train == 1).sum()), int((y_train == 0).sum())
    pos_weight = torch.tensor(n_neg / n_pos) if cfg.class_weight == "auto" else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    train_criterion = nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else pos_weight.to(device)
    )
    common = {"seed": cfg.init_seed, "cache": setup.cache, "device": device, "workers": cfg.workers}
    common["identity"] = setup.info.identity  # the store file the split was made on
    per_rank = cfg.batch_size // dist.world_size
    train_batches = Batches(
        job.store, split.train, batch_size=per_rank, shuffle=True, rank=dist.rank,
        world=dist.world_size, **common,
    )  # fmt: skip
    val_rows = contiguous_shard(split.val, dist.rank, dist.world_size)
    val_batches = Batches(job.store, val_rows, batch_size=cfg.batch_size, shuffle=False, **common)
    offset = logit_offset(n_pos, n_neg, cfg.class_weight)
    return _Training(net, model, eval_model, optimizer, scheduler, criterion, train_criterion,
                     train_batches, val_batches, offset)  # fmt: skip


def _networks(
    model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device, dist: Dist, log: Log
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The network on `device` (the module checkpoints save), what training calls (DDP and
    torch.compile around it, where used) and what validation calls.

    Validation bypasses DDP: the first DDP forward after a training step broadcasts buffers,
    a collective that would hang waiting for a rank whose validation shard is empty.
    """
    torch.manual_seed(cfg.init_seed)
    net, synced = dist.prepare_model(build_model(model_cfg))
    if dist.enabled and not synced:
        log(
            warning(
                f"note: {dist.world_size} processes on {device.type}: SyncBatchNorm needs CUDA, so "
                f"each rank normalises its own {cfg.batch_size // dist.world_size} patients "
                "(running statistics are rank 0's)"
            )
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


def _restore(
    job: Job, out: Path, run: _Training, dist: Dist, log: Log
) -> tuple[int, dict[str, float], list[dict[str, float]]]:
    """The last finished epoch, the best so far and the metrics rows: from out/last.pt when
    resuming (every rank from rank 0's), else a fresh start. Rewrites metrics.csv to match."""
    start_epoch, best = 0, {"epoch": 0, "auc": -math.inf, "loss": math.inf}
    last_path = out / "last.pt"
    resumable = job.resume and last_path.exists()
    ckpt = dist.on_main(lambda: load_checkpoint(last_path) if resumable else None)
    if ckpt is not None:  # every rank resumes from rank 0's last.pt
        load_weights(run.net, ckpt, job.model_cfg, str(last_path))
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best = int(ckpt["epoch"]), {"loss": math.inf, **ckpt["best"]}
        log(f"resuming {out} after epoch {start_epoch}")
    rows = dist.on_main(lambda: _history(out, ckpt, start_epoch, job.resume)) or []
    if dist.is_main:
        write_metrics(out / "metrics.csv", rows)
    return start_epoch, best, rows


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


def _header(job: Job, split: Split, params: int, dist: Dist) -> str:
    """The line a fit starts with: model, device, cache, bf16, split sizes (and ranks)."""
    per_rank = job.cfg.batch_size // dist.world_size
    ranks = f" | {dist.world_size} ranks x {per_rank} patients/step" if dist.enabled else ""
    return (
        f"{job.model_cfg.name}: {params:,} parameters | {job.setup.device} | cache "
        f"{job.setup.cache} | bf16 {'on' if job.setup.amp else 'off'} | {len(split.train)} "
        f"train / {len(split.val)} val" + ranks
    )


# --------------------------------------------------------------------------------- every epoch
def _epoch(
    job: Job, split: Split, run: _Training, epoch: int, dist: Dist, progress: bool | None
) -> dict[str, float]:
    """Train and validate epoch `epoch`; its metrics.csv row. A NaN or Inf loss or validation
    output is a DataError, raised before the epoch is saved."""
    cfg, setup = job.cfg, job.setup
    torch.manual_seed(_epoch_seed(cfg.init_seed, epoch, dist.rank))
    t0 = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    tr = train_one_epoch(run.model, run.train_batches, run.optimizer, run.train_criterion, epoch,
                         amp=setup.amp, augment=cfg.augment, seed=cfg.init_seed, dist=dist,
                         progress=progress)  # fmt: skip
    if tr["bad_steps"]:  # stop before a NaN epoch is saved or validated
        raise DataError(_diverged(job.store, epoch, tr, run.train_batches))
    dist.sync_buffers(run.net)  # evaluate and save rank 0's BatchNorm statistics everywhere
    try:
        va, _ = evaluate(run.eval_model, run.val_batches, run.criterion, setup.amp, dist,
                         offset=run.logit_offset)  # fmt: skip
    except NonFiniteOutput as exc:
        rows, when = split.val[exc.positions], f"in validation after epoch {epoch}"
        then = f"this epoch was not saved ({_kept(epoch)}); try a lower --lr"
        raise DataError(
            nonfinite_output_message(job.store, rows, setup.patient_ids, when, then)
        ) from None
    run.scheduler.step()
    return {
        "epoch": epoch,
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        **{f"val_{k}": v for k, v in va.items()},
        "lr": lr,
        "seconds": time.perf_counter() - t0,
        "patients_per_s": tr["patients_per_s"],
    }


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Torch seed of an epoch (dropout); other ranks draw their own masks."""
    key = [seed, epoch, 0x70C4] if rank == 0 else [seed, epoch, 0x70C4, rank]
    return int(np.random.default_rng(key).integers(2**62))


def _diverged(store: Path, epoch: int, tr: dict[str, Any], batches: Batches) -> str:
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


def _save(
    out: Path,
    base: dict[str, Any],
    run: _Training,
    epoch: int,
    best: dict[str, float],
    rows: list[dict[str, float]],
    improved: bool,
) -> None:
    """best.pt when the epoch improved; last.pt (all a resumed run needs); metrics.csv."""
    if improved:
        save_checkpoint(out / "best.pt", {**base, "epoch": epoch, "model": run.net.state_dict()})
    save_checkpoint(
        out / "last.pt",
        {
            **base,
            "epoch": epoch,
            "model": run.net.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng_state(),
            "best": best,
            # the history, should metrics.csv be lost or cut (plain floats)
            "metrics": [{k: float(v) for k, v in r.items()} for r in rows],
        },
    )
    write_metrics(out / "metrics.csv", rows)


def _epoch_line(row: dict[str, float], epochs: int, improved: bool) -> str:
    return (
        f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.3f} | val loss {row['val_loss']:.4f} "
        f"acc {row['val_accuracy']:.3f} bacc {row['val_balanced_accuracy']:.3f} "
        f"auc {row['val_auc']:.3f} | lr {row['lr']:.2e} | {row['seconds']:.1f} s "
        f"{row['patients_per_s']:.1f} patients/s" + ("  *best" if improved else "")
    )


# -------------------------------------------------------------------------------- after the last
def _finish(
    job: Job,
    out: Path,
    split: Split,
    run: _Training,
    rows: list[dict[str, float]],
    params: int,
    dist: Dist,
    board: Board | None = None,
) -> dict[str, Any]:
    """Predictions of best.pt on the validation split, summary.json and loss_curve.png (and
    the ROC of best.pt in the event files)."""
    setup = job.setup
    ckpt = dist.on_main(lambda: load_checkpoint(out / "best.pt"))
    load_weights(run.net, ckpt, job.model_cfg, str(out / "best.pt"))
    try:
        metrics, probs = evaluate(run.net, run.val_batches, run.criterion, setup.amp, dist,
                                  offset=run.logit_offset)  # fmt: skip
    except NonFiniteOutput as exc:
        when = f"for {out / 'best.pt'} on its validation patients"
        raise DataError(
            nonfinite_output_message(run.val_batches.store, split.val[exc.positions],
                                     setup.patient_ids, when, "no prediction is written")
        ) from None  # fmt: skip
    if board is not None:
        board.roc(setup.labels[split.val], probs, int(ckpt["epoch"]), job.model_cfg.name)
        board.hparams(hparams_of(job.model_cfg, job.cfg), metrics, int(ckpt["epoch"]))
    return dist.on_main(lambda: _write_results(job, out, split, rows, params, ckpt, metrics, probs))


def _write_results(
    job: Job,
    out: Path,
    split: Split,
    rows: list[dict[str, float]],
    params: int,
    ckpt: dict[str, Any],
    metrics: dict[str, float],
    probs: np.ndarray,
) -> dict[str, Any]:
    """predictions.csv, summary.json and loss_curve.png of a finished run; returns the summary."""
    setup, model_cfg = job.setup, job.model_cfg
    write_predictions(
        out / "predictions.csv",
        [setup.patient_ids[i] for i in split.val],
        setup.labels[split.val],
        probs,
        setup.info.classes,
        fold=split.fold,
        threshold=ckpt["calibration"]["threshold"],
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
