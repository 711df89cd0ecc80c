"""`smri info`: what a store holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from smri import api
from smri.cli.common import handle_errors

if TYPE_CHECKING:
    from smri.store import StoreInfo


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _coverage_lines(meta: StoreInfo) -> list[str]:
    """The masks and orientation lines of `smri info` (schema version 2)."""
    cov = meta.coverage
    if cov is None:
        return [f"masks       none (a schema v{meta.schema_version} store has no segmentations)"]
    line = f"masks       {cov['patients_with_mask']} of {cov['patients']} patients"
    if cov["median_share_in_slab"] is not None:
        n_low = len(cov["low_coverage"])
        line += (
            f"; tumour voxels in the slab: median {100 * cov['median_share_in_slab']:.0f} %, "
            f"{n_low} patient{'s' if n_low != 1 else ''} under "
            f"{100 * cov['low_coverage_threshold']:.0f} %"
        )
        line += " (--json names them)" if n_low else ""
    if cov["empty_masks"]:
        line += f"; {len(cov['empty_masks'])} without tumour voxels"
    codes = ", ".join(f"{code} {n}" for code, n in meta.orientations.items())
    lines = [line, f"orientation {codes or 'none'} (patients per NIfTI axis codes)"]
    if len([c for c in meta.orientations if c != "unknown"]) > 1:
        lines[-1] += "; MIXED: arrays of different codes are flipped against each other"
    return lines


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON [default: off: text]."
)
@handle_errors
def info(store: Path, as_json: bool) -> None:
    """Summarise an smri store: patients per class, shape, dtype, config, masks and how much
    tumour the slab holds, orientations, skipped patients."""
    meta = api.info(store)
    if as_json:
        from smri.jsonfiles import json_text

        click.echo(json_text(meta.as_dict(), sort_keys=True))
        return
    from smri.discovery import class_counts_text

    counts = class_counts_text(meta.class_counts)
    m, s, h, w = meta.volume_shape
    cfg = meta.config
    lines = [
        f"store       {meta.path}",
        f"patients    {meta.n_patients} ({counts})",
        f"volumes     {m} modalities ({', '.join(meta.modalities)}) x {s} slices x {h} x {w} "
        f"({meta.axis_order})",
        f"dtype       {meta.dtype}, compression {meta.compression or 'none'}, "
        f"{_human_bytes(meta.file_bytes)}",
        f"classes     {', '.join(f'{k}={v}' for k, v in meta.classes.items())}",
        f"source      {cfg.get('input')} (layout {cfg.get('layout')}), "
        f"canonical={cfg.get('canonical')}",
        f"created     {meta.created} by smri {meta.smri_version}, schema v{meta.schema_version}",
        *_coverage_lines(meta),
        f"skipped     {len(meta.skipped)}",
    ]
    lines += [f"  {row['patient_id']}: {row['reason']}" for row in meta.skipped]
    click.echo("\n".join(lines))
