"""K-fold training: every fold's run folder under one, one after another or, on the CPU, in a
pool of worker processes (`--jobs`); the summary over folds and the out-of-fold predictions."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from smri.data import Split
from smri.jsonfiles import write_json
from smri.training.distributed import Dist
from smri.training.fit import Log, fit, silent
from smri.training.plan import Job, run_config
from smri.training.runs import (
    fold_summary,
    merge_predictions,
    read_metrics,
    read_run_json,
    split_json,
    summary_line,
)
from smri.training.tensorboard import resolve as resolve_tensorboard


def train_folds(
    job: Job,
    out: Path,
    splits: list[Split],
    *,
    log: Log,
    dist: Dist,
    progress: bool | None,
    tensorboard: bool,
) -> dict[str, Any]:
    """Every fold of a K-fold run (already started in `out`); the summary over folds."""
    cfg, setup, model_cfg = job.cfg, job.setup, job.model_cfg
    extra = {"log": log, "dist": dist, "progress": progress, "tensorboard": tensorboard}
    summaries: dict[int, dict[str, Any]] = {}
    pending = []
    for split in splits:
        fold_dir = out / f"fold{split.fold}"
        done = fold_dir / "summary.json"
        finished = dist.on_main(
            lambda done=done: read_run_json(done) if job.resume and done.exists() else None
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
        fold_job = FoldJob(job, out, log is not silent, tensorboard)
        summaries.update(fit_folds_in_parallel(fold_job, pending, cfg.jobs, log))
    for split in pending:
        if split.fold not in summaries:
            log(f"fold {split.fold}/{cfg.folds}")
            summaries[split.fold] = fit(job, out / f"fold{split.fold}", split, **extra)
    ordered = [summaries[s.fold] for s in splits]
    summary = dist.on_main(lambda: _finish_folds(out, job, ordered))
    log(summary_line(summary))
    return summary


def _finish_folds(out: Path, job: Job, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The K-fold summary.json, out-of-fold predictions.csv and loss_curve.png."""
    summary = fold_summary(summaries)
    write_json(out / "summary.json", summary)
    merge_predictions(out, len(summaries))
    from smri.plots import fold_loss_figure, save_figure

    rows = [read_metrics(out / f"fold{k}" / "metrics.csv") for k in range(len(summaries))]
    title = f"{job.model_cfg.name.upper()} loss, {job.cfg.folds} folds"
    save_figure(fold_loss_figure(rows, title=title), out / "loss_curve.png")
    return summary


# ------------------------------------------------------------------- folds in parallel (CPU)
@dataclass(frozen=True)
class FoldJob:
    """What a worker process needs to train one fold (picklable)."""

    job: Job
    out: Path
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
    fold_job, split = task

    def log(line: str) -> None:
        if fold_job.verbose:
            print(f"fold {split.fold}: {line}", flush=True)

    board = resolve_tensorboard(fold_job.tensorboard, silent)  # the parent said it once
    fold_dir = fold_job.out / f"fold{split.fold}"
    summary = fit(fold_job.job, fold_dir, split, log=log, progress=False, tensorboard=board)
    return split.fold, summary
