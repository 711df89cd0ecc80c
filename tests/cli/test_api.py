"""The Python API: importable from a light `smri`, the commands' defaults, typed errors, quiet
output, and docs/api.md's example, which runs here block by block."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import smri
from smri import api
from smri.cli import COMMANDS, main
from smri.config import CACHE_MODES, CLASS_WEIGHTS, MODEL_NAMES, ModelConfig, TrainConfig
from smri.discovery import parse_modalities
from smri.errors import ConfigError, DataError
from smri.parallel import BACKENDS
from smri.phantoms import FORMATS, LAYOUTS, SynthConfig
from smri.preprocessing import PreprocessConfig
from smri.store import COMPRESSIONS, DTYPES
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[2]
API = {name: getattr(api, name) for name in COMMANDS}  # every command is a function
# click parameter name -> API keyword, where they differ
RENAMED = {"input_dir": "input", "labels_csv": "labels", "fmt": "format", "compile_": "compile",
           "checkpoint": "model", "csv_path": "csv", "license_": "license"}  # fmt: skip
PRINTING = {"as_json"}  # options of how a command prints (--json): none of the function's
# --quiet of commands whose functions print nothing: it drops only the command's own lines
QUIET_COMMANDS = {"export", "plot", "show", "holdout"}


def _command(name: str) -> click.Command:
    return main.get_command(click.Context(main), name)


def _defaults(func) -> dict:
    params = inspect.signature(func).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


# ------------------------------------------------------------------------------ the package
def test_import_smri_loads_neither_torch_nor_numpy():
    code = ("import sys, smri; smri.__version__; "
            "print(sorted(m for m in ('torch', 'numpy', 'h5py') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_api_names_stay_functions_after_their_modules_are_imported():
    import smri.networks
    import smri.phantoms
    import smri.preprocessing
    import smri.training

    # every command is smri.<command>, `models` too: the architectures are smri.networks
    assert {name: getattr(smri, name) for name in API} == API
    assert smri.models is api.models and smri.models.__module__ == "smri.api.runs"
    assert smri.networks.__name__ == "smri.networks"
    assert smri.StoreDataset.__module__ == "smri.data.dataset"
    assert set(smri.__all__) <= set(dir(smri))
    with pytest.raises(AttributeError, match="has no attribute 'fit'"):
        smri.fit  # noqa: B018


def test_type_checkers_see_every_lazy_name_from_the_module_that_serves_it():
    """`smri.train` is imported on first use (module __getattr__, which type checkers read as
    Any); the TYPE_CHECKING imports give mypy and pyright the real signatures: one per name."""
    import ast

    tree = ast.parse((ROOT / "smri" / "__init__.py").read_text())
    guarded = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    ]
    assert len(guarded) == 1
    seen = {
        alias.name: imp.module
        for imp in guarded[0].body
        if isinstance(imp, ast.ImportFrom)
        for alias in imp.names
    }
    assert seen == smri._LAZY
    assert set(smri._LAZY) <= set(smri.__all__)


def test_mypy_checks_a_user_call_against_the_real_signature(tmp_path):
    """What py.typed promises, run: a user's `smri.train(..., epochs="two")` is a type error."""
    pytest.importorskip("mypy")
    user = tmp_path / "user.py"
    user.write_text('import smri\nreveal_type(smri.models)\nsmri.train("s.h5", epochs="two")\n')
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--cache-dir", str(tmp_path / "cache"), str(user)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert 'Argument "epochs" to "train" has incompatible type "str"' in done.stdout, done.stdout
    assert "def (*, shape: " in done.stdout  # smri.models, not Any


# ------------------------------------------------------------------- one source for defaults
@pytest.mark.parametrize("name", list(API))
def test_every_command_default_is_the_api_default(name):
    """Every option of the command has the API function's default (no default spelled twice)."""
    expected = _defaults(API[name])
    command, wrong = _command(name), []
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", *PRINTING):
            continue
        if param.name == "quiet" and name in QUIET_COMMANDS:
            assert "quiet" not in inspect.signature(API[name]).parameters
            continue
        key = RENAMED.get(param.name, param.name)
        keywords = inspect.signature(API[name]).parameters
        assert key in keywords, f"smri {name} {param.opts[0]} has no keyword in smri.{name}"
        if key not in expected:  # a required option is a keyword without a default
            assert param.required, f"smri {name} {param.opts[0]}: smri.{name} has no default"
            continue
        default = param.get_default(click.Context(command))
        if key == "modalities" and default is not None:
            default = parse_modalities(default)
        if key == "shape":
            default = (
                tuple(int(v) for v in default.split("x")) if name == "models" else tuple(default)
            )
        if default != expected[key]:
            wrong.append(f"{param.opts[0]}: {default!r} != {expected[key]!r}")
    assert not wrong, f"smri {name}: " + "; ".join(wrong)


def test_api_defaults_are_the_dataclass_defaults():
    train, model = _defaults(api.train), ModelConfig()
    settings = {k: v for k, v in vars(TrainConfig()).items() if k != "repeat"}  # set by smri
    assert {k: train[k] for k in settings} == settings
    assert (train["model"], train["width"], train["dropout"]) == (
        model.name, model.width, model.dropout)  # fmt: skip
    pre, cfg = _defaults(api.preprocess), PreprocessConfig()
    shared = ("modalities", "slices", "dtype", "compression", "canonical", "classes")
    assert {k: pre[k] for k in shared} == {k: getattr(cfg, k) for k in shared}
    synth = {("fmt" if k == "format" else k): v for k, v in _defaults(api.synth).items()}
    assert {k: synth[k] for k in vars(SynthConfig())} == vars(SynthConfig())


def test_other_commands_take_their_defaults_from_the_dataclasses():
    models = {p.name: p.default for p in _command("models").params}
    m = ModelConfig()
    assert models == {
        "shape": "x".join(map(str, (4, *m.volume_shape))),
        "width": m.width,
        "input_pool": m.input_pool,
    }
    show = {p.name: p.default for p in _command("show").params}
    assert show["slices"] == PreprocessConfig().slices


@pytest.mark.parametrize(
    ("command", "option", "choices"),
    [("train", "model", MODEL_NAMES), ("train", "cache", CACHE_MODES),
     ("evaluate", "cache", CACHE_MODES), ("train", "class_weight", CLASS_WEIGHTS),
     ("preprocess", "backend", BACKENDS), ("preprocess", "dtype", DTYPES),
     ("preprocess", "compression", tuple(COMPRESSIONS)), ("synth", "layout", LAYOUTS),
     ("synth", "fmt", FORMATS)],
)  # fmt: skip
def test_choices_come_from_their_single_source(command, option, choices):
    (param,) = [p for p in _command(command).params if p.name == option]
    assert tuple(param.type.choices) == tuple(choices)


# ----------------------------------------------------------------------- errors and output
def test_errors_are_the_typed_exceptions_the_cli_maps(tmp_path):
    with pytest.raises(DataError, match="input folder does not exist"):
        smri.preprocess(tmp_path / "nowhere", tmp_path / "s.h5")
    with pytest.raises(ConfigError, match="give a STORE to train on") as err:
        smri.train()
    assert err.value.option is None
    with pytest.raises(ConfigError, match="drop epochs=") as err:  # worded for Python
        smri.train(resume=tmp_path, epochs=3)
    assert (err.value.option, err.value.keyword) == ("--epochs", "epochs")
    with pytest.raises(ConfigError, match="expected NAME=0,NAME=1") as err:
        smri.preprocess(tmp_path, tmp_path / "s.h5", classes="LGG")
    assert err.value.option == "--classes"


def test_quiet_keeps_only_the_result(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 4)
    lines: list[str] = []
    run = smri.train(store, epochs=1, width=0.25, batch_size=2, cache="ram", workers=0,
                     out=tmp_path / "run", quiet=True, log=lines.append)  # fmt: skip
    assert lines == [] and (run / "best.pt").is_file()
    result = CliRunner().invoke(main, ["train", str(store), "--epochs", "1", "--width", "0.25",
                                       "--batch-size", "2", "--cache", "ram", "--workers", "0",
                                       "--out", str(tmp_path / "cli"), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == f"run folder: {tmp_path / 'cli'}\n"
    result = CliRunner().invoke(main, ["evaluate", str(run / "best.pt"), str(store), "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("{") and result.output.endswith(f"written to {run}/eval-s\n")


def test_quiet_commands_that_only_write_files_print_nothing(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 4)
    run = smri.train(store, epochs=1, width=0.25, batch_size=2, cache="ram", workers=0,
                     out=tmp_path / "run", quiet=True, log=lambda _: None)  # fmt: skip
    commands = {  # each writes into a fresh place
        "export": lambda where: ["export", str(run), str(where / "m")],
        "plot": lambda where: ["plot", str(run), "--out", str(where / "fig")],
        "show": lambda where: ["show", str(store), "P001", "--out", str(where / "p.png")],
        "holdout": lambda where: ["holdout", str(store), str(where / "held.csv")],
    }
    assert set(commands) == QUIET_COMMANDS
    for name, args in commands.items():
        loud = CliRunner().invoke(main, args(tmp_path / "loud"))
        assert loud.exit_code == 0 and loud.stdout, (name, loud.output)
        result = CliRunner().invoke(main, [*args(tmp_path / "quiet"), "-q"])
        assert (result.exit_code, result.output) == (0, ""), (name, result.output)
    written = sorted(p.relative_to(tmp_path / "quiet") for p in (tmp_path / "quiet").rglob("*"))
    assert written == sorted(
        p.relative_to(tmp_path / "loud") for p in (tmp_path / "loud").rglob("*")
    )


# ---------------------------------------------------------------------------- docs/api.md
def test_the_api_page_runs(tmp_path, monkeypatch, capsys):
    """Examples that run: docs/api.md's python blocks, in order, in one namespace."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "wrote 16 patients (HGG 12, LGG 4) to demo.h5; skipped 0" in out
    assert "torch.Size([4, 4, 32, 32, 32]) torch.float32" in out
    assert (tmp_path / "runs" / "cnn2" / "eval-demo" / "metrics.json").is_file()


def test_progress_bars_on_every_long_step_and_none_when_quiet(tmp_path, capsys):
    cohort = smri.synth(tmp_path / "c", patients=6, hgg_fraction=0.5, shape=(16, 16, 32),
                        jobs=1, progress=True)  # fmt: skip
    store = smri.preprocess(cohort, tmp_path / "c.h5", jobs=1, slices=16, progress=True).output
    run = smri.train(store, epochs=1, width=0.25, batch_size=2, cache="ram", workers=0,
                     out=tmp_path / "r", progress=True, log=lambda _: None)  # fmt: skip
    smri.evaluate(run / "best.pt", store, progress=True, log=lambda _: None)
    smri.predict(run / "best.pt", sorted((cohort / "HGG").iterdir()), progress=True)
    err = capsys.readouterr().err
    for step in ("synth: 100%", "preprocess: 100%", "epoch 1: ", "evaluate: 100%",
                 "predict: 100%"):  # fmt: skip
        assert step in err, step
    smri.synth(tmp_path / "c", patients=6, hgg_fraction=0.5, shape=(16, 16, 32), jobs=1,
               overwrite=True, progress=True, quiet=True)  # fmt: skip
    smri.preprocess(cohort, tmp_path / "c.h5", jobs=1, slices=16, overwrite=True,
                    progress=True, quiet=True)  # fmt: skip
    smri.evaluate(run / "best.pt", store, progress=True, quiet=True, overwrite=True)
    assert capsys.readouterr().err == ""


def test_progress_bars_are_tqdm_auto_so_notebooks_get_the_widget(tmp_path, monkeypatch):
    """tqdm.auto picks tqdm's notebook widget in Jupyter (plain text bars on a terminal)."""
    import tqdm.auto

    sources = {p: p.read_text() for p in (ROOT / "smri").rglob("*.py")}
    plain = [p.name for p, text in sources.items()
             if re.search(r"^\s*(from tqdm import|import tqdm\b)", text, re.M)]  # fmt: skip
    assert plain == []
    assert any("from tqdm.auto import tqdm" in text for text in sources.values())
    shown: list[str] = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            shown.append(kwargs.get("desc"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    smri.synth(tmp_path / "c", patients=2, shape=(16, 16, 32), jobs=1, quiet=True)
    assert shown == ["synth"]


def test_numpy_numbers_as_settings_give_checkpoints_smri_loads(tmp_path):
    """Settings from numpy (a sweep over np.arange, a config read with numpy) were pickled into
    best.pt as numpy scalars, which the weights-only loader then refused as foreign objects."""
    import numpy as np

    from smri.model_io import load_checkpoint

    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 6, shape=(4, 16, 64, 64))
    run = smri.train(store, width=np.float32(0.25), epochs=np.int64(1), batch_size=np.int64(4),
                     lr=np.float64(1e-3), input_pool=np.int64(2), cache="ram", workers=0,
                     out=tmp_path / "r", quiet=True)  # fmt: skip
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / name)
        assert type(ckpt["model_config"]["input_pool"]) is int
        assert ckpt["model_config"]["input_pool"] == 2
    smri.train(resume=run, quiet=True)  # reads last.pt
    metrics = smri.evaluate(run / "best.pt", store, out=tmp_path / "ev", quiet=True)
    assert 0 <= metrics["auc"] <= 1
