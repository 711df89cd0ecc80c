"""The API is as strict as the CLI (issue 29 items 1 and 2): one check of every setting for both,
every bad value a ConfigError naming the keyword before anything is written, messages worded
for Python, Paths returned, and `smri.load_model`.

The bad values come from the CLI's own table (tests/helpers/bad_values.py): each row runs
through the command and through its function, so a value refused on one side and taken on
the other fails.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

import smri
from smri import api
from smri.api.checks import RULES
from smri.cli import COMMANDS, main
from smri.errors import ConfigError, DataError, RunInterrupted
from tests.helpers.bad_values import API_ONLY, BAD
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

FAST = {"width": 0.25, "batch_size": 2, "epochs": 1, "cache": "ram", "workers": 0}


@pytest.fixture(scope="module")
def where(tmp_path_factory) -> dict[str, Path]:
    """A store, a finished run, its export and an (empty) input folder, outside tmp_path."""
    root = tmp_path_factory.mktemp("checks")
    store = make_store(root / "s.h5", labels=[0, 1] * 6)
    run = smri.train(store, **FAST, out=root / "run", quiet=True)
    (root / "in").mkdir()
    return {"store": store, "run": run, "model": run / "best.pt", "in": root / "in"}


def _call(command: str, where: dict[str, Path], out: Path) -> tuple[list, dict, list]:
    """The command's own arguments: (positional for the API, keywords, CLI words)."""
    store, model, run = where["store"], where["model"], where["run"]
    table = {
        "train": ([store], {**FAST, "out": out / "run", "quiet": True},
                  [store, "--width", "0.25", "--batch-size", "2", "--epochs", "1", "--cache",
                   "ram", "--workers", "0", "--out", out / "run"]),
        "evaluate": ([model, store], {"out": out / "ev"}, [model, store, "--out", out / "ev"]),
        "explain": ([model, store], {"out": out / "ex"}, [model, store, "--out", out / "ex"]),
        "predict": ([model, [where["in"]]], {"csv": out / "p.csv"},
                    [model, where["in"], "--csv", out / "p.csv"]),
        "models": ([], {}, []),
        "export": ([run, out / "exp"], {}, [run, out / "exp"]),
        "show": ([store, "P000"], {"out": out / "p.png"}, [store, "P000", "--out", out / "p.png"]),
        "preprocess": ([where["in"], out / "s.h5"], {}, [where["in"], out / "s.h5"]),
        "synth": ([out / "cohort"], {}, [out / "cohort"]),
    }  # fmt: skip
    return table[command]


def _tree(folder: Path) -> list[str]:
    """Every path under `folder`, hidden lock files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------- the bad values, on both sides
@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_the_cli_refuses_each_bad_value_naming_the_option(bad, where, tmp_path):
    _, _, words = _call(bad.command, where, tmp_path)
    result = CliRunner().invoke(main, [bad.command, *map(str, words), *bad.args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{bad.option}'" in result.stderr  # then "/ '-j'", if it has one
    assert bad.message in result.stderr
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_the_api_refuses_each_bad_value_naming_the_keyword(bad, where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run folder (runs/...) would land here
    args, keywords, _ = _call(bad.command, where, tmp_path)
    given = bad.keywords()
    with pytest.raises(ConfigError) as err:
        getattr(api, bad.command)(*args, **{**keywords, **given})
    keyword = bad.option.removeprefix("--").replace("-", "_")
    assert err.value.option == bad.option and err.value.keyword == keyword
    text = str(err.value)
    assert text.startswith(f"{keyword}: ") or f"{keyword}=" in text, text
    if "--" not in bad.message:  # the message as the CLI prints it, after the keyword
        assert bad.message in text
    assert "--" not in text, text  # no option spelt for the command line
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    ("command", "given", "option", "message"), API_ONLY, ids=[f"{c}-{k}" for c, k, *_ in API_ONLY]
)
def test_values_only_python_can_pass_are_refused_alike(
    command, given, option, message, where, tmp_path
):
    args, keywords, _ = _call(command, where, tmp_path)
    with pytest.raises(ConfigError) as err:
        getattr(api, command)(*args, **{**keywords, **given})
    assert str(err.value) == f"{option.removeprefix('--').replace('-', '_')}: {message}"
    assert err.value.option == option
    assert _tree(tmp_path) == []


def test_a_dry_run_checks_too(where, tmp_path):
    for bad in ({"epochs": -1}, {"batch_size": 0}, {"lr": -1.0}):
        with pytest.raises(ConfigError, match=f"^{next(iter(bad))}: "):
            smri.train(where["store"], **bad, out=tmp_path / "r", dry_run=True)
    assert _tree(tmp_path) == []


def test_the_issues_examples(where, tmp_path, monkeypatch):
    """smri.train(store, epochs=0) left a run folder and said "best.pt: no such checkpoint";
    evaluate(batch_size=0) was a ZeroDivisionError; predict's a ValueError."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^epochs: 0 is not in the range x>=1\.$"):
        smri.train(where["store"], epochs=0)
    with pytest.raises(ConfigError, match=r"^epochs: expected a whole number, got 'two'$"):
        smri.train(where["store"], epochs="two")
    with pytest.raises(ConfigError, match=r"^batch_size: 0 is not in the range x>=1\.$"):
        smri.evaluate(where["model"], where["store"], batch_size=0)
    with pytest.raises(ConfigError, match=r"^batch_size: 0 is not in the range x>=1\.$"):
        smri.predict(where["model"], where["in"], batch_size=0)
    assert _tree(tmp_path) == []


# --------------------------------------------------------------- one check for both sides
def test_every_rule_is_a_keyword_and_every_checked_option_uses_it():
    """A rule names a keyword of some public function, and each option of that name takes
    its click type from the rule (smri.cli.common.setting): no range written twice."""
    from smri.cli.common import _Checked

    keywords = {k for name in COMMANDS for k in inspect.signature(getattr(api, name)).parameters}
    assert set(RULES) <= keywords, set(RULES) - keywords
    for name in COMMANDS:
        command = main.get_command(click.Context(main), name)
        for param in command.params:
            keyword = {"fmt": "format", "compile_": "compile"}.get(param.name, param.name)
            typed = isinstance(param.type, (click.IntRange, click.FloatRange, click.Choice))
            rule = RULES.get(keyword)
            checked = rule is not None and (rule.choices or rule.kind in (int, float))
            if checked and not param.is_flag and param.nargs == 1:  # a string is any text
                assert isinstance(param.type, _Checked), f"smri {name} {param.opts[0]}"
            elif typed:
                pytest.fail(f"smri {name} {param.opts[0]}: a range or choice outside the rules")


def test_every_public_function_checks_its_arguments_and_speaks_python():
    for name in [*COMMANDS, "load_model"]:
        func = getattr(api, name)
        assert hasattr(func, "__wrapped__"), f"smri.api.{name} is not @public"


# ------------------------------------------------------------------- messages for Python
def test_messages_raised_in_python_name_keywords_and_the_cli_options(where, tmp_path):
    with pytest.raises(ConfigError) as err:
        smri.train(resume=where["run"], overwrite=True)
    assert str(err.value) == "resume=... continues the run in place; drop overwrite=True"
    assert (err.value.option, err.value.keyword) == ("--overwrite", "overwrite")
    result = CliRunner().invoke(main, ["train", "--resume", str(where["run"]), "--overwrite"])
    assert "--resume continues the run in place; drop --overwrite" in result.stderr

    smri.evaluate(where["model"], where["store"], out=tmp_path / "ev", quiet=True)
    with pytest.raises(ConfigError, match=r"choose another out=\.\.\., or pass overwrite=True"):
        smri.evaluate(where["model"], where["store"], out=tmp_path / "ev", quiet=True)
    result = CliRunner().invoke(main, ["evaluate", str(where["model"]), str(where["store"]),
                                       "--out", str(tmp_path / "ev")])  # fmt: skip
    assert "choose another --out, or pass --overwrite to replace them" in result.stderr


def test_ctrl_c_in_python_says_how_to_resume_in_python(where, tmp_path, monkeypatch):
    out = tmp_path / "r"

    def interrupted(*_args, **_kwargs):
        out.mkdir()
        (out / "config.json").write_text("{}")
        (out / "last.pt").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr("smri.training.train", interrupted)
    with pytest.raises(RunInterrupted) as err:
        smri.train(where["store"], **FAST, out=out)
    assert str(err.value) == (
        f"Interrupted; {out}/last.pt holds the last finished epoch. "
        f"Continue with: smri.train(resume='{out}')"
    )


def test_a_moved_store_is_named_with_the_keyword_to_give(where, tmp_path):
    import json
    import shutil

    run = Path(shutil.copytree(where["run"], tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config["store"]["path"] = str(tmp_path / "gone.h5")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError) as err:
        smri.train(resume=run)
    assert str(err.value).endswith(f"if it moved, give it: smri.train(STORE, resume='{run}')")


# ---------------------------------------------------------------------- what comes back
def test_functions_that_return_a_folder_return_a_path(where, tmp_path):
    metrics = smri.evaluate(where["model"], where["store"], out=tmp_path / "ev", quiet=True)
    assert metrics["out"] == tmp_path / "ev" and isinstance(metrics["out"], Path)
    report = smri.explain(where["model"], where["store"], "P001", out=tmp_path / "ex", steps=2,
                          quiet=True)  # fmt: skip
    assert report["out"] == tmp_path / "ex" and isinstance(report["out"], Path)


def test_store_dataset_refuses_negative_rows_as_it_refuses_rows_past_the_end(where):
    for rows in ([-1], [99], [True]):
        with pytest.raises(ConfigError, match=r"^rows: expected row numbers in 0\.\.11"):
            smri.StoreDataset(where["store"], rows)
    assert smri.StoreDataset(where["store"], [11, 0]).patient_ids == ["P011", "P000"]


# ---------------------------------------------------------------------------- load_model
def test_load_model_from_a_checkpoint_and_from_an_export(where, tmp_path):
    pytest.importorskip("safetensors")
    from smri.networks import ModelConfig

    images = torch.from_numpy(smri.StoreDataset(where["store"])[0][0].numpy())[None]
    outputs = []
    for source in (where["model"], smri.export(where["run"], tmp_path / "exp")[0].parent):
        model = smri.load_model(source)
        assert isinstance(model, torch.nn.Module) and not model.training
        assert isinstance(model.config, ModelConfig) and model.config.width == 0.25
        assert model.modalities == ("flair", "t1", "t1ce", "t2")
        assert model.classes == {"LGG": 0, "HGG": 1}
        with torch.no_grad():
            outputs.append(model(images))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_load_model_refuses_what_is_not_a_model(where, tmp_path):
    with pytest.raises(DataError, match="is a run folder, not an exported model; give its best"):
        smri.load_model(where["run"])
    with pytest.raises(DataError, match=r"smri\.export\("):  # worded for Python
        smri.load_model(where["run"])
    with pytest.raises(ConfigError, match=r"^device: expected a string, got 0$"):
        smri.load_model(where["model"], device=0)


# ------------------------------------------------------------- documented, and typed
def test_every_public_function_documents_every_argument():
    from tests.helpers.api_reference import public, split_doc

    for name, obj in public():
        _, args = split_doc(obj)
        params = list(inspect.signature(obj).parameters)
        assert list(args) == params, f"{name}: Args {list(args)} != arguments {params}"
        assert all(text.strip() for text in args.values()), name


def test_the_api_reference_is_generated_from_the_code():
    from tests.helpers.api_reference import END, PAGE, START, reference

    page = PAGE.read_text(encoding="utf-8")
    section = START + page.partition(START)[2].partition(END)[0] + END
    assert section == reference(), "docs/api.md is stale: run python -m tests.helpers.api_reference"


def test_the_package_ships_py_typed():
    import configparser

    root = Path(smri.__file__).parent
    assert (root / "py.typed").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(root.parent / "setup.cfg")
    assert "py.typed" in cfg["options.package_data"]["smri"]
