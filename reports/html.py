"""A self-contained HTML document: inline CSS, figures as PNG data URIs, every user string escaped.

No external resources are referenced, so a report can be mailed or archived as one file.  A
small inline script counts the figures that decoded and writes the count into
``document.title`` (``... [figures ok: N/N]``), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{border-bottom:2px solid #dfe3ea;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-top:1.4rem} .meta{color:#5b6475;font-size:.9rem}
.banner{background:#fff4d6;border:1px solid #e7c66a;padding:.6rem .9rem;border-radius:6px;margin:1rem 0;font-weight:600}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.88rem} th,td{border:1px solid #dfe3ea;padding:.25rem .55rem;text-align:right}
th{background:#f3f5f9} caption{caption-side:top;text-align:left;color:#5b6475;font-size:.88rem;padding:.2rem 0}
.scroll{overflow-x:auto} td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eef0f4} figcaption{color:#5b6475;font-size:.88rem}
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


def figure_png(fig: Figure, dpi: int = 100) -> str:
    """Base64 PNG of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _format_cell(value, float_format: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "&ndash;"  # unknown is shown as unknown, never as 0
    if isinstance(value, float):
        return esc(format(value, float_format))
    if isinstance(value, int):
        return esc(f"{value:,}")
    return esc(value)


@dataclass
class Report:
    """An HTML report under construction: sections are appended to ``parts`` in order,
    ``simulated`` puts a warning banner at the top, and ``figures`` counts the figures added."""

    title: str
    simulated: bool = False
    subtitle: str | None = None
    parts: list[str] = field(default_factory=list)
    figures: int = 0

    def heading(self, text: str, level: int = 2) -> None:
        """Append a heading of ``level`` (``<h2>`` by default)."""
        self.parts.append(f"<h{level}>{esc(text)}</h{level}>")

    def paragraph(self, text: str, css: str | None = None) -> None:
        """Append a paragraph, of CSS class ``css`` if given (``note``: small grey text)."""
        cls = f' class="{esc(css)}"' if css else ""
        self.parts.append(f"<p{cls}>{esc(text)}</p>")

    def banner(self, text: str) -> None:
        """Append a highlighted warning box."""
        self.parts.append(f'<div class="banner">{esc(text)}</div>')

    def table(self, frame: pd.DataFrame, caption: str | None = None, float_format: str = ",.4g", index: bool = False) -> None:
        """Append ``frame`` as a table: floats by the ``format`` spec ``float_format``, integers with
        thousands separators, missing values as a dash (never 0); ``index``: show the index too."""
        frame = frame.reset_index() if index else frame
        head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
        rows = "".join("<tr>" + "".join(f"<td>{_format_cell(v, float_format)}</td>" for v in row) + "</tr>"
                       for row in frame.itertuples(index=False, name=None))
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        self.parts.append(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')

    def key_values(self, items: dict, caption: str | None = None) -> None:
        """Append ``items`` as a two-column table (quantity, value)."""
        self.table(pd.DataFrame({"quantity": list(items), "value": list(items.values())}).astype(object), caption)

    def figure(self, fig: Figure, caption: str) -> None:
        """Append a matplotlib figure as an inline PNG (the figure is closed)."""
        data = figure_png(fig)
        self.figures += 1
        self.parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{esc(caption)}</figcaption></figure>")

    def render(self) -> str:
        """The whole document as HTML text, stamped with the wattlas version and the time (UTC)."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        from toolkit import __version__

        banner = ('<div class="banner">Contains SIMULATED figures (simulated device or simulated profile): '
                  "model outputs, not measurements.</div>") if self.simulated else ""
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
