"""K-fold training: every fold's run folder under one, one after another or, on the CPU, in a
pool of worker processes (`--jobs`); the summary over folds and the out-of-fold predictions."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from smri.config import TrainConfig
from smri.data import Split
from smri.jsonfiles import write_json
from smri.messages import python_log
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


@dataclass(frozen=True, eq=False)
class Member:
    """One training of a run: its split (a fold, or the one split), its repeat (`--seeds`),
    and its folder under the run folder: fold3, or seed1/fold3 and seed1 with repeats."""

    split: Split
    repeat: int
    folder: str

    @property
    def label(self) -> str:
        return self.folder.replace("/", " ").replace("fold", "fold ").replace("seed", "seed ")


def members(cfg: TrainConfig, splits: list[Split]) -> list[Member]:
    """Every training of a run: each split once, or `cfg.seeds` times (seed0/ ... seedN-1/)."""
    if cfg.seeds == 1:
        return [Member(s, 0, f"fold{s.fold}") for s in splits]
    return [
        Member(s, r, f"seed{r}" + ("" if s.fold is None else f"/fold{s.fold}"))
        for r in range(cfg.seeds)
        for s in splits
    ]


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
    """Every training of a run of K folds or repeats (already started in `out`): each member
    finished or resumed, one after another or in a pool of CPU processes; the summary over
    them all."""
    extra = {"log": log, "dist": dist, "progress": progress, "tensorboard": tensorboard}
    everyone = members(job.cfg, splits)
    summaries: dict[str, dict[str, Any]] = {}
    pending = []
    for m in everyone:
        done = out / m.folder / "summary.json"
        finished = dist.on_main(
            lambda done=done: read_run_json(done) if job.resume and done.exists() else None
        )
        if finished is not None:
            log(f"{_title(m, job.cfg, everyone)}: already finished")
            summaries[m.folder] = finished
            continue
        dist.on_main(lambda m=m: _start_member(job, out, m, dist))
        pending.append(m)
    if job.cfg.jobs > 1 and len(pending) > 1 and not dist.enabled:
        # workers print their lines for the command line; a Python caller's default log
        # (logging) cannot reach into them, so there they keep quiet
        fold_job = FoldJob(job, out, log not in (silent, python_log), tensorboard)
        summaries.update(fit_folds_in_parallel(fold_job, pending, job.cfg.jobs, log))
    for m in pending:
        if m.folder not in summaries:
            log(_title(m, job.cfg, everyone))
            summaries[m.folder] = fit(_member_job(job, m), out / m.folder, m.split, **extra)
    summary = dist.on_main(lambda: _finish(out, job, everyone, summaries))
    log(summary_line(summary))
    return summary


def _title(m: Member, cfg: TrainConfig, everyone: list[Member]) -> str:
    """'fold 3/5' (as smri always said), or 'seed 1 fold 3 (9/15)' with repeats."""
    if cfg.seeds == 1:
        return f"fold {m.split.fold}/{cfg.folds}"
    k = [x.folder for x in everyone].index(m.folder)
    return f"{m.label} ({k + 1}/{len(everyone)})"


def _member_job(job: Job, m: Member) -> Job:
    return replace(job, cfg=replace(job.cfg, fold=m.split.fold, repeat=m.repeat))


def _start_member(job: Job, out: Path, m: Member, dist: Dist) -> None:
    folder = out / m.folder
    folder.mkdir(parents=True, exist_ok=True)
    mjob = _member_job(job, m)
    write_json(folder / "config.json", run_config(job.model_cfg, mjob.cfg, job.setup, dist))
    write_json(
        folder / "split.json", split_json(m.split, job.setup.patient_ids, job.setup.held_out)
    )


def _finish(
    out: Path, job: Job, everyone: list[Member], summaries: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """summary.json over every member (and, with repeats of K folds, each seed's own)."""
    if job.cfg.seeds == 1:
        return _finish_folds(out, job, [summaries[m.folder] for m in everyone])
    if job.cfg.folds is not None:
        for r in range(job.cfg.seeds):
            mine = [summaries[m.folder] for m in everyone if m.repeat == r]
            _finish_folds(out / f"seed{r}", job, mine)
    summary = {
        **fold_summary([summaries[m.folder] for m in everyone]),
        "folds": job.cfg.folds if job.cfg.fold is None else None,
        "seeds": job.cfg.seeds,
        "members": [m.folder for m in everyone],
    }
    write_json(out / "summary.json", summary)
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
    job: FoldJob, pending: list[Member], jobs: int, log: Log
) -> dict[str, dict[str, Any]]:
    """Train the `pending` members in `jobs` worker processes at once, each on its share of the
    CPU threads; returns each member's summary by its folder.

    Two single-threaded trainings do more per second than one on two threads (small 3D
    convolutions scale poorly across threads: benchmarks/RESULTS.md); but the last trainings,
    when fewer remain than workers, would leave cores idle, so they get those cores' threads
    from the start (decided by their place in the order, so a run is the same every time).
    Each worker prints its own lines, prefixed "fold k:". Ctrl-C or an error stops every
    worker; each fold keeps its last finished epoch in last.pt (checkpoints are written
    atomically), and workers end with the parent however it ends.
    """
    import multiprocessing

    from smri.parallel import cap_jobs

    jobs = min(cap_jobs(jobs, log), len(pending))
    total = torch.get_num_threads()
    threads = max(1, total // jobs)
    tail = len(pending) % jobs  # trainings that run with fewer beside them than workers
    plan = [threads] * (len(pending) - tail) + [max(1, total // tail)] * tail if tail else None
    plan = plan or [threads] * len(pending)
    plain = all(m.repeat == 0 and "/" not in m.folder for m in pending)  # as smri always said
    names = ("folds " + ", ".join(str(m.split.fold) for m in pending) if plain
             else ", ".join(m.label for m in pending))  # fmt: skip
    last = f", the last {tail} with {plan[-1]}" if tail and plan[-1] != threads else ""
    log(f"{names}: {jobs} at a time, "
        f"{threads} thread{'s' if threads > 1 else ''} each{last}")  # fmt: skip
    ctx = multiprocessing.get_context("spawn")  # no forked torch or HDF5 state in the workers
    pool = ctx.Pool(jobs, initializer=_fold_worker_init, initargs=(os.getpid(), threads))
    done = False
    try:
        tasks = [(job, m, n) for m, n in zip(pending, plan, strict=True)]
        results = dict(pool.imap_unordered(_fold_worker, tasks))
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

    from tqdm.auto import tqdm

    from smri.parallel import worker_init

    worker_init(parent)  # the parent was killed: stop training into its run folder
    torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing semaphore; a worker ended by the parent (Ctrl-C,
    # SIGTERM) cannot release it, and Python would warn of "leaked semaphore objects"
    tqdm.set_lock(threading.RLock())


def _fold_worker(task: tuple[FoldJob, Member, int]) -> tuple[str, dict[str, Any]]:
    fold_job, m, threads = task
    torch.set_num_threads(threads)

    def log(line: str) -> None:
        if fold_job.verbose:
            print(f"{m.label}: {line}", flush=True)

    board = resolve_tensorboard(fold_job.tensorboard, silent)  # the parent said it once
    member_dir = fold_job.out / m.folder
    job = _member_job(fold_job.job, m)
    summary = fit(job, member_dir, m.split, log=log, progress=False, tensorboard=board)
    return m.folder, summary
