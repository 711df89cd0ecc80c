"""`python -m smri` runs the command-line interface (also what torchrun starts)."""

from smri.cli import entry

if __name__ == "__main__":
    entry()
