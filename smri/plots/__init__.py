"""Plots: figures as pure functions of data, and the one writer that saves them as PNG.

`curves` draws loss, accuracy and ROC curves from metric rows and predictions; `slices` tiles
a slab into one image for `smri show` and `smri explain`; `png.save_figure` writes any of them.
Reading run folders is `smri.comparison`'s. matplotlib is imported when a figure is drawn.
"""

from smri.plots.curves import (
    MODEL_COLORS,
    Rows,
    color_for,
    compare_figure,
    fold_loss_figure,
    loss_curve_figure,
    mean_std_by_epoch,
    reliability_figure,
    roc_figure,
)
from smri.plots.png import DPI, PNG_SIGNATURE, save_figure
from smri.plots.slices import content_box, mosaic

__all__ = [
    "DPI",
    "MODEL_COLORS",
    "PNG_SIGNATURE",
    "Rows",
    "color_for",
    "compare_figure",
    "content_box",
    "fold_loss_figure",
    "loss_curve_figure",
    "mean_std_by_epoch",
    "mosaic",
    "reliability_figure",
    "roc_figure",
    "save_figure",
]
