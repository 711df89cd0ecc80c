"""Hostile payloads: what a malicious file carries."""

from __future__ import annotations

from pathlib import Path


class Payload:
    """Unpickling this runs `exec`, which creates `marker`: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))
