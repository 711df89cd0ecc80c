"""Strings from files never reach the terminal raw, and ids never collide as file names.

Every command runs through `smri.cli.common.handle_errors`: what it prints passes
`terminal_text` (escape sequences written escaped) and its error is one line. Store ids come
back printable from `StoreReader`; `smri explain` names each PNG safely and distinctly, and a
patient that cannot be explained is skipped without stopping the others.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click
import h5py
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.cli.common import handle_errors
from smri.errors import DataError
from smri.evaluation.explanation import file_names
from smri.text import one_line, printable, terminal_text
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)

HOSTILE_IDS = ["P\x1b[2J0", "P1\nError: forged", "x" * 300, "a/b", "a_b", "A_B", "..", "é"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run, and a copy of its store whose first eight ids are hostile."""
    folder = tmp_path_factory.mktemp("terminal")
    store, run = tiny_run(folder)
    bad = Path(shutil.copy(store, folder / "hostile.h5"))
    with h5py.File(bad, "r+") as f:
        ids = f["patient_id"].asstr()[:]
        ids[: len(HOSTILE_IDS)] = HOSTILE_IDS
        f["patient_id"][:] = ids
    return bad, run


def invoke(*args: object):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res


def clean(text: str) -> None:
    """No escape or control sequence, and no line that smri did not write."""
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    assert not any(line.startswith("Error: forged") for line in text.splitlines()), text


def test_explain_names_every_hostile_id_safely_and_distinctly(hostile, tmp_path):
    store, run = hostile
    out = tmp_path / "ex"
    res = invoke("explain", run / "best.pt", store, "--out", out, "--steps", "2",
                 "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    clean(res.stdout + res.stderr)
    report = json.loads((out / "explain.json").read_text())
    pngs = [row["png"] for row in report["rows"]]
    assert len(pngs) == 8 and len({p.lower() for p in pngs}) == 8, pngs
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)
    assert all(len(p.encode()) <= 120 and "/" not in p and not p.startswith(".") for p in pngs)
    assert report["rows"][1]["patient_id"] == "P1\\nError: forged"  # shown escaped, kept


def test_one_patient_that_cannot_be_explained_stops_only_itself(hostile, tmp_path):
    store, run = hostile
    bad = Path(shutil.copy(store, tmp_path / "one-bad.h5"))
    with h5py.File(bad, "r+") as f:
        images = f["images"][2]
        images[0, 0, 0, 0] = 3.0  # outside the [0, 1] every stored volume holds
        f["images"][2] = images
    out = tmp_path / "ex"
    res = invoke("explain", run / "best.pt", bad, "a_b", "x" * 300, "é", "--out", out,
                 "--steps", "2", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "explain.json").read_text())
    assert [row["patient_id"] for row in report["rows"]] == ["a_b", "é"]
    assert [s["patient_id"] for s in report["skipped"]] == ["x" * 300]
    assert "outside the [0, 1]" in report["skipped"][0]["reason"]
    assert f"skipped: patient {'x' * 300}: " in res.stderr


def test_file_names_are_safe_distinct_and_stable():
    names = file_names(["a/b", "a_b", "A_B", "x" * 300, "x" * 300 + "y", "ok-1.2", ".hidden"])
    assert names["a_b"] == "a_b.png" and names["ok-1.2"] == "ok-1.2.png"  # safe ids kept
    assert names["a/b"].startswith("a_b-") and names["A_B"].startswith("A_B-")
    assert len({n.lower() for n in names.values()}) == len(names)
    assert all(len(n) <= 120 and not n.startswith(".") for n in names.values())
    assert file_names(["a/b"]) == {"a/b": names["a/b"]}  # the same id, the same name


def test_every_command_prints_through_the_terminal_filter():
    """The mechanism itself: a command's echo, print and log line, and its error."""

    @click.command()
    @handle_errors
    def cmd() -> None:
        click.echo("id P\x1b[2J and \x9b31m")
        print("bell \x07 and \r a redrawn line", file=sys.stderr)
        sys.stderr.write("warning: class H\x1b]0;title\x07\n")  # as a library's log line
        raise DataError("store: patient P1\nError: forged \x1b[2J")

    res = CliRunner().invoke(cmd, [], color=True)  # as on a terminal: click strips nothing
    assert res.exit_code == 1
    clean(res.stdout + res.stderr)
    assert "id P\\x1b[2J and \\x9b31m" in res.stdout
    assert "bell \\x07 and \r a redrawn line" in res.stderr  # a carriage return is layout
    assert "class H\\x1b]0;title\\x07" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "Error: store: patient P1\\nError: forged \\x1b[2J"
    )


def test_text_helpers():
    assert printable("BraTS19_HGG_001") == "BraTS19_HGG_001"  # what smri writes: unchanged
    assert printable("a\x1b[2J") == "a\\x1b[2J"
    assert one_line("a\nb\rc\x1bd") == "a\\nb\\rc\\x1bd"
    assert terminal_text("a\nb\r\tc\x1b\u2028") == "a\nb\r\tc\\x1b\\u2028"


def test_a_store_class_name_with_an_escape_is_refused_in_one_clean_line(hostile, tmp_path):
    store, _ = hostile
    bad = Path(shutil.copy(store, tmp_path / "classes.h5"))
    with h5py.File(bad, "r+") as f:
        f.attrs["classes"] = json.dumps({"LGG\x1b[2J": 0, "HGG\n": 1})
    res = invoke("info", bad)
    assert res.exit_code == 1
    clean(res.stdout + res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1
    assert "attribute 'classes' is {'LGG\\x1b[2J': 0, 'HGG\\n': 1}, expected" in res.stderr
