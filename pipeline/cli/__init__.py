"""Thin command-line layer: parse, call, print. Errors users can fix print one line and exit 2.

common   the typer app, consoles, one-line errors, a checked recipe
sweeps   validate, run, methods
review   gate, compare, export
measure  speed, predict
ui       the MLflow UI
"""

from pipeline.cli.common import app

# Importing registers each command, in the order --help lists them.
# isort: off
from pipeline.cli import sweeps, ui, measure, review  # noqa: F401

# isort: on
from pipeline.env import absolute_env_paths


def main() -> None:
    absolute_env_paths()  # a child process started in another cwd reads the same files
    app()


__all__ = ["app", "main"]
