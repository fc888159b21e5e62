"""The one error type of the `cellloop` command.

Any subcommand (the application's in `backend/`, the model's in `pipeline/model/commands.py`) raises
`CLIError` for an expected failure: bad input, a missing file or row, a state that forbids the action. The entry
point (`backend/cli.py`) prints it as one line on stderr and exits with status 2. It lives here, in the science
library, so pipeline's commands can raise it without importing the application.
"""
from __future__ import annotations


class CLIError(Exception):
    """An expected failure: printed as one line, exit status 2."""
