"""Saving a figure: the one PNG writer of every figure smri draws (Agg, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smri.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file


def save_figure(fig: Figure, path: Path, dpi: int = DPI, *, tight: bool = True) -> Path:
    """Write `fig` as a PNG at `dpi` with the Agg backend, creating the parent folder.

    `tight` crops the blank margin around what is drawn (curves and ROC figures); the figures
    of `smri show` and `smri explain` lay themselves out (constrained) and keep their size
    (tight=False).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    margin = {"bbox_inches": "tight"} if tight else {}
    with atomic_path(path) as tmp:  # never a half-written PNG, never through a link
        fig.savefig(tmp, dpi=dpi, format="png", **margin)
    return path
