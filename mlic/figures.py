"""The run report's building blocks: figures drawn without pyplot, embedded as base64 PNGs, and
HTML snippets in which every string is escaped (label names and paths may be hostile)."""
from __future__ import annotations

import base64
import html
import io
import warnings
from typing import Any


def figure(width: float, height: float, panels: int, left: float = 0.75):
    """Panels in a row; margins in inches (``left``: room for the y tick labels), set here rather
    than by tight_layout, which measures every text and takes about half the drawing time."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=left / width, right=1 - 0.25 / width, bottom=0.55 / height,
                        top=1 - 0.4 / height, wspace=0.3)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def png(fig) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # label names in scripts the font lacks: boxes, not warnings
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig.savefig(buffer, format="png")
    return buffer.getvalue()


def img(data: bytes, alt: str, kind: str = "png", paragraph: bool = True) -> str:
    """An <img> holding ``data`` (PNG or JPEG bytes) inline: the page fetches nothing."""
    encoded = base64.b64encode(data).decode("ascii")
    tag = f'<img alt="{e(alt)}" src="data:image/{kind};base64,{encoded}">'
    return f"<p>{tag}</p>" if paragraph else tag


def missing(text: str) -> str:
    return f'<p class="missing">{e(text)}</p>'


def e(value: Any) -> str:
    return html.escape(str(value))


def pct(value: Any) -> str:
    """A stored fraction as a percentage with 2 decimals (as ``mlic eval`` prints it)."""
    try:
        return f"{100 * float(value):.2f}"
    except (TypeError, ValueError):
        return "–"


def plain_ticks(ax) -> None:
    """Tick labels are text: a label name with '$' must not be read as a formula."""
    for tick in (*ax.get_xticklabels(), *ax.get_yticklabels()):
        tick.set_parse_math(False)
