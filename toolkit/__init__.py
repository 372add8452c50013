"""wattlas shared core: artifact schemas, validation, Parquet IO, configuration and the CLI root."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wattlas")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
