"""The ``zapopt`` command: parse arguments, call the Python API, print. No logic here.

User mistakes surface as one ``error:`` line and a non-zero exit status; set
ZAPOPT_DEBUG=1 to see the full traceback instead.
"""
from __future__ import annotations

import os
import sys

import click

from zapopt.errors import ZapoptError

#: Exit status for a user error (bad file, bad argument, bad data).
EXIT_USER_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="zapopt")
def cli() -> None:
    """zapopt: skip zero activations in ONNX CNNs with tiny learned predictors.

    Typical flow: `zapopt info MODEL` to see which layers are eligible,
    `zapopt optimize MODEL -o OUT --calib DATA` to train predictors and rewrite the model,
    then `zapopt eval OUT --data DATA --reference MODEL` to measure what it cost.
    """


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
    except (ZapoptError, ValueError, TypeError, OSError, MemoryError) as exc:
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
