"""The ``wattlas`` command: root group, error handling and the sub-command groups."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from . import __version__
from .errors import WattlasError


class WattlasGroup(click.Group):
    """Turns wattlas errors into one-line messages and a non-zero exit, without tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; a :class:`WattlasError`, ``OSError`` or unanticipated failure
        becomes a ``click.ClickException`` (one line, exit status 1).  ``WATTLAS_DEBUG=1`` lets
        unanticipated failures through with their traceback."""
        try:
            return super().invoke(ctx)
        except WattlasError as exc:
            raise click.ClickException(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own ways out (Exit, e.g. after --help, is a RuntimeError)
        except OSError as exc:  # permissions, read-only or full disks, vanished files
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from exc
        except (EOFError, MemoryError, RecursionError, ValueError, TypeError, KeyError, IndexError,
                ArithmeticError, RuntimeError, AssertionError, AttributeError) as exc:
            # A failure no check anticipated: still one line (the traceback on request), never a
            # bare "Aborted!" (click's word for EOFError) or a screen of frames.
            if os.environ.get("WATTLAS_DEBUG"):
                raise
            message = " ".join(str(exc).split()) or "no message"
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {message[:300]} (WATTLAS_DEBUG=1 shows the traceback; "
                "please report it)") from exc


@click.group(cls=WattlasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wattlas")
def cli() -> None:
    """Telemetry analytics and trace replay for LLM inference power and energy."""


def _register() -> None:
    from collectors.cli import collect
    from characterize.cli import characterize
    from replay.cli import replay
    from reports.cli import report

    from .demo import demo
    from .traces.cli import trace

    for command in (trace, collect, characterize, replay, report, demo):
        cli.add_command(command)


_register()


def main() -> None:
    """Entry point of the ``wattlas`` console script: run :func:`cli` on ``sys.argv``."""
    cli(prog_name="wattlas")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
