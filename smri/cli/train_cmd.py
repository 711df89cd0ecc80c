"""`smri models`, `smri train`, `smri evaluate`, `smri predict` and `smri plot`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from smri import api
from smri.api import RUN_OPTIONS
from smri.cli.common import (
    FiniteFloatRange,
    OutputFile,
    api_defaults,
    handle_errors,
    path_option_type,
    quiet_option,
)
from smri.config import CACHE_MODES, CLASS_WEIGHTS, MODEL_NAMES, ModelConfig
from smri.discovery import DEFAULT_MODALITIES
from smri.errors import ConfigError, RunInterrupted, SmriError

if TYPE_CHECKING:
    from smri.training import Dist

TRAIN = api_defaults(api.train)
EVALUATE = api_defaults(api.evaluate)
PREDICT = api_defaults(api.predict)


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"expected M x S x H x W such as 4x32x240x240, got {text!r}", "--shape")
    return shape  # type: ignore[return-value]


F = TypeVar("F", bound=Callable[..., Any])


def cache_options(defaults: dict[str, Any]) -> Callable[[F], F]:
    """--cache and --workers of train and evaluate, with their API function's defaults."""

    def decorate(func: F) -> F:
        func = click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=defaults["workers"],
            show_default=True,
            help="DataLoader workers when streaming (--cache none).",
        )(func)
        return click.option(
            "--cache",
            type=click.Choice(CACHE_MODES),
            default=defaults["cache"],
            show_default=True,
            help="Keep the store on the GPU / in RAM (auto: when it fits), or stream it (none).",
        )(func)

    return decorate


@click.command()
@click.option(
    "--shape",
    default="x".join(str(n) for n in (len(DEFAULT_MODALITIES), *ModelConfig().volume_shape)),
    show_default=True,
    help="Input geometry M x S x H x W (modalities x slices x height x width).",
)
@click.option(
    "--width",
    type=float,
    default=ModelConfig().width,
    show_default=True,
    help="Channel multiplier of the conv blocks (16-32-64-128 at 1).",
)
@click.option(
    "--input-pool",
    type=click.IntRange(min=1),
    default=ModelConfig().input_pool,
    show_default=True,
    help="Average each slice over K x K voxels before the first conv block (1: off, the seed).",
)
@handle_errors
def models(shape: str, width: float, input_pool: int) -> None:
    """List the models and their parameter counts at a given input geometry."""
    from smri.models import build_model, count_parameters

    m, s, h, w = _parse_shape(shape)
    about = {
        "cnn1": "conv blocks -> flatten -> FC 256 (baseline, large)",
        "cnn2": "conv blocks -> global average pooling",
        "cnn3": "CNN2 + squeeze-and-excitation (r=8)",
    }
    rows = []
    for name in MODEL_NAMES:  # all built (or refused) before a line is printed
        cfg = ModelConfig(name=name, volume_shape=(s, h, w), width=width, input_pool=input_pool)
        model = build_model(cfg)
        cnn, total = count_parameters(model.cnn), count_parameters(model)
        rows.append(
            f"{name:<6} {cnn:>12,} {total - cnn:>10,} {total:>12,} {model.cnn.out_features:>6}  "
            f"{about[name]}"
        )
    click.echo(
        f"input {m}x{s}x{h}x{w}, width {width:g}"
        + (f", pooled {input_pool}x{input_pool} in-plane" if input_pool > 1 else "")
        + f"; the CNN is shared across the {m} modalities"
    )
    click.echo(f"{'model':<6} {'CNN':>12} {'LSTM+head':>10} {'total':>12} {'embed':>6}  design")
    click.echo("\n".join(rows))


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


@click.command()
@click.argument("store", required=False, type=path_option_type(dir_okay=False))
@click.option(
    "--model",
    type=click.Choice(MODEL_NAMES),
    default=TRAIN["model"],
    show_default=True,
    help="CNN that embeds each modality volume.",
)
@click.option(
    "--width",
    type=float,
    default=TRAIN["width"],
    show_default=True,
    help="Channel multiplier of the conv blocks.",
)
@click.option(
    "--dropout",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=TRAIN["dropout"],
    show_default=True,
    help="Dropout rate on the LSTM's output and on CNN1's FC embedding (the seed specifies "
    "none; smri's 0 was chosen by 5-fold CV on the demo cohort over 0.5: docs/results.md).",
)
@click.option(
    "--input-pool",
    type=click.IntRange(min=1),
    default=TRAIN["input_pool"],
    show_default=True,
    help="Average each slice over K x K voxels before the first conv block (the seed has none: "
    "1). K must divide the in-plane size. Well above 46 voxels in-plane CNN2 learns little "
    "without it; at 120x120, K = 3 (40x40 pooled) learnt in every fold: docs/results.md.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=TRAIN["epochs"],
    show_default=True,
    help="Training epochs (the seed states none; smri's choice, not cross-validated; "
    "make experiments' CPU demo uses 20; see --input-pool for larger in-plane sizes).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=TRAIN["batch_size"],
    show_default=True,
    help="Patients per batch (under torchrun: the global batch, split evenly over the ranks). "
    "The seed states none; make experiments' CPU demo uses 4, chosen over 8 by 5-fold CV on the "
    "demo cohort: docs/results.md.",
)
@click.option(
    "--lr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=TRAIN["lr"],
    show_default=True,
    help="AdamW learning rate (cosine decay over the epochs; the seed states none: 1e-3 was "
    "chosen over 3e-4 and 3e-3 by 5-fold CV on the demo cohort: docs/results.md).",
)
@click.option(
    "--weight-decay",
    type=FiniteFloatRange(min=0),
    default=TRAIN["weight_decay"],
    show_default=True,
    help="AdamW weight decay.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**64 - 1),  # numpy and torch seeds are unsigned 64-bit
    default=TRAIN["seed"],
    show_default=True,
    help="Seed of the split, the initial weights and every epoch's shuffle.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=TRAIN["val_fraction"],
    show_default=True,
    help="Share of each class held out for validation (ignored with --folds).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=TRAIN["folds"],
    help="K-fold cross-validation: train all K folds, report mean ± std "
    "[default: none: one split by --val-fraction].",
)
@click.option(
    "--fold",
    type=click.IntRange(min=0),
    default=TRAIN["fold"],
    help="With --folds K, train only fold i (0-based) [default: all K folds].",
)
@click.option(
    "--class-weight",
    type=click.Choice(CLASS_WEIGHTS),
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
    type=click.IntRange(min=1),
    default=TRAIN["jobs"],
    show_default=True,
    help="With --folds on a CPU: folds trained at once, each in its own process on its share "
    "of the cores, at most one per core (2 on 2 cores: about 1.4x the folds per hour).",
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


@click.command()
@click.argument("checkpoint", metavar="MODEL", type=path_option_type(exists=True))
@click.argument("store", type=path_option_type(dir_okay=False))
@click.option("--out", type=path_option_type(file_okay=False), default=None,
              help="Folder for metrics.json, predictions.csv, roc.png [default: eval-<store "
                   "name> beside the checkpoint, or inside an exported MODEL folder].")  # fmt: skip
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=EVALUATE["batch_size"],
    show_default=True,
    help="Patients per batch.",
)
@click.option("--device", default=EVALUATE["device"], show_default=True,
              help="auto, cuda, cuda:N or cpu.")  # fmt: skip
@cache_options(EVALUATE)
@click.option(
    "--saliency-patients",
    type=click.IntRange(min=0),
    default=EVALUATE["saliency_patients"],
    show_default=True,
    help="When STORE has masks: the share of saliency inside the tumour, as smri explain "
    "computes it, averaged over this many patients with tumour in the slab at most (the run's "
    "validation patients when STORE holds them, else all); 0 skips it.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the results of an earlier evaluate in --out [default: off: refuse].",
)
@quiet_option("")
@handle_errors
def evaluate(checkpoint: Path, store: Path, out: Path | None, batch_size: int, device: str,
             cache: str, workers: int, saliency_patients: int, overwrite: bool,
             quiet: bool) -> None:  # fmt: skip
    """Metrics of MODEL on every labelled patient of STORE (e.g. a held-out cohort).

    MODEL is a checkpoint (a run's best.pt) or a folder written by `smri export`. Prints the
    metrics as JSON; writes them with predictions.csv and a ROC curve to --out.
    """
    report = api.evaluate(checkpoint, store, out=out, batch_size=batch_size, device=device,
                          cache=cache, workers=workers, saliency_patients=saliency_patients,
                          overwrite=overwrite, quiet=quiet,
                          log=lambda line: click.echo(line, err=True))  # fmt: skip
    where = report.pop("out")
    from smri.jsonfiles import json_text

    click.echo(json_text(report))  # NaN (an AUC of one class) as null, as in metrics.json
    click.echo(f"written to {where}", err=True)


@click.command()
@click.argument("checkpoint", metavar="MODEL", type=path_option_type(exists=True))
@click.argument("patient_dirs", nargs=-1, required=True,
                type=path_option_type(file_okay=False, exists=True))  # fmt: skip
@click.option(
    "--csv",
    "csv_path",
    type=OutputFile(),
    default=None,
    help="Also write patient_id,probability,predicted to this CSV file "
    "[default: none: print only].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=PREDICT["batch_size"],
    show_default=True,
    help="Patients per forward pass.",
)
@click.option("--device", default=PREDICT["device"], show_default=True,
              help="auto, cuda, cuda:N or cpu.")  # fmt: skip
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing --csv file [default: off: refuse]."
)
@quiet_option("")
@handle_errors
def predict(checkpoint: Path, patient_dirs: tuple[Path, ...], csv_path: Path | None,
            batch_size: int, device: str, overwrite: bool, quiet: bool) -> None:  # fmt: skip
    """Probability of class 1 for raw NIfTI patient folders, preprocessed as the store was.

    MODEL is a checkpoint (a run's best.pt) or a folder written by `smri export`. A folder is
    a BraTS-style patient folder (2018-2021 or 2023 names), a BIDS subject (sub-01, one
    session) or a BIDS session folder (sub-01/ses-02, predicted as sub-01_ses-02).
    """
    results = api.predict(checkpoint, patient_dirs, csv=csv_path, batch_size=batch_size,
                          device=device, overwrite=overwrite, quiet=quiet,
                          log=lambda line: click.echo(line, err=True))  # fmt: skip
    width = max(len("patient_id"), *(len(r.patient_id) for r in results))
    click.echo(f"{'patient_id':<{width}}  probability  predicted")
    for r in results:
        click.echo(f"{r.patient_id:<{width}}  {r.probability:>11.4f}  {r.predicted}")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True,
                type=path_option_type(file_okay=False, exists=True))  # fmt: skip
@click.option(
    "--out",
    type=path_option_type(file_okay=False),
    default=Path("figures"),
    show_default=True,
    help="Folder for the PNG figures, summary.md and summary.json.",
)
@click.option(
    "--store",
    type=path_option_type(dir_okay=False, exists=True),
    default=None,
    help="The store the runs trained on, for the intensity baseline  [default: the path "
    "recorded in the first run's config.json]",
)
@handle_errors
def plot(run_dirs: tuple[Path, ...], out: Path, store: Path | None) -> None:
    """Figures and summary comparing runs: loss, accuracy and ROC (K folds as mean ± std
    bands); every model's AUC and balanced accuracy with 95 % intervals, paired tests between
    models on the same patients, and the majority and intensity baselines."""
    from smri.comparison import plot_runs

    for path in plot_runs(run_dirs, out, store):
        click.echo(str(path))
