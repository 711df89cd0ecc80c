"""smri's tests: `stages/` (each stage of the pipeline, in the order data flows), `cli/` (the
commands, the Python API and the docs that describe them), `robustness/` (bad inputs, hostile
files, interruptions, concurrency), `system/` (`make experiments`, CUDA). Plain helpers live in
`helpers/`, fixtures in `conftest.py`.
"""
