"""Every option of every command says what it does and its default (docs/usage.md)."""

from __future__ import annotations

import click
import pytest

from smri.cli import COMMANDS, main


def _options(name: str) -> list[click.Option]:
    command = main.get_command(click.Context(main), name)
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_and_a_shown_default(name):
    command = main.get_command(click.Context(main), name)
    ctx = click.Context(command, info_name=name)
    missing = []
    for option in _options(name):
        flags = "/".join(option.opts)
        _, text = option.get_help_record(ctx)
        if not option.help:
            missing.append(f"{flags}: no help text")
        elif "[default: " not in text and "[required]" not in text:
            missing.append(f"{flags}: no default shown in {text!r}")
    assert not missing, f"smri {name}: " + "; ".join(missing)
