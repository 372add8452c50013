"""Statistics of trace files too large for memory (the 2024 Azure week-long traces hold 27 M rows).

The CSV is split into byte blocks by dask; each block is parsed, validated and reduced to a
:class:`~toolkit.traces.stats.TracePartial` on its own, and the partials merge in file order.
Errors found inside a block carry the block-local row and are mapped back to the file row once
the lengths of the blocks before it are known.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..validation import RowContext
from .formats import TraceFormat, detect_format, first_timestamp, locate_encoding_error, to_trace_table
from .stats import TracePartial, partial_of_table


def _block_summary(block: pd.DataFrame, fmt: TraceFormat, origin, source: str):
    block.columns = [str(c).strip() for c in block.columns]
    ctx = RowContext(source, 0, 1, fmt.source_columns())
    try:
        return len(block), partial_of_table(to_trace_table(block, fmt, ctx, origin)), None
    except InputError as err:
        return len(block), None, (err.row, err.column, err.message)


def summarize_csv_chunked(path: str | Path, fmt: str = "auto", blocksize: str | int = "64MB", client=None) -> TracePartial:
    """Merged partial of a CSV trace of any size, computed block by block with dask."""
    import dask
    import dask.dataframe as dd

    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    read_opts = dict(dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True, encoding="utf-8-sig")
    try:
        head = pd.read_csv(path, nrows=1, **read_opts)
    except UnicodeDecodeError:
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    head.columns = [str(c).strip() for c in head.columns]
    trace_format = detect_format(list(head.columns), path, fmt)
    if head.empty:
        raise InputError(path, "file has a header but no data rows")
    origin = None
    if trace_format.wall_clock:
        origin = first_timestamp(head[trace_format.arrival], RowContext(path, 0, 1, trace_format.source_columns()), trace_format.arrival)
    blocks = dd.read_csv(str(path), blocksize=None if path.suffix == ".gz" else blocksize, **read_opts).to_delayed()
    tasks = [dask.delayed(_block_summary)(b, trace_format, origin, str(path)) for b in blocks]
    try:
        results = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    except UnicodeDecodeError:
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    merged = TracePartial()
    offset = 0
    for rows, partial, error in results:
        if error is not None:
            local_row, column, message = error
            row = None if local_row is None else offset + local_row
            raise InputError(path, message, row=row, column=column, line=None if row is None else row + 1)
        if merged.n and partial.n and partial.first_s < merged.last_s:
            raise InputError(path, "not sorted: arrival goes back in time", row=offset + 1,
                             column=trace_format.arrival, line=offset + 2)
        merged = merged.merge(partial)
        offset += rows
    if merged.n == 0:
        raise InputError(path, "file has a header but no data rows")
    return merged
