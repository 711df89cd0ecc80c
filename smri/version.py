"""smri's version, in a module of its own: every stage records it (stores, checkpoints, exports,
run folders) without importing the package's face, `smri/__init__.py`, which stands above them."""

__version__ = "0.1.0"
