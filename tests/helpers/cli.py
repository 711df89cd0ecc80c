"""Running `smri`: in-process through click (`invoke`), or as a real subprocess as a user's shell
does (`run_smri`), and checking what it printed and left."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner, Result

from smri.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DEADLINE_S = 180.0  # generous: the machine may be busy with other work


def quiet(*_args: object) -> None:
    """Swallow log lines."""


def invoke(*args: object) -> Result:
    """`smri ARGS` in-process; the result, once no traceback was printed and no exception but the
    exit escaped."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def smri_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "smri", *(str(a) for a in args)]


def run_smri(*args: object, timeout: float = DEADLINE_S, **kw) -> subprocess.CompletedProcess:
    """`smri ARGS` to completion; stdout and stderr as text."""
    return subprocess.run(
        smri_cmd(*args), capture_output=True, text=True, timeout=timeout, env=ENV, **kw
    )


def error_line(res: Result | subprocess.CompletedProcess, code: int = 1) -> str:
    """The one `Error:` line of a refused command (exit `code`), and no traceback; `res` is
    click's result (`invoke`) or a finished subprocess (`run_smri`)."""
    exit_code = res.exit_code if isinstance(res, Result) else res.returncode
    assert exit_code == code, (exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def sole_error_line(res: Result | subprocess.CompletedProcess, code: int = 1) -> str:
    """`error_line`, and the last line on stderr: for exit 1 the only one, for exit 2 below
    click's usage lines."""
    line = error_line(res, code)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1] == line and line.startswith("Error: "), res.stderr
    if code == 1:
        assert len(lines) == 1, res.stderr
    return line


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Hidden partial and lock files anywhere under `folder`: debris of a run."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.name.endswith((".partial", ".lock"))
    )


def _holds(path: Path, pid: int | None) -> bool:
    """Whether `path` exists (and, with `pid`, is an OutputLock file that process holds: the
    holder writes its pid into it once it has the lock, not when it creates it)."""
    try:
        text = path.read_text()
    except OSError:
        return False
    return pid is None or text.strip() == str(pid)


def wait_for(
    proc: subprocess.Popen, path: Path, timeout: float = DEADLINE_S, holder: int | None = None
) -> None:
    """Poll until `path` exists (with `holder`: until that process holds the lock it is);
    fail if `proc` ends first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not _holds(path, holder):
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"ended (exit {proc.returncode}) before {path}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.01)


@contextmanager
def paused_holder(
    cmd: list[str], lock: Path, ready: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Start `cmd`, wait until it holds its output lock (`lock` exists) and, with `ready`,
    until that file exists too, and stop it there (SIGSTOP) while the block runs; then let it
    go on. No timing luck is involved.

    After the block the process has ended: ``proc.returncode``, ``proc.out`` and ``proc.err``.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        wait_for(proc, lock, holder=proc.pid)
        if ready is not None:
            wait_for(proc, ready)
        proc.send_signal(signal.SIGSTOP)
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)
        if sys.exc_info()[0] is not None:
            proc.kill()
        out, err = proc.communicate(timeout=DEADLINE_S)
        proc.out, proc.err = out.decode(), err.decode()
