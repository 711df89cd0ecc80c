"""Numbers at the edges of float32: warned of alike, refused in one line, never a numpy warning.

The min-max runs in float32 (the seed's ``astype(float32)``) with 1e-8 added to the range. A
volume whose range that epsilon swamps becomes zeros just as a constant one does, and is
warned of the same way; a float64 volume beyond float32's range would become Inf and NaN, and
is refused before numpy can print "overflow encountered in cast" from inside smri.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from smri.errors import DataError
from smri.volume import flat_note, open_volume
from tests.helpers.cli import ENV, smri_cmd
from tests.helpers.nifti import SHAPE, write_cohort, write_nifti

PID = "BraTS19_HGG_000_1"


def slab(path: Path) -> tuple[np.ndarray, float, float]:
    out = np.empty((16, SHAPE[1], SHAPE[0]), np.float16)
    lo, hi = open_volume(path).normalized_slab_into(16, out)
    return out, lo, hi


def noise(low: float, span: float, dtype: type) -> np.ndarray:
    return (low + np.random.default_rng(0).random(SHAPE) * span).astype(dtype)


def test_a_range_the_epsilon_swamps_is_warned_of_like_a_constant_volume(tmp_path):
    path = write_nifti(tmp_path / "t1.nii.gz", noise(0.0, 1e-30, np.float32))
    out, lo, hi = slab(path)
    assert not out.any()  # stored as zeros, as a constant volume is
    note = flat_note(lo, hi)
    assert note is not None and note.startswith("spans only 1e-30 (")
    assert "normalised to nearly zeros" in note
    assert flat_note(5.0, 5.0) == "is constant (5); normalised to zeros"  # unchanged
    assert flat_note(0.0, 1e-6) is None and flat_note(-3.0, 7.0) is None  # usable ranges
    assert flat_note(1e6, 1e6 + 1e-4).startswith("is constant in float32")


@pytest.mark.parametrize(
    ("low", "span", "message"),
    [(3.4e38, 1e36, "intensities reach 3.41e+38, beyond float32"),  # the edge of float32
     (1.7e308, 1e30, "intensities reach 1.7e+308, beyond float32"),  # near float64's max
     (-3e38, 6e38, "wider than float32")],
)  # fmt: skip
def test_float64_beyond_float32_is_refused_without_a_numpy_warning(tmp_path, low, span, message):
    path = write_nifti(tmp_path / "t1.nii.gz", noise(low, span, np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        with pytest.raises(DataError, match=re.escape(message)):
            slab(path)


def test_preprocess_warns_and_refuses_in_its_own_lines_only(tmp_path):
    """Through the CLI: the flat volume is a warning line, the float64 one a skipped patient,
    and nothing from numpy (no RuntimeWarning, no path inside smri) reaches stderr."""
    root = write_cohort(tmp_path / "in")
    folder = root / "HGG" / PID
    write_nifti(folder / f"{PID}_t1.nii.gz", noise(0.0, 1e-30, np.float32))
    other = "BraTS19_HGG_001_1"
    write_nifti(root / "HGG" / other / f"{other}_t2.nii.gz", noise(3.4e38, 1e36, np.float64))
    res = subprocess.run(smri_cmd("preprocess", root, tmp_path / "s.h5", "--slices", "16"),
                         capture_output=True, text=True, env=ENV, timeout=180)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"warning: patient {PID}: {PID}_t1.nii.gz spans only 1e-30" in res.stderr
    assert f"skipping patient {other}: " in res.stderr and "beyond float32" in res.stderr
    assert "RuntimeWarning" not in res.stderr and "smri/volume" not in res.stderr
