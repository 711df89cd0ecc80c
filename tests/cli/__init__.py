"""The front doors: the Python API, every command's help, the training commands end to end, and
the docs that describe them (docs/usage.md, README links)."""
