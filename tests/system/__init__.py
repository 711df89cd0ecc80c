"""The whole system: `make experiments` (CI runs test_experiments.py by path) and the CUDA paths
(skipped without a GPU)."""
