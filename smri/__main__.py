"""`python -m smri` runs the command-line interface (also what torchrun starts)."""

from smri.cli import main

if __name__ == "__main__":
    main()
