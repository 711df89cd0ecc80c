"""Sizes are checked before anything is allocated: a checkpoint that would inflate, a saved model
config asking for an absurd model, `--width 1e6`: one line each, in bounded memory and time.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from smri.networks import MAX_PARAMETERS, ModelConfig, build_model, check_config
from tests.helpers.cli import ENV, error_line, invoke, run_smri
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)

MEMORY_CAP_MIB = 700


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("bounds")
    return tiny_run(tmp)


def _rezip(src: Path, dst: Path, extra_mib: int = 0) -> None:
    """`src`'s archive with every entry deflated, and (as a bomb) `extra_mib` MiB of zeros
    added to one: the same checkpoint, as torch.save never writes it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            with zout.open(info.filename, "w", force_zip64=True) as fh:
                fh.write(data)
                if extra_mib and info.filename.endswith("data/0"):
                    for _ in range(extra_mib):
                        fh.write(bytes(1 << 20))


def test_a_checkpoint_that_would_inflate_is_refused_unread(run, tmp_path):
    store, out = run
    bomb = tmp_path / "bomb.pt"
    _rezip(out / "best.pt", bomb, extra_mib=1024)  # 1 GiB inside a file of about 1 MB
    assert bomb.stat().st_size < 4 << 20
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True,"
        " text=True); sys.stderr.write(r.stderr); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)"
    )
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "smri", "evaluate", str(bomb),
         str(store), "--out", str(tmp_path / "ev")],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    code, mib = (int(v) for v in res.stdout.split())
    line = error_line(subprocess.CompletedProcess([], code, "", res.stderr))
    assert line.startswith(f"Error: {bomb}: refused: ") and "is compressed" in line
    assert mib < MEMORY_CAP_MIB, f"peak {mib} MiB"
    small = tmp_path / "small.pt"  # deflated but harmless: refused all the same, named
    _rezip(out / "best.pt", small)
    res = invoke("predict", small, tmp_path, "--device", "cpu")
    assert res.exit_code == 1 and "torch.save stores entries as they are" in res.stderr


def _with_config(src: Path, dst: Path, **changes) -> Path:
    ckpt = torch.load(src, weights_only=True)
    ckpt["model_config"] = {**ckpt["model_config"], **changes}
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"width": 1e6},
            "bad model_config (cnn2 at width 1e+06 on volumes of 16x32x32 would "
            "have 2.9e+17 parameters",
        ),
        (
            {"name": "cnn1", "volume_shape": [4096, 4096, 4096]},
            "bad model_config (cnn1 at width 0.25 on volumes of 4096x4096x4096 would have",
        ),
        ({"hidden": 10**9}, "bad model_config (model setting hidden = 1000000000 is not an "),
        ({"volume_shape": [16, 32, -32]}, "bad model_config (volume shape (16, 32, -32) is not"),
        ({"dropout": float("nan")}, "bad model_config (must be in [0, 1), got nan)"),
        ({"width": 8}, "the weights do not fit the cnn2 model (width 8, input 16x32x32)"),
        ({"input_pool": 10**9}, "bad model_config (the in-plane size 32x32 is not a multiple of"),
        ({"input_pool": "2"}, "bad model_config (must be a whole number >= 1, got '2')"),
    ],
    ids=[
        "width-1e6",
        "huge-volume",
        "huge-lstm",
        "negative-shape",
        "nan-dropout",
        "width-8",
        "huge-pool",
        "text-pool",
    ],
)
def test_an_absurd_saved_model_config_is_one_line(run, tmp_path, changes, message):
    store, out = run
    bad = _with_config(out / "best.pt", tmp_path / "bad.pt", **changes)
    for args in (["evaluate", bad, store, "--out", tmp_path / "ev"],
                 ["predict", bad, tmp_path, "--device", "cpu"]):  # fmt: skip
        res = invoke(*args)
        assert res.exit_code == 1, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: "), res.stderr
        assert message in res.stderr, res.stderr


def test_resume_of_a_run_whose_config_asks_for_an_absurd_model(run, tmp_path):
    _, out = run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["width"] = 1e6
    (copy / "config.json").write_text(json.dumps(config))
    res = run_smri("train", "--resume", copy)
    line = error_line(res)
    assert line.startswith(f"Error: {copy / 'config.json'}: damaged run config (ConfigError: ")
    assert "2.9e+17 parameters" in line


@pytest.mark.parametrize("command", ["train", "models"])
def test_width_that_builds_an_absurd_model_is_a_usage_error(run, command):
    store, _ = run
    args = ["train", store, "--width", "1e6", "--epochs", "1"] if command == "train" else [
        "models", "--width", "1e6"]  # fmt: skip
    res = invoke(*args)
    assert res.exit_code == 2
    assert res.stdout == ""  # nothing half-printed before the error
    assert res.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for '--width': cnn")
    assert "GiB of weights); smri builds models of at most 1e+09 parameters" in res.stderr


def test_the_size_check_itself_allocates_nothing():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(Exception, match=r"would have 2\.9e"):
            check_config(ModelConfig(width=1e6))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20
    n = sum(
        p.numel()
        for p in build_model(ModelConfig(width=0.25, volume_shape=(16, 32, 32))).parameters()
    )
    assert n < MAX_PARAMETERS
