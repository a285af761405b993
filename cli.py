"""The ``zapopt`` command: parse arguments, call the Python API, print. No logic here.

The group lives in zapopt.commands.group and each command family in its own module of
zapopt.commands; importing them here registers them. This file keeps the error boundary:
user mistakes (``ZapoptError``, and ``OSError`` from the files they name) surface as one
``error:`` line and a non-zero exit status; set ZAPOPT_DEBUG=1 to see the full traceback
instead. Any other exception is a bug in zapopt and keeps its traceback.
"""
from __future__ import annotations

import os
import sys

import click

from zapopt.commands import bench, convert, demo, evaluate, finetune, info, optimize  # noqa: F401  (registers)
from zapopt.commands.group import cli
from zapopt.errors import ZapoptError

#: Exit status for a user error (bad file, bad argument, bad data).
EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the click group and turns user errors into one line."""
    try:
        code = cli.main(args=argv, prog_name="zapopt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ZapoptError, OSError) as exc:  # user mistakes; anything else is a bug: let it show
        if os.environ.get("ZAPOPT_DEBUG"):
            raise
        message = str(exc) or type(exc).__name__
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
