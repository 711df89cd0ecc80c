"""`smri train`: a run folder from a store, on one process or under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from smri import api
from smri.api import RUN_OPTIONS
from smri.cli.common import (
    api_defaults,
    cache_options,
    handle_errors,
    path_option_type,
    quiet_option,
    setting,
)
from smri.errors import ConfigError, RunInterrupted, SmriError

if TYPE_CHECKING:
    from smri.training import Dist

TRAIN = api_defaults(api.train)


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


@click.command()
@click.argument("store", required=False, type=path_option_type(dir_okay=False))
@click.option(
    "--model",
    type=setting("model"),
    default=TRAIN["model"],
    show_default=True,
    help="CNN that embeds each modality volume.",
)
@click.option(
    "--width",
    type=setting("width"),
    default=TRAIN["width"],
    show_default=True,
    help="Channel multiplier of the conv blocks.",
)
@click.option(
    "--dropout",
    type=setting("dropout"),
    default=TRAIN["dropout"],
    show_default=True,
    help="Dropout rate on the LSTM's output and on CNN1's FC embedding (the seed specifies "
    "none; smri's 0 was chosen by 5-fold CV on the demo cohort over 0.5: docs/results.md).",
)
@click.option(
    "--input-pool",
    type=setting("input_pool"),
    default=TRAIN["input_pool"],
    show_default=True,
    help="Average each slice over K x K voxels before the first conv block (the seed has none: "
    "1). K must divide the in-plane size. Well above 46 voxels in-plane CNN2 learns little "
    "without it; at 120x120, K = 3 (40x40 pooled) learnt in every fold: docs/results.md.",
)
@click.option(
    "--epochs",
    type=setting("epochs"),
    default=TRAIN["epochs"],
    show_default=True,
    help="Training epochs (the seed states none; smri's choice, not cross-validated; "
    "make experiments' CPU demo uses 20; see --input-pool for larger in-plane sizes).",
)
@click.option(
    "--batch-size",
    type=setting("batch_size"),
    default=TRAIN["batch_size"],
    show_default=True,
    help="Patients per batch (under torchrun: the global batch, split evenly over the ranks). "
    "The seed states none; make experiments' CPU demo uses 4, chosen over 8 by 5-fold CV on the "
    "demo cohort: docs/results.md.",
)
@click.option(
    "--lr",
    type=setting("lr"),
    default=TRAIN["lr"],
    show_default=True,
    help="AdamW learning rate (cosine decay over the epochs; the seed states none: 1e-3 was "
    "chosen over 3e-4 and 3e-3 by 5-fold CV on the demo cohort: docs/results.md).",
)
@click.option(
    "--weight-decay",
    type=setting("weight_decay"),
    default=TRAIN["weight_decay"],
    show_default=True,
    help="AdamW weight decay.",
)
@click.option(
    "--seed",
    type=setting("seed"),
    default=TRAIN["seed"],
    show_default=True,
    help="Seed of the split, the initial weights and every epoch's shuffle.",
)
@click.option(
    "--val-fraction",
    type=setting("val_fraction"),
    default=TRAIN["val_fraction"],
    show_default=True,
    help="Share of each class held out for validation (ignored with --folds).",
)
@click.option(
    "--folds",
    type=setting("folds"),
    default=TRAIN["folds"],
    help="K-fold cross-validation: train all K folds, report mean ± std "
    "[default: none: one split by --val-fraction].",
)
@click.option(
    "--fold",
    type=setting("fold"),
    default=TRAIN["fold"],
    help="With --folds K, train only fold i (0-based) [default: all K folds].",
)
@click.option(
    "--class-weight",
    type=setting("class_weight"),
    default=TRAIN["class_weight"],
    show_default=True,
    help="auto: BCE pos_weight = n_neg / n_pos of the training split.",
)
@click.option(
    "--device",
    default=TRAIN["device"],
    show_default=True,
    help="auto (CUDA when present), cuda, cuda:N or cpu.",
)
@click.option(
    "--amp/--no-amp",
    default=TRAIN["amp"],
    show_default=True,
    help="bf16 autocast on CUDA (ignored on CPU).",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    default=TRAIN["compile"],
    help="torch.compile the model: faster steps after ~30 s of compilation per graph; "
    "worth it for long runs [default: off].",
)
@cache_options(TRAIN)
@click.option(
    "--augment/--no-augment",
    default=TRAIN["augment"],
    show_default=True,
    help="Random flips along each spatial axis, all modalities of a patient together (not in "
    "the seed: smri's choice, by 5-fold CV on the demo cohort: docs/results.md).",
)
@click.option(
    "--jobs",
    type=setting("jobs"),
    default=TRAIN["jobs"],
    show_default=True,
    help="On a CPU, with --folds or --seeds: trainings at once, each in its own process on its "
    "share of the cores, at most one per core (2 on 2 cores: about 1.4x the folds per hour).",
)
@click.option(
    "--seeds",
    type=setting("seeds"),
    default=TRAIN["seeds"],
    show_default=True,
    help="Train every fold (or the one split) N times, each with its own initialisation, batch "
    "order, flips and dropout; the splits stay --seed's. Trainings go to seed0/, seed1/, ...; "
    "the summary and smri plot's comparisons pool them (training variation included).",
)
@click.option(
    "--holdout",
    type=path_option_type(dir_okay=False, exists=True),
    default=None,
    help="A holdout list (CSV with a patient_id column, written by smri holdout): the untouched "
    "test patients, never trained or validated on [default: none].",
)
@click.option(
    "--out",
    type=path_option_type(file_okay=False),
    default=None,
    help="Run folder [default: runs/<model>-<date>-<time>].",
)
@click.option(
    "--resume",
    type=path_option_type(file_okay=False, exists=True),
    default=None,
    help="Continue the run in this folder from its last.pt [default: none: a new run].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing run folder given by --out [default: off].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check everything, print the plan, train nothing [default: off].",
)
@click.option(
    "--tensorboard/--no-tensorboard",
    default=TRAIN["tensorboard"],
    help="Write TensorBoard event files into the run folder (and each fold's) [default: when "
    "the tensorboard package is installed; pip install 'smri[tensorboard]'].",
)
@quiet_option(", no per-epoch or info lines")
@click.pass_context
@handle_errors
def train(ctx: click.Context, store: Path | None, **opts) -> None:
    """Train a CNN-LSTM on STORE (written by `smri preprocess`) into a run folder.

    \b
    smri train demo.h5 --model cnn2 --epochs 30
    smri train demo.h5 --model cnn3 --folds 5 --out runs/cnn3-cv
    smri train --resume runs/cnn3-cv          # after an interruption
    torchrun --nproc_per_node 4 -m smri train demo.h5   # 4 GPUs (DDP); --batch-size is global
    """
    import os

    from smri.training import check_global_batch, distributed

    spec = distributed.from_env(os.environ)  # torchrun's variables; one process without them
    resume: Path | None = opts["resume"]
    if resume is not None:  # stricter than the API: a setting given at all, even its default
        given = [f"--{n.replace('_', '-')}" for n in RUN_OPTIONS
                 if _given(ctx, "compile_" if n == "compile" else n)]  # fmt: skip
        if given and not opts["overwrite"]:
            raise ConfigError(f"--resume continues a run with its own settings; drop {given[0]}",
                              option=given[0])  # fmt: skip
    elif store is not None:
        check_global_batch(opts["batch_size"], spec.world_size)  # before joining the group
    with distributed.process_group(spec, opts["device"]) as dist:
        try:
            _train(dist, store, opts)
        except (SmriError, OSError) as exc:
            if dist.is_main:
                raise
            sys.exit(2 if isinstance(exc, ConfigError) else 1)  # rank 0 prints the message


def _train(dist: Dist, store: Path | None, opts: dict[str, Any]) -> None:
    """The body of `smri train` on one rank (the only one without torchrun)."""
    echo = click.echo if dist.is_main else _silent
    opts = dict(opts)
    opts["compile"] = opts.pop("compile_")
    try:
        out = api.train(store, **opts, log=click.echo, dist=dist)
    except RunInterrupted as exc:
        echo(f"\n{exc}", err=True)
        sys.exit(130)
    if not opts["dry_run"]:
        echo(f"run folder: {out}")


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """click.echo of ranks other than 0."""
