"""wattlas shared core: artifact schemas, validation, Parquet IO, configuration and the CLI root."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs ~20 ms that `wattlas --help`
    # and every command would otherwise pay at start-up.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("wattlas")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
