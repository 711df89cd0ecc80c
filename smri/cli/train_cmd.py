"""`smri models`, `smri train`, `smri evaluate`, `smri predict` and `smri plot`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from smri.cli.common import FiniteFloatRange, OutputFile, handle_errors, path_option_type
from smri.errors import ConfigError, SmriError

if TYPE_CHECKING:
    from smri.distributed import Dist

MODEL_CHOICES = ("cnn1", "cnn2", "cnn3")
EVAL_FILES = ("metrics.json", "predictions.csv", "roc.png")  # what `smri evaluate` writes
# Options that define a run: on --resume they come from the run's config.json.
RUN_OPTIONS = (
    "model", "width", "dropout", "epochs", "batch_size", "lr", "weight_decay", "seed",
    "val_fraction", "folds", "fold", "class_weight", "amp", "compile", "augment",
)  # fmt: skip


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"expected M x S x H x W such as 4x32x240x240, got {text!r}", "--shape")
    return shape  # type: ignore[return-value]


F = TypeVar("F", bound=Callable[..., Any])


def cache_options(workers: int) -> Callable[[F], F]:
    """--cache and --workers, shared by train, evaluate and predict."""

    def decorate(func: F) -> F:
        func = click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=workers,
            show_default=True,
            help="DataLoader workers when streaming (--cache none).",
        )(func)
        return click.option(
            "--cache",
            type=click.Choice(["auto", "device", "ram", "none"]),
            default="auto",
            show_default=True,
            help="Keep the store on the GPU / in RAM (auto: when it fits), or stream it (none).",
        )(func)

    return decorate


@click.command()
@click.option(
    "--shape",
    default="4x32x240x240",
    show_default=True,
    help="Input geometry M x S x H x W (modalities x slices x height x width).",
)
@click.option(
    "--width",
    type=float,
    default=1.0,
    show_default=True,
    help="Channel multiplier of the conv blocks (16-32-64-128 at 1).",
)
@handle_errors
def models(shape: str, width: float) -> None:
    """List the models and their parameter counts at a given input geometry."""
    from smri.models import MODEL_NAMES, ModelConfig, build_model, count_parameters

    m, s, h, w = _parse_shape(shape)
    about = {
        "cnn1": "conv blocks -> flatten -> FC 256 (baseline, large)",
        "cnn2": "conv blocks -> global average pooling",
        "cnn3": "CNN2 + squeeze-and-excitation (r=8)",
    }
    click.echo(
        f"input {m}x{s}x{h}x{w}, width {width:g}; the CNN is shared across the {m} modalities"
    )
    click.echo(f"{'model':<6} {'CNN':>12} {'LSTM+head':>10} {'total':>12} {'embed':>6}  design")
    for name in MODEL_NAMES:
        model = build_model(ModelConfig(name=name, volume_shape=(s, h, w), width=width))
        cnn, total = count_parameters(model.cnn), count_parameters(model)
        click.echo(
            f"{name:<6} {cnn:>12,} {total - cnn:>10,} {total:>12,} {model.cnn.out_features:>6}  "
            f"{about[name]}"
        )


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


@click.command()
@click.argument("store", required=False, type=path_option_type(dir_okay=False))
@click.option(
    "--model",
    type=click.Choice(MODEL_CHOICES),
    default="cnn2",
    show_default=True,
    help="CNN that embeds each modality volume.",
)
@click.option(
    "--width",
    type=float,
    default=1.0,
    show_default=True,
    help="Channel multiplier of the conv blocks.",
)
@click.option(
    "--dropout",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.5,
    show_default=True,
    help="Dropout rate on the LSTM's output and on CNN1's FC embedding (the study's 0.5).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=30, show_default=True, help="Training epochs."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Patients per batch (under torchrun: the global batch, split evenly over the ranks).",
)
@click.option(
    "--lr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="AdamW learning rate (cosine decay over the epochs).",
)
@click.option(
    "--weight-decay",
    type=FiniteFloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="AdamW weight decay.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**64 - 1),  # numpy and torch seeds are unsigned 64-bit
    default=0,
    show_default=True,
    help="Seed of the split, the initial weights and every epoch's shuffle.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of each class held out for validation (ignored with --folds).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=None,
    help="K-fold cross-validation: train all K folds, report mean ± std "
    "[default: none: one split by --val-fraction].",
)
@click.option(
    "--fold",
    type=click.IntRange(min=0),
    default=None,
    help="With --folds K, train only fold i (0-based) [default: all K folds].",
)
@click.option(
    "--class-weight",
    type=click.Choice(["auto", "none"]),
    default="auto",
    show_default=True,
    help="auto: BCE pos_weight = n_neg / n_pos of the training split.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when present), cuda, cuda:N or cpu.",
)
@click.option(
    "--amp/--no-amp",
    default=True,
    show_default=True,
    help="bf16 autocast on CUDA (ignored on CPU).",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the model: faster steps after ~30 s of compilation per graph; "
    "worth it for long runs [default: off].",
)
@cache_options(workers=4)
@click.option(
    "--augment", is_flag=True, help="Random flips along each spatial axis [default: off]."
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

    from smri import distributed
    from smri.train import check_global_batch

    spec = distributed.from_env(os.environ)  # torchrun's variables; one process without them
    resume: Path | None = opts["resume"]
    if resume is not None:
        given = [f"--{n.replace('_', '-')}" for n in RUN_OPTIONS if _given(ctx, n)]
        given += ["--out"] if opts["out"] is not None else []
        if opts["overwrite"]:
            raise ConfigError("--resume continues the run in place; drop --overwrite",
                              option="--overwrite")  # fmt: skip
        if given:
            raise ConfigError(f"--resume continues a run with its own settings; drop {given[0]}",
                              option=given[0])  # fmt: skip
    elif store is None:
        raise click.UsageError("give a STORE to train on, or --resume RUN_DIR")
    else:
        check_global_batch(opts["batch_size"], spec.world_size)  # before joining the group
    with distributed.process_group(spec, opts["device"]) as dist:
        try:
            _train(dist, store, resume, opts)
        except (SmriError, OSError) as exc:
            if dist.is_main:
                raise
            sys.exit(2 if isinstance(exc, ConfigError) else 1)  # rank 0 prints the message


def _interrupted(out: Path) -> str:
    """What Ctrl-C left in the run folder `out`, and how to go on."""
    if not (out / "config.json").exists():
        return f"Interrupted before the run started; {out} holds nothing to resume."
    if (out / "last.pt").exists():
        kept = f"{out}/last.pt holds the last finished epoch"
    elif any(out.glob("fold*/last.pt")):
        kept = f"each fold's last.pt in {out} holds its last finished epoch"
    else:
        kept = "no epoch had finished; the run starts from epoch 1"
    return f"Interrupted; {kept}. Continue with: smri train --resume {out}"


def _train(dist: Dist, store: Path | None, resume: Path | None, opts: dict[str, Any]) -> None:
    """The body of `smri train` on one rank (the only one without torchrun)."""
    from smri.models import ModelConfig
    from smri.train import TrainConfig, describe, load_run_config
    from smri.train import train as run_training

    echo = click.echo if dist.is_main else _silent
    if resume is not None:
        saved_store, model_cfg, cfg = dist.on_main(lambda: load_run_config(resume))
        cfg = cfg.__class__(**{**cfg.__dict__, "device": opts["device"], "cache": opts["cache"],
                               "workers": opts["workers"]})  # fmt: skip
        store, out = store or saved_store, resume
    else:
        model_cfg = ModelConfig(name=opts["model"], width=opts["width"], dropout=opts["dropout"])
        cfg = TrainConfig(
            epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
            weight_decay=opts["weight_decay"], seed=opts["seed"],
            val_fraction=opts["val_fraction"], folds=opts["folds"], fold=opts["fold"],
            class_weight=opts["class_weight"], device=opts["device"], amp=opts["amp"],
            compile=opts["compile_"], cache=opts["cache"], workers=opts["workers"],
            augment=opts["augment"],
        )  # fmt: skip
        stamp = dist.broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"))  # one name for all ranks
        out = opts["out"] or Path("runs") / f"{model_cfg.name}-{stamp}"
    if opts["dry_run"]:
        for line in describe(store, model_cfg, cfg, dist):
            echo(line)
        return
    try:
        run_training(store, model_cfg, cfg, out, resume=resume is not None,
                     overwrite=opts["overwrite"], log=click.echo, dist=dist)  # fmt: skip
    except KeyboardInterrupt:
        echo(f"\n{_interrupted(out)}", err=True)
        sys.exit(130)
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
    default=8,
    show_default=True,
    help="Patients per batch.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N or cpu.")
@cache_options(workers=2)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the results of an earlier evaluate in --out [default: off: refuse].",
)
@handle_errors
def evaluate(checkpoint: Path, store: Path, out: Path | None, batch_size: int, device: str,
             cache: str, workers: int, overwrite: bool) -> None:  # fmt: skip
    """Metrics of MODEL on every labelled patient of STORE (e.g. a held-out cohort).

    MODEL is a checkpoint (a run's best.pt) or a folder written by `smri export`. Prints the
    metrics as JSON; writes them with predictions.csv and a ROC curve to --out.
    """
    from smri.inference import evaluate_store
    from smri.plots import roc_figure, save_figure
    from smri.runs import write_json, write_predictions

    # best.pt and last.pt of a run share the default --out: never replace one's results silently
    out = out or (checkpoint if checkpoint.is_dir() else checkpoint.parent) / f"eval-{store.stem}"
    held = [n for n in EVAL_FILES if (out / n).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"{out} already holds evaluation results ({', '.join(held)}); choose another --out, "
            "or pass --overwrite to replace them",
            option="--out",
        )
    result = evaluate_store(checkpoint, store, device=device, batch_size=batch_size, cache=cache,
                            workers=workers)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(checkpoint), "store": str(store), **result.metrics}
    write_json(out / "metrics.json", report)
    write_predictions(out / "predictions.csv", result.patient_ids, result.labels,
                      result.probabilities, result.classes)  # fmt: skip
    known = result.labels >= 0
    if len(set(result.labels[known].tolist())) == 2:
        name = (checkpoint if checkpoint.is_dir() else checkpoint.parent).name or "model"
        curves = {name: [(result.labels[known], result.probabilities[known])]}
        save_figure(roc_figure(curves, f"ROC on {store.name}"), out / "roc.png")
    else:
        click.echo("no ROC curve: the store does not have labelled patients of both classes",
                   err=True)  # fmt: skip
    click.echo(json.dumps(report, indent=2))
    click.echo(f"written to {out}", err=True)


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
    default=4,
    show_default=True,
    help="Patients per forward pass.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N or cpu.")
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing --csv file [default: off: refuse]."
)
@handle_errors
def predict(checkpoint: Path, patient_dirs: tuple[Path, ...], csv_path: Path | None,
            batch_size: int, device: str, overwrite: bool) -> None:  # fmt: skip
    """Probability of class 1 for raw NIfTI patient folders, preprocessed as the store was.

    MODEL is a checkpoint (a run's best.pt) or a folder written by `smri export`. A folder is
    a BraTS-style patient folder (2018-2021 or 2023 names), a BIDS subject (sub-01, one
    session) or a BIDS session folder (sub-01/ses-02, predicted as sub-01_ses-02).
    """
    import csv

    from smri.atomic import atomic_open
    from smri.inference import predict_folders
    from smri.preprocess import check_output

    if csv_path is not None:  # before the work: an existing file (a labels CSV?) is kept
        check_output(csv_path, overwrite)
    results = predict_folders(checkpoint, patient_dirs, device=device, batch_size=batch_size,
                              warn=lambda m: click.echo(m, err=True))  # fmt: skip
    width = max(len("patient_id"), *(len(r.patient_id) for r in results))
    click.echo(f"{'patient_id':<{width}}  probability  predicted")
    for r in results:
        click.echo(f"{r.patient_id:<{width}}  {r.probability:>11.4f}  {r.predicted}")
    if csv_path is not None:  # written beside, renamed into place: never a half-written CSV
        with atomic_open(csv_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "probability", "predicted"])
            writer.writerows([r.patient_id, f"{r.probability:.6f}", r.predicted] for r in results)


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
@handle_errors
def plot(run_dirs: tuple[Path, ...], out: Path) -> None:
    """Loss, accuracy and ROC figures comparing runs (K-fold runs as mean ± std bands)."""
    from smri.plots import plot_runs

    for path in plot_runs(run_dirs, out):
        click.echo(str(path))
