"""`smri explain`: where a model looks, against the tumour."""

from __future__ import annotations

from pathlib import Path

import click

from smri import api
from smri.cli.common import api_defaults, handle_errors, path_option_type, quiet_option, setting

EXPLAIN = api_defaults(api.explain)


@click.command()
@click.argument("checkpoint", metavar="MODEL", type=path_option_type(exists=True))
@click.argument("store", type=path_option_type(dir_okay=False))
@click.argument("patient_ids", metavar="[ID]...", nargs=-1)
@click.option("--out", type=path_option_type(file_okay=False), default=None,
              help="Folder for <id>.png and explain.json [default: explain-<store name> beside "
                   "the checkpoint, or inside an exported MODEL folder].")  # fmt: skip
@click.option(
    "--steps",
    type=setting("steps"),
    default=EXPLAIN["steps"],
    show_default=True,
    help="Integrated-gradients steps: forward and backward passes per patient.",
)
@click.option(
    "--batch-size",
    type=setting("batch_size"),
    default=EXPLAIN["batch_size"],
    show_default=True,
    help="Steps run at once.",
)
@click.option("--device", default=EXPLAIN["device"], show_default=True,
              help="auto, cuda, cuda:N or cpu.")  # fmt: skip
@click.option(
    "--nifti", is_flag=True,
    help="Also write <id>_saliency.nii.gz: the saliency on the patient's own scan grid (4-D: "
         "the scan's axes, then one volume per modality; zero outside the slab), to overlay "
         "the patient's files in ITK-SNAP or 3D Slicer [default: off].",
)  # fmt: skip
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print every number as JSON (explain.json) instead of the table [default: off].",
)  # fmt: skip
@click.option(
    "--overwrite", is_flag=True,
    help="Replace an earlier explain.json in --out [default: off: refuse].",
)  # fmt: skip
@quiet_option("")
@handle_errors
def explain(checkpoint: Path, store: Path, patient_ids: tuple[str, ...], out: Path | None,
            steps: int, batch_size: int, device: str, nifti: bool, as_json: bool,
            overwrite: bool, quiet: bool) -> None:  # fmt: skip
    """Saliency maps of MODEL on patients of STORE, against their tumour.

    Integrated gradients of every modality of each patient: a PNG montage of the slab with the
    positive saliency and the tumour's contour (where STORE has masks), and the share of the
    positive saliency inside the tumour. A model whose saliency lies mostly outside the tumour
    is called out. Without IDs: the validation patients of MODEL's run (its split.json), else
    the first 8 of STORE. MODEL is a checkpoint or a folder written by `smri export`.
    """
    report = api.explain(checkpoint, store, patient_ids, out=out, steps=steps,
                         batch_size=batch_size, device=device, nifti=nifti, overwrite=overwrite,
                         quiet=quiet,
                         log=lambda line: click.echo(line, err=True))  # fmt: skip
    where = report.pop("out")
    if as_json:
        from smri.jsonfiles import json_text

        click.echo(json_text(report))
    else:
        click.echo("\n".join(table(report)))
    click.echo(f"written to {where}", err=True)


def table(report: dict) -> list[str]:
    """The per-patient table and the verdict line."""
    from smri.evaluation import percent  # torch: imported only when a table is printed

    width = max(len("patient_id"), *(len(r["patient_id"]) for r in report["rows"]))
    lines = [f"{'patient_id':<{width}}  {'predicted':>9}  {'P(1)':>5}  {'in tumour':>9}  "
             f"{'chance':>6}  note"]  # fmt: skip

    for r in report["rows"]:
        lines.append(
            f"{r['patient_id']:<{width}}  {r['predicted']:>9}  {r['probability']:>5.2f}  "
            f"{percent(r['share_in_tumour']):>9}  {percent(r['chance_share']):>6}  "
            f"{r['note'] or ''}"
        )
    return [*lines, report["verdict"]]
