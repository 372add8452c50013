"""What commands show people on the terminal, one way for all of them: progress bars (tqdm, on
stderr and only to a terminal, so pipes, logs and --json stdout never see them), the closing line
saying what a command wrote where, and numbers and tables formatted for people.

Cores (the demo, reports) use these too; nothing here parses options.
"""

from __future__ import annotations

import sys
from typing import Any

def progress_bar(total: float | None = None, desc: str | None = None, unit: str = "it", *, tick_s: float | None = None,
                 file=None, **options: Any):
    """A tqdm bar on stderr, silent when stderr is not a terminal, cleared when closed.

    ``total`` None: a counter without an end.  ``tick_s``: redraw this often even without an
    update (elapsed time keeps moving while one long step runs); only on a terminal.  Use as a
    context manager or close it."""
    bar = _bar_class()(total=total, desc=desc, unit=unit, file=file if file is not None else sys.stderr,
                       disable=None, leave=False, dynamic_ncols=True, **options)
    if tick_s and not bar.disable:
        bar.start_ticking(tick_s)
    return bar


_BAR_CLASS = None


def _bar_class():
    """tqdm with a redraw thread (imported on first use: ``--help`` stays light)."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        import threading

        from tqdm import tqdm

        class Bar(tqdm):
            _ticker = None

            def start_ticking(self, every_s: float) -> None:
                self._stop_ticking = threading.Event()

                def tick() -> None:
                    while not self._stop_ticking.wait(every_s):
                        self.refresh()

                self._ticker = threading.Thread(target=tick, name="wattlas-progress", daemon=True)
                self._ticker.start()

            def close(self) -> None:
                if self._ticker is not None:
                    self._stop_ticking.set()
                    self._ticker.join()
                    self._ticker = None
                super().close()

        _BAR_CLASS = Bar
    return _BAR_CLASS


def fraction_progress(bar) -> Any:
    """A ``progress(fraction)`` callback (0 to 1, as the replay engine calls it) driving ``bar``
    (total 100, unit %)."""
    def update(fraction: float) -> None:
        step = int(max(0.0, min(1.0, fraction)) * 100) - bar.n
        if step > 0:
            bar.update(step)
    return update


def count_progress(bar) -> Any:
    """A ``progress(done, total)`` callback (as the POLCA search and the sweep call it) driving ``bar``."""
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return update


def step_progress(bar) -> Any:
    """A ``progress(message)`` callback for a core that announces each step as it starts (as
    ``fit_bundle`` does per phase): the steps before it count as done, its message is the label."""
    def step(message: str) -> None:
        if bar.disable:
            return
        if bar.desc:
            bar.update(1)
        bar.set_description(message, refresh=True)
    return step


class StageProgress:
    """One bar per stage of a multi-stage command, replaced as stages change: called as
    ``progress(stage, fraction)`` with ``fraction`` 0..1, or None while a stage's length is unknown
    (then the bar shows the elapsed time).  A context manager; closing clears the last bar."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, fraction: float | None = None) -> None:
        if stage != self.stage or (fraction is not None and self.bar is not None and self.bar.total is None):
            self.close()
            self.stage = stage
            desc = f"{self.prefix}{stage}"
            self.bar = (progress_bar(100, desc, "%", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} % [{elapsed}<{remaining}]")
                        if fraction is not None else progress_bar(None, desc, "step", tick_s=0.5,
                                                                   bar_format="{desc}: {elapsed}"))
        if fraction is not None:
            fraction_progress(self.bar)(fraction)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closing_line(text: str, as_json: bool = False) -> None:
    """The line a long command ends with, saying what it wrote where: on stdout after human output;
    with ``--json`` on stderr, and only to a terminal (stdout stays one JSON document, and a
    caller capturing both streams still reads plain JSON)."""
    if not as_json:
        print(text, flush=True)
    elif sys.stderr.isatty():
        print(text, file=sys.stderr, flush=True)


def human_number(value: object, digits: int = 4) -> str:
    """A number as people read it: about ``digits`` significant digits in fixed notation (never
    ``1.826e+04`` or ``-7.4e-14``: 18,260 and 0), thousands separated, "-" for unknown (None,
    NaN); infinities as "inf"; integers whole; anything else as text."""
    import math
    import numbers

    if value is None:
        return "-"
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "-"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    magnitude = abs(number)
    decimals = 0 if magnitude == 0 else max(0, digits - 1 - math.floor(math.log10(magnitude)))
    decimals = min(decimals, 6)
    text = f"{number:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def human_table(frame, digits: int = 4) -> str:
    """A DataFrame as aligned text for people: every cell through :func:`human_number` ("-" for
    unknowns, no scientific notation, yes/no for flags), numbers right-aligned, text left-aligned,
    two spaces between columns, no index."""
    if frame.empty:
        return "(no rows)"
    columns = []
    for name in frame.columns:
        values = list(frame[name])
        cells = [human_number(v, digits) for v in values]
        text = any(isinstance(v, str) for v in values)
        width = max(len(str(name)), *(len(c) for c in cells))
        align = str.ljust if text else str.rjust
        columns.append([align(str(name), width)] + [align(c, width) for c in cells])
    return "\n".join("  ".join(row).rstrip() for row in zip(*columns))
