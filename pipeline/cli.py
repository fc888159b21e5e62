"""The `cellloop` command: one entry point for admins.

Each part of the system registers its own subcommands (`backend.commands`, `pipeline.model.commands`);
this module only composes them and turns expected failures into one clear line and a non-zero exit.
Subcommand modules must not import heavy libraries (TensorFlow) at import time, so `cellloop --help`
stays fast.
"""
from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """An expected failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from backend import commands as backend_commands
    from pipeline.model import commands as model_commands

    parser = argparse.ArgumentParser(prog="cellloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    backend_commands.register(sub)
    model_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("cellloop: interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:
        print(f"cellloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        # Library code raises these with user-facing messages (bad file, bad channel, bad shape).
        print(f"cellloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
