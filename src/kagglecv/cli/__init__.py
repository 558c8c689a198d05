"""cli: the `kagglecv` command on top of every stage. parser.py declares the commands and their
options; commands.py runs them and turns a user's mistake into one line and exit 2."""

from kagglecv.cli.commands import main

__all__ = ["main"]
