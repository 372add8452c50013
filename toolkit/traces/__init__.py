"""Request traces: format readers (Azure, Splitwise, Vidur, Parquet), statistics, synthesis."""

from .formats import FORMATS, TraceFormat, detect_format, read_trace, write_trace
from .stats import summarize_trace

__all__ = ["FORMATS", "TraceFormat", "detect_format", "read_trace", "write_trace", "summarize_trace"]
