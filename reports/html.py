"""A self-contained HTML document: inline CSS, figures as PNG data URIs, every user string escaped.

No external resources are referenced, so a report can be mailed or archived as one file.  A
small inline script counts the figures that decoded and writes the count into
``document.title`` (``... [figures ok: N/N]``), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{border-bottom:2px solid #dfe3ea;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-top:1.4rem} .meta{color:#5b6475;font-size:.9rem}
h1,h2,h3,p,caption,figcaption,.banner,td{overflow-wrap:anywhere}
th{overflow-wrap:normal;word-break:normal} td.n{white-space:nowrap;overflow-wrap:normal} td:not(.n){text-align:left}
.sim{color:#a4302a;font-weight:700;white-space:nowrap} .synthetic{color:#7a5b00;white-space:nowrap}
.banner{background:#fff4d6;border:1px solid #e7c66a;padding:.6rem .9rem;border-radius:6px;margin:1rem 0;font-weight:600}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.88rem;max-width:100%} th,td{border:1px solid #dfe3ea;padding:.25rem .55rem;text-align:right}
th{background:#f3f5f9;vertical-align:bottom} caption{caption-side:top;text-align:left;color:#5b6475;font-size:.88rem;padding:.2rem 0}
.scroll{overflow-x:auto;max-width:100%} td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0;max-width:100%} figure img{max-width:100%;height:auto;box-sizing:border-box;border:1px solid #eef0f4} figcaption{color:#5b6475;font-size:.88rem}
.note{color:#5b6475;font-size:.9rem}
"""

CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.title = document.title + ' [figures ok: ' + ok + '/' + imgs.length + ']';
});
"""


def esc(value: object) -> str:
    """``str(value)`` escaped for HTML text and attributes (quotes too); None is the empty string."""
    return html.escape("" if value is None else str(value), quote=True)


def mark_figure(fig: Figure) -> None:
    """Write [SIMULATED] into the figure, above its top right corner (kept by the tight bounding box)."""
    fig.text(0.995, 1.0, SIMULATED_MARK, ha="right", va="bottom", color="#a4302a", fontsize=11, fontweight="bold")


def figure_png(fig: Figure, dpi: int = 100) -> str:
    """Base64 PNG of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


SIMULATED_MARK = "[SIMULATED]"
SYNTHETIC_MARK = "[synthetic trace]"
UNKNOWN = "&ndash;"  # the dash shown for every unknown value (never 0, never "nan" or "None")
_UNKNOWN_TEXT = {"", "nan", "NaN", "None", "none", "null", "<NA>", "NaT"}


def is_unknown(value: object) -> bool:
    """Whether ``value`` is unknown: None, NaN or NA, or text that spells one of them."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() in _UNKNOWN_TEXT
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: known
        return False


def _format_cell(value, float_format: str) -> str:
    """A ``<td>``: numbers, yes/no and dashes kept on one line (class ``n``), text free to wrap."""
    if is_unknown(value):
        return f'<td class="n">{UNKNOWN}</td>'  # unknown is shown as unknown, never as 0
    if isinstance(value, (bool, np.bool_)):
        return f'<td class="n">{"yes" if value else "no"}</td>'
    if isinstance(value, (int, np.integer)):
        return f'<td class="n">{esc(f"{int(value):,}")}</td>'
    if isinstance(value, (float, np.floating)):
        return f'<td class="n">{esc(human_float(float(value), float_format))}</td>'
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    text = str(value)
    numeric = len(text) <= 24 and _NUMBER.match(text) is not None
    return f'<td class="n">{esc(text)}</td>' if numeric else f"<td>{esc(text)}</td>"


def human_float(value: float, spec: str = ",.4g") -> str:
    """``value`` by the ``format`` spec ``spec``, never in scientific notation: where the spec
    would write an exponent, a large value is written whole with thousands separators
    (17,589) and a small one in fixed notation to four significant digits (0.0000005944);
    below 1e-12 it is 0."""
    text = format(value, spec)
    if "e" not in text.lower() or not np.isfinite(value):
        return text
    if abs(value) >= 1:
        return f"{value:,.0f}"
    if abs(value) < 1e-12:
        return "0"
    digits = min(15, 3 - int(np.floor(np.log10(abs(value)))))
    return f"{value:.{digits}f}".rstrip("0")


_NUMBER = re.compile(r"^([a-z]+ )?[-+]?[\d,.]+( ?%)?( \(\w+\)| [A-Za-z]+){0,2}$")  # "1,410", "3.2 % slower", "costs 4.1 % more"


class Markup(str):
    """Text that is already HTML (built with :func:`esc`), placed in a table cell as is."""


def mark(text: str, simulated: bool = False, synthetic: bool = False) -> Markup:
    """``text`` escaped, followed by the [SIMULATED] and/or [synthetic trace] marks."""
    out = esc(text)
    if simulated:
        out += f' <span class="sim">{SIMULATED_MARK}</span>'
    if synthetic:
        out += f' <span class="synthetic">{SYNTHETIC_MARK}</span>'
    return Markup(out)


def _header(name: object) -> str:
    """A column name, escaped, with break opportunities after underscores and slashes."""
    return esc(name).replace("_", "_<wbr>").replace("/", "/<wbr>")


@dataclass
class Report:
    """An HTML report under construction: sections are appended to ``parts`` in order,
    ``simulated`` puts a warning banner at the top, and ``figures`` counts the figures added.

    ``base`` is the directory the report is written to: paths under it are shown relative to it,
    any other path by its name alone (:meth:`display_path`), so a report never shows where the
    machine keeps its files."""

    title: str
    simulated: bool = False
    subtitle: str | None = None
    parts: list[str] = field(default_factory=list)
    figures: int = 0
    base: Path | None = None
    section_simulated: bool = False
    _open_section: bool = False

    def display_path(self, path: str | Path) -> str:
        """``path`` relative to ``base`` when under it, else its last component."""
        path = Path(path)
        if self.base is not None:
            try:
                resolved, base = path.resolve(), Path(self.base).resolve()
                if resolved.is_relative_to(base):
                    return resolved.relative_to(base).as_posix() or "."
            except (OSError, ValueError):
                pass
        return path.name or str(path)

    def section(self, text: str, simulated: bool = False) -> None:
        """Start a section (``<section>`` with an ``<h2>``): ``simulated`` marks its heading
        [SIMULATED], and figures added until the next section carry the mark too."""
        self._close_section()
        self.section_simulated = bool(simulated)
        self.simulated |= bool(simulated)
        flag = ' data-simulated="true"' if simulated else ""
        self.parts.append(f"<section{flag}><h2>{mark(text, simulated)}</h2>")
        self._open_section = True

    def _close_section(self) -> None:
        if self._open_section:
            self.parts.append("</section>")
            self._open_section = False

    def heading(self, text: str, level: int = 2, simulated: bool | None = None) -> None:
        """Append a heading of ``level``; level 2 starts a section (:meth:`section`).
        ``simulated`` (None: the section's) adds the [SIMULATED] mark."""
        if level == 2:
            self.section(text, bool(simulated))
            return
        sim = self.section_simulated if simulated is None else simulated
        self.parts.append(f"<h{level}>{mark(text, sim)}</h{level}>")

    def paragraph(self, text: str, css: str | None = None) -> None:
        """Append a paragraph, of CSS class ``css`` if given (``note``: small grey text)."""
        cls = f' class="{esc(css)}"' if css else ""
        body = str(text) if isinstance(text, Markup) else esc(text)
        self.parts.append(f"<p{cls}>{body}</p>")

    def banner(self, text: str) -> None:
        """Append a highlighted warning box."""
        self.parts.append(f'<div class="banner">{esc(text)}</div>')

    def table(self, frame: pd.DataFrame, caption: str | None = None, float_format: str = ",.4g", index: bool = False,
              max_columns: int = 10) -> None:
        """Append ``frame`` as a table: floats by the ``format`` spec ``float_format``, integers with
        thousands separators, booleans as yes/no, missing values as a dash (never 0, never "nan");
        ``index``: show the index too.  Cells of :class:`Markup` are placed as they are.  A frame
        of more than ``max_columns`` columns is split into tables of that many, each repeating
        the first column, so no table is wider than the page."""
        frame = frame.reset_index() if index else frame
        if len(frame.columns) > max_columns:  # too wide for the page: split, the first column repeated
            rest = list(frame.columns[1:])
            step = max_columns - 1
            parts = [rest[i:i + step] for i in range(0, len(rest), step)]
            for n, columns in enumerate(parts, 1):
                self.table(frame[[frame.columns[0], *columns]], f"{caption or ''} ({n}/{len(parts)})".strip(), float_format,
                           max_columns=max_columns)
            return
        head = "".join(f"<th>{_header(c)}</th>" for c in frame.columns)
        rows = "".join("<tr>" + "".join(_format_cell(v, float_format) for v in row) + "</tr>"
                       for row in frame.itertuples(index=False, name=None))
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        self.parts.append(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')

    def key_values(self, items: dict, caption: str | None = None, float_format: str = ",.4g") -> None:
        """Append ``items`` as a two-column table (quantity, value)."""
        self.table(pd.DataFrame({"quantity": list(items), "value": list(items.values())}).astype(object), caption, float_format)

    def figure(self, fig: Figure, caption: str, simulated: bool | None = None) -> None:
        """Append a matplotlib figure as an inline PNG (the figure is closed).  ``simulated``
        (None: the section's) writes [SIMULATED] into the image and in front of the caption."""
        sim = self.section_simulated if simulated is None else simulated
        if sim:
            mark_figure(fig)
            caption = f"{SIMULATED_MARK} {caption}"
        data = figure_png(fig)
        self.figures += 1
        self.parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{mark(caption)}</figcaption></figure>")

    def render(self) -> str:
        """The whole document as HTML text, stamped with the wattlas version and the time (UTC)."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        from toolkit import __version__

        banner = ('<div class="banner">Contains SIMULATED figures (simulated device or simulated profile): '
                  "model outputs, not measurements.</div>") if self.simulated else ""
        self._close_section()
        sub = f'<p class="meta">{esc(self.subtitle)}</p>' if self.subtitle else ""
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{esc(self.title)}</h1>{sub}"
                f'<p class="meta">wattlas {esc(__version__)}, generated {esc(stamp)}</p>{banner}'
                + "\n".join(self.parts) + f"<script>{CHECK_SCRIPT}</script></body></html>")

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path`` atomically (a failure names ``path`` and leaves no file)."""
        from toolkit.jsonio import ensure_writable_dir, write_text_atomic

        path = Path(path)
        ensure_writable_dir(path.parent)
        return write_text_atomic(path, self.render())
