"""Messages in Python: warnings through `warnings.warn` (`smri.SmriWarning`), info lines through
the ``smri`` logger, nothing printed; the commands print the same lines as always."""

from __future__ import annotations

import logging
import warnings

import pytest
from click.testing import CliRunner

import smri
from smri.cli import main
from smri.messages import LOGGER, SmriWarning, python_log, warning
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)


def test_python_log_routes_warnings_and_info_lines(caplog):
    with pytest.warns(SmriWarning) as caught:
        python_log(warning("warning: volume t2 is constant"))
        python_log(warning("skipping P3: no t2 file"))
    assert [str(w.message) for w in caught] == ["volume t2 is constant", "skipping P3: no t2 file"]
    with caplog.at_level(logging.INFO, logger="smri"):
        python_log("epoch 1/2  train loss 0.6931")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("smri", logging.INFO, "epoch 1/2  train loss 0.6931")
    ]
    assert warning("x") == "x" and f"{warning('x')}" == "x"  # any log prints it unchanged


def test_importing_smri_configures_no_logging():
    assert LOGGER.handlers == [] and LOGGER.level == logging.NOTSET
    assert issubclass(smri.SmriWarning, UserWarning)


@pytest.fixture
def cohort(brats2019):
    """Two patients of each class and one unusable (its t2 file is missing)."""
    root, _ = brats2019(n_hgg=3, n_lgg=2)
    next(root.glob("HGG/*_002_1/*_t2.nii.gz")).unlink()
    return root


def test_the_api_warns_and_logs_and_prints_nothing(cohort, tmp_path, capsys, caplog):
    with pytest.warns(
        SmriWarning, match=r"^skipping patient BraTS19_HGG_002_1: no t2 file in "
    ) as caught:
        store = smri.preprocess(cohort, tmp_path / "s.h5", jobs=1, slices=16).output
    assert all(issubclass(w.category, SmriWarning) for w in caught)
    with caplog.at_level(logging.INFO, logger="smri"), warnings.catch_warnings():
        warnings.simplefilter("error", SmriWarning)  # training this store warns of nothing
        run = smri.train(store, model="cnn1", epochs=1, width=0.25, batch_size=2, cache="ram",
                         workers=0, val_fraction=0.5, out=tmp_path / "run")  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "smri"]
    assert lines[0].startswith("cnn1: ") and lines[1].startswith("epoch 1/1  train loss")
    with pytest.warns(SmriWarning, match=r"^skipped: .*nowhere"):
        smri.predict(run / "best.pt", [next(cohort.glob("HGG/*_000_1")), tmp_path / "nowhere"])
    assert capsys.readouterr().out == ""


def test_the_commands_print_the_same_lines_and_warn_nothing(cohort, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["preprocess", str(cohort), str(tmp_path / "s.h5"),
                                           "--jobs", "1", "--slices", "16"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [w for w in caught if issubclass(w.category, SmriWarning)] == []
    (skip,) = [line for line in result.stderr.splitlines() if line.startswith("skipping")]
    assert skip.startswith("skipping patient BraTS19_HGG_002_1: no t2 file in ")
    assert result.stdout.startswith("wrote 4 patients (HGG 2, LGG 2)")
