"""Statistics of trace files too large for memory (the 2024 Azure week-long traces hold 27 M rows).

The CSV is split into byte blocks by dask; each block is parsed, validated and reduced to a
:class:`~toolkit.traces.stats.TracePartial` on its own, and the partials merge in file order.
Errors found inside a block carry the block-local row and are mapped back to the file row once
the lengths of the blocks before it are known; the text line of that row is then found by
rescanning the file (error path only), since quoted fields and blank lines make rows and lines
differ.

The file is refused before dask starts when its header is bad (see
:func:`~toolkit.traces.formats.read_header`), and the header must be the file's first line, as
dask copies that line to the head of every block.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import InputError
from ..validation import RowContext
from .formats import (
    CSV_OPTIONS, TraceFormat, arrival_at, check_csv_source, decompression_errors, detect_format, iter_csv_chunks,
    line_locator, locate_encoding_error, malformed_error, open_file_text, order_problem, raise_first, read_header,
    to_trace_table, trace_origin,
)
from .stats import TracePartial, partial_of_table

if TYPE_CHECKING:
    from distributed import Client

_EXTRA_FIELDS = "extra fields"  # a block whose rows are longer than the header (pandas took an index)


def _block_summary(block: pd.DataFrame, fmt: TraceFormat, origin, source: str):
    """(rows, partial, error, first, last) of one block: the partial, or the error as (block row,
    column, message), and its first and last arrivals for the order checks across block boundaries."""
    if not isinstance(block.index, pd.RangeIndex):
        return len(block), None, _EXTRA_FIELDS, None, None
    block.columns = [str(c).strip() for c in block.columns]
    ends = (arrival_at(block, 0, fmt, origin), arrival_at(block, len(block) - 1, fmt, origin)) if len(block) else (None, None)
    ctx = RowContext(source, 0, None, fmt.source_columns())
    try:
        # first_piece=False: the block holding the first request is only known after the merge
        return len(block), partial_of_table(to_trace_table(block, fmt, ctx, origin, first_piece=False)), None, *ends
    except InputError as err:  # plain tuples travel to and from dask.distributed workers
        return len(block), None, (err.row, err.column, err.message), *ends


def _raise_stream_error(path: Path, fmt: str) -> None:
    """Raise the located InputError of a file pandas cannot parse, from a whole-file stream.

    A block's parser numbers only its own records; the stream's numbers are the file's.  Returns
    when the stream parses: the block split itself was the problem.
    """
    for _ in iter_csv_chunks(path, fmt):
        pass


def summarize_csv_chunked(path: str | Path, fmt: str = "auto", blocksize: str | int = "64MB",
                          client: Client | None = None) -> TracePartial:
    """Merged partial of a CSV trace of any size, computed block by block with dask.

    ``client``: a dask.distributed client to run the blocks on (None: dask's local scheduler).
    """
    import dask
    import dask.dataframe as dd

    path = check_csv_source(path)
    header = read_header(path)
    trace_format = detect_format(header.names, path, fmt)
    if header.start != 1 or header.end != 1:
        raise InputError(path, "chunked reading needs the header alone on the first line (use --mode memory)", line=header.start)
    open_text = lambda: open_file_text(path)  # noqa: E731 - rescanned on the error path only
    ctx = RowContext(path, 0, 1, trace_format.source_columns(), locate_line=line_locator(open_text, path))
    read_opts = dict(encoding="utf-8-sig", **CSV_OPTIONS)
    try:
        with decompression_errors(path):
            head = pd.read_csv(path, nrows=1, **read_opts)
            if not isinstance(head.index, pd.RangeIndex):
                raise malformed_error(path, None, open_text, len(header.names))
            if head.empty:
                raise InputError(path, "file has a header but no data rows")
            head.columns = [str(c).strip() for c in head.columns]
            origin = trace_origin(head, trace_format, ctx)
            try:
                # dask parses a sample of the file here, and its ValueErrors wrap pandas' ParserErrors
                frame = dd.read_csv(str(path), blocksize=None if path.suffix == ".gz" else blocksize, **read_opts)
            except ValueError as exc:
                _raise_stream_error(path, fmt)
                raise InputError(path, f"cannot split into blocks: {' '.join(str(exc).split())[:200]}") from None
            tasks = [dask.delayed(_block_summary)(b, trace_format, origin, str(path)) for b in frame.to_delayed()]
            results = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    except UnicodeDecodeError:
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    except pd.errors.ParserError:
        _raise_stream_error(path, fmt)
        raise InputError(path, "a quoted field with a line break spans two blocks: chunked statistics cannot "
                         "split this file (use --mode memory)") from None
    merged = TracePartial()
    offset = 0
    # the last request of the blocks so far; before the first, a wattlas file's trace start
    previous = (0.0, None) if trace_format.name == "wattlas" else None
    for rows, partial, error, first, last in results:
        if error == _EXTRA_FIELDS:
            raise malformed_error(path, None, open_text, len(header.names))
        problems = []
        if previous is not None and first is not None:
            # the same check and words as inside a block, for the block's first row
            piece = RowContext(path, offset, 1, trace_format.source_columns(), locate_line=ctx.locate_line)
            problems.append(order_problem(np.array([first[0]]), pd.Series([first[1]]), piece, previous))
        if error is not None:
            local_row, column, message = error
            row = None if local_row is None else offset + local_row
            problems.append(InputError(path, message, row=row, column=column, line=ctx.line_of(row)))
        raise_first(problems)
        merged = merged.merge(partial)
        offset += rows
        previous = last if last is not None else previous
    if merged.n == 0:
        raise InputError(path, "file has a header but no data rows")
    return merged
