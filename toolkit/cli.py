"""The ``wattlas`` command: root group, error handling and the sub-command groups."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .errors import WattlasError

# Sub-command groups: (module, attribute, one-line help).  They are imported only when invoked, so
# `wattlas --version` and `--help` start without pandas, pyarrow or scikit-learn.
COMMANDS = {
    "trace": ("toolkit.traces.cli", "trace", "Request traces: statistics, conversion, synthesis."),
    "collect": ("collectors.cli", "collect", "Sample GPU telemetry (NVML or the simulated device) and profile workloads."),
    "characterize": ("characterize.cli", "characterize", "Fit, inspect and query latency/power models."),
    "replay": ("replay.cli", "replay", "Replay request traces through a simulated cluster."),
    "report": ("reports.cli", "report", "Self-contained HTML reports."),
    "demo": ("toolkit.demo", "demo", "Run the pipeline end to end on the simulated device and the shipped sample traces."),
}


class WattlasGroup(click.Group):
    """Turns wattlas errors into one-line messages and a non-zero exit, without tracebacks; loads
    each sub-command group on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every sub-command, loaded or not."""
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The sub-command ``name``, importing its module now if it is not loaded yet."""
        if name not in self.commands and name in COMMANDS:
            module, attribute, _ = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` from the stored one-line helps, without importing anything."""
        rows = [(name, COMMANDS[name][2] if name in COMMANDS else self.commands[name].get_short_help_str())
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from . import __version__

        click.echo(f"wattlas, version {__version__}")
        ctx.exit()


@click.group(cls=WattlasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli() -> None:
    """Telemetry analytics and trace replay for LLM inference power and energy."""


def main() -> None:
    """Entry point of the ``wattlas`` console script: run :func:`cli` on ``sys.argv``."""
    cli(prog_name="wattlas")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
