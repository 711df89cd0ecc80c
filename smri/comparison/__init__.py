"""Comparison: finished runs side by side, what `smri plot` writes.

`compare` builds summary.json (every model's metrics with 95 % intervals, paired tests between
models on the same patients, the majority and intensity baselines, the latter from the store's
features); `report` words it as summary.md; `figures.plot_runs` reads the runs, draws their
curves and writes all of it into one folder.
"""

from smri.comparison.common import store_features
from smri.comparison.figures import check_plot_out, load_run, plot_runs
from smri.comparison.report import summary_markdown

__all__ = ["check_plot_out", "load_run", "plot_runs", "store_features", "summary_markdown"]
