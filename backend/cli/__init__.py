"""The `cellloop` command: one entry point for admins.

The only place that composes the application's subcommands (`backend.cli.admin_commands`, `backend.cli.loop_commands`) with
the science library's (`pipeline.model.commands`), and that turns expected failures into one clear line on stderr
and exit status 2. Subcommand modules must not import heavy libraries (TensorFlow) at import time, so
`cellloop --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import CLIError

# Library code raises these with user-facing messages (a bad file, channel, shape or array); ArrayError and
# ImageReadError are ValueErrors.
EXPECTED_LIBRARY_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    from backend.cli import admin_commands as backend_commands
    from backend.cli import crowd_commands, loop_commands, slide_commands
    from pipeline.model import commands as model_commands

    parser = argparse.ArgumentParser(prog="cellloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    backend_commands.register(sub)
    model_commands.register(sub)
    loop_commands.register(sub)
    crowd_commands.register(sub)  # after loop_commands: it adds crowd options to `publish` and `report`
    slide_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.quiet import quiet_tensorflow_import

    quiet_tensorflow_import()  # TensorFlow's native start-up lines would clutter every model command
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("cellloop: interrupted", file=sys.stderr)
        return 130
    except (CLIError, *EXPECTED_LIBRARY_ERRORS) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"cellloop {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
