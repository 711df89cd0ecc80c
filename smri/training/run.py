"""`train`: one split or every fold into a run folder, started afresh or resumed.

Under torchrun (a `Dist` with world_size > 1, see smri.training.distributed) every rank calls
`train`: `--batch-size` is the global batch, and rank 0 alone logs and writes the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smri.atomic import OutputLock, check_not_input
from smri.config import TrainConfig
from smri.errors import ConfigError, DataError, plural
from smri.files import check_regular
from smri.jsonfiles import write_json
from smri.messages import python_log, warning
from smri.networks import ModelConfig, check_config, field_note
from smri.training.distributed import SINGLE, Dist
from smri.training.fit import Log, fit, silent
from smri.training.folds import train_folds
from smri.training.plan import Job, Setup, plan, run_config
from smri.training.runs import prepare_out, read_run_json, split_json
from smri.training.tensorboard import resolve as resolve_tensorboard


def train(
    store: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Log = python_log,
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
    log = log if dist.is_main and not quiet else silent
    board = resolve_tensorboard(tensorboard, log)
    extra = {"log": log, "dist": dist, "progress": progress, "tensorboard": board}
    setup, model_cfg, splits = plan(store, model_cfg, cfg, dist)
    split_dicts = [split_json(s, setup.patient_ids, setup.held_out) for s in splits]
    if note := field_note(model_cfg):
        log(warning(note))
    if setup.held_out:
        log(f"held out as the test set ({cfg.holdout}): {plural(len(setup.held_out), 'patient')}, "
            "never trained or validated on")  # fmt: skip

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
        job = Job(store, model_cfg, cfg, setup, resume)
        if (cfg.folds is None or cfg.fold is not None) and cfg.seeds == 1:
            return fit(job, out, splits[0], **extra)
        return train_folds(job, out, splits, **extra)
    finally:
        lock.release()


def _check_resume(out: Path, setup: Setup, splits: list[dict[str, Any]]) -> None:
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
