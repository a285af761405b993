"""The ``zapopt`` click group, defined once so every command module registers on the same one.

Also routes zapopt's logged warnings to ``warning:`` lines on stderr for each command run.
"""
from __future__ import annotations

import logging

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="zapopt")
def cli() -> None:
    """zapopt: skip zero activations in ONNX CNNs with tiny learned predictors.

    Typical flow: `zapopt info MODEL` to see which layers are eligible,
    `zapopt optimize MODEL -o OUT --calib DATA` to train predictors and rewrite the model,
    then `zapopt eval OUT --data DATA --reference MODEL` to measure what it cost.
    """
    _show_warnings()


class _WarningLines(logging.Handler):
    """Prints each of zapopt's warnings once, as a ``warning:`` line on stderr, when it happens."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.shown: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.shown:
            self.shown.add(message)
            click.echo(f"warning: {message}", err=True)


def _show_warnings() -> None:
    from zapopt.notices import LOGGER

    for handler in [h for h in LOGGER.handlers if isinstance(h, _WarningLines)]:
        LOGGER.removeHandler(handler)  # one per command run (CliRunner invokes several in one process)
    LOGGER.addHandler(_WarningLines())
