"""`python -m llmos` runs the CLI."""

from llmos.shell.cli import main

if __name__ == "__main__":
    main()
