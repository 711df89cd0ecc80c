"""The documentation keeps up with the code: every command, argument and option of `smri` is in
docs/usage.md, README.md stays a short front door, and every relative link and image resolves.

In the spirit of sqlite-utils' `test_commands_are_documented`. Commands are taken from
`smri.cli.COMMANDS`, so a command added there fails here until docs/usage.md documents it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from smri.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
USAGE = DOCS / "usage.md"
README_MAX_LINES = 250

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); a title after the target ("...") is allowed.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*\b(?:src|href)=["']([^"']+)["']""", re.IGNORECASE)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block) for every line of a markdown text."""
    rows, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            rows.append((number, line, True))
            continue
        rows.append((number, line, fenced))
    return rows


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = unicodedata.normalize("NFC", text).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, line, fenced in _prose_lines(path.read_text(encoding="utf-8")):
        match = None if fenced else HEADING.match(line)
        if match:
            slug = _slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _sections(path: Path) -> list[tuple[str, int, str]]:
    """(heading text, level, body up to the next heading of the same or a higher level)."""
    rows = _prose_lines(path.read_text(encoding="utf-8"))
    headings = []
    for index, (_, line, fenced) in enumerate(rows):
        match = None if fenced else HEADING.match(line)
        if match:
            headings.append((index, len(match.group(1)), match.group(2)))
    sections = []
    for k, (index, level, title) in enumerate(headings):
        end = next((i for i, lvl, _ in headings[k + 1 :] if lvl <= level), len(rows))
        sections.append((title, level, "\n".join(line for _, line, _ in rows[index:end])))
    return sections


def _command(name: str) -> click.Command:
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"smri {name} is listed in smri.cli.COMMANDS but cannot be imported"
    return command


def _command_section(name: str) -> str:
    """The section of docs/usage.md whose heading names `smri NAME` (subsections included)."""
    pattern = re.compile(rf"\bsmri {re.escape(name)}\b")
    found = [body for title, _, body in _sections(USAGE) if pattern.search(title)]
    assert found, (
        f"smri {name} has no section in {USAGE.relative_to(ROOT)}: add a heading such as "
        f"'## `smri {name}`' with its usage line, options and an example"
    )
    return found[0]


def _usage_line(name: str) -> str:
    command = _command(name)
    ctx = click.Context(command, info_name=name, parent=click.Context(main, info_name="smri"))
    return " ".join(["smri", name, *command.collect_usage_pieces(ctx)])


def _mentions(text: str, token: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_a_section_with_its_usage_line(name):
    section = _command_section(name)
    usage = _usage_line(name)
    assert usage in section, f"the smri {name} section of docs/usage.md lacks {usage!r}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_and_argument_is_documented(name):
    section = _command_section(name)
    missing = []
    for param in _command(name).params:
        if param.name == "help":
            continue
        if isinstance(param, click.Option):  # its long names: --val-fraction, --amp (not -j)
            tokens = [opt for opt in param.opts if opt.startswith("--")] or param.opts
        else:  # an argument, as the usage line spells it: PATIENT_DIRS
            tokens = [param.human_readable_name]
        missing += [token for token in tokens if not _mentions(section, token)]
    assert not missing, f"the smri {name} section of docs/usage.md does not mention {missing}"


def _complete(words: str) -> list[str]:
    """What bash completion offers after `words` (the last one being typed)."""
    env = {"_SMRI_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}  # fmt: skip
    result = CliRunner().invoke(main, [], prog_name="smri", env=env)
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.output.splitlines()]


def test_shell_completion_works_as_documented():
    section = USAGE.read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_SMRI_COMPLETE={shell}_source smri" in section
    assert _complete("smri tr") == ["train"]
    assert _complete("smri train --ca") == ["--cache"]
    assert _complete("smri train --cache ") == ["auto", "device", "ram", "none"]
    assert "--dataset" in _complete("smri export --")
    for shell in ("bash", "zsh", "fish"):  # the script each documented line evaluates
        env = {"_SMRI_COMPLETE": f"{shell}_source"}
        script = CliRunner().invoke(main, [], prog_name="smri", env=env).output
        assert "_SMRI_COMPLETE" in script and "smri" in script


def _tour_commands() -> list[list[str]]:
    """The commands of README's five-minute tour (its first bash block after the heading)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = text[text.index("## A five-minute tour") :]
    block = tour[
        tour.index("```bash") + len("```bash") : tour.index("```", tour.index("```bash") + 7)
    ]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_readme_tour_uses_only_smri_commands_that_exist():
    commands = _tour_commands()
    assert commands and all(c[0] == "smri" and c[1] in COMMANDS for c in commands), commands


@pytest.mark.slow
def test_readme_tour_runs(tmp_path):
    """Examples that run: every command of the tour, in order, in an empty folder."""
    for command in _tour_commands():
        done = subprocess.run(
            [sys.executable, "-m", "smri", *command[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stderr}"
    assert (tmp_path / "figures" / "summary.md").is_file()


def test_usage_documents_no_command_that_does_not_exist():
    documented = set()
    for title, _, _ in _sections(USAGE):
        documented.update(re.findall(r"`smri ([a-z][\w-]*)`", title))
    assert documented - set(COMMANDS) == set()


def test_help_texts_point_at_pages_that_exist():
    """Option help that refers the reader elsewhere names a docs page, not a README section."""
    wrong = []
    for name in COMMANDS:
        for param in _command(name).params:
            text = getattr(param, "help", None) or ""
            # "see README" or README.md#section; a file named README.md (export's card) is fine
            if re.search(r"\bREADME(?!\.md\b)|README\.md#", text):
                wrong.append(f"smri {name} {param.opts[0]}: {text!r} (that part is now in docs/)")
            for page in re.findall(r"docs/[\w./-]+\.md", text):
                if not (ROOT / page).is_file():
                    wrong.append(f"smri {name} {param.opts[0]}: {page} does not exist")
    assert not wrong, "\n".join(wrong)


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail into docs/"
    )


@pytest.mark.parametrize("index", ["README.md", "docs/README.md"])
def test_every_docs_page_is_linked_from_the_indexes(index):
    path = ROOT / index
    targets = {
        (path.parent / target.split("#")[0]).resolve()
        for target in LINK.findall(path.read_text(encoding="utf-8"))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    }
    pages = [p for p in sorted(DOCS.glob("*.md")) if p.resolve() != path.resolve()]
    unlinked = [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in targets]
    assert not unlinked, f"{index} does not link {unlinked}"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_page_starts_with_a_title(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), f"{path.relative_to(ROOT)} should start with '# Title'"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(path):
    broken = []
    for number, line, fenced in _prose_lines(path.read_text(encoding="utf-8")):
        if fenced:
            continue
        for target in LINK.findall(line) + HTML_SRC.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            where = (path.parent / file_part).resolve() if file_part else path
            if not where.exists():
                broken.append(f"line {number}: {target} (no such file)")
            elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
                broken.append(f"line {number}: {target} (no heading #{anchor})")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)
