"""`smri models`: the architectures and their parameter counts at an input geometry."""

from __future__ import annotations

import click

from smri import api
from smri.cli.common import api_defaults, handle_errors, setting

MODELS = api_defaults(api.models)


@click.command()
@click.option(
    "--shape",
    default="x".join(str(n) for n in MODELS["shape"]),
    show_default=True,
    help="Input geometry M x S x H x W (modalities x slices x height x width).",
)
@click.option(
    "--width",
    type=setting("width"),
    default=MODELS["width"],
    show_default=True,
    help="Channel multiplier of the conv blocks (16-32-64-128 at 1).",
)
@click.option(
    "--input-pool",
    type=setting("input_pool"),
    default=MODELS["input_pool"],
    show_default=True,
    help="Average each slice over K x K voxels before the first conv block (1: off, the seed).",
)
@handle_errors
def models(shape: str, width: float, input_pool: int) -> None:
    """List the models and their parameter counts at a given input geometry."""
    table = api.models(shape=shape, width=width, input_pool=input_pool)
    m, s, h, w = table["shape"]
    click.echo(
        f"input {m}x{s}x{h}x{w}, width {width:g}"
        + (f", pooled {input_pool}x{input_pool} in-plane" if input_pool > 1 else "")
        + f"; the CNN is shared across the {m} modalities"
    )
    click.echo(f"{'model':<6} {'CNN':>12} {'LSTM+head':>10} {'total':>12} {'embed':>6}  design")
    for row in table["models"]:
        click.echo(
            f"{row['name']:<6} {row['cnn']:>12,} {row['lstm_head']:>10,} {row['total']:>12,} "
            f"{row['embed']:>6}  {row['design']}"
        )
