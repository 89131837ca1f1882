"""The report's gallery: evaluation images as thumbnails with their true and predicted labels.

The images are chosen to teach, not at random: the worst images (the most wrong decisions, then
the largest summed gap between probability and truth), the best ones, and for the weakest labels (and any the reader names) the
most confident false positives and the positives the model missed. Each thumbnail lists the
image's labels marked correct, missed or false, with their probabilities. The number of thumbnails
is bounded (``WORST + BEST + LABELS * 2 * PER_LABEL``) whatever the split's size, and each is a
small JPEG, so the page stays small and quick to write; an image that cannot be read is a grey box.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlic.data.images import load_rgb
from mlic.decisions import decide
from mlic.errors import DataError
from mlic.figures import e, img
from mlic.predictions import Predictions

WORST, BEST, LABELS, PER_LABEL = 8, 4, 6, 3
THUMB = 112          # pixels, the longer side
LISTED = 6           # labels written under a thumbnail (errors first)
EXPLAINED = 24       # explanation overlays shown at most

CSS = """.gallery{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0}.card{width:150px;font-size:11px;
border:1px solid #ddd;padding:4px;overflow-wrap:anywhere}.card img{display:block;margin:0 auto 3px;
max-width:140px;max-height:112px}.ok{color:#1a7f37}.miss{color:#b35900}.miss::before{content:"missed "}
.false{color:#c62828}.false::before{content:"false "}.noimg{width:112px;height:84px;background:#ccc;
margin:0 auto 3px}"""


class Thumbnails:
    """Each image read and shrunk once, however many sections show it."""

    def __init__(self):
        self.cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.cache:
            try:  # JPEGs decode at reduced scale; too many pixels are refused from the header
                picture = load_rgb(path, draft=THUMB)
                picture.thumbnail((THUMB, THUMB))
                buffer = io.BytesIO()
                picture.save(buffer, format="JPEG", quality=80)
                self.cache[path] = img(buffer.getvalue(), Path(path).name, "jpeg", paragraph=False)
            except (DataError, OSError, ValueError):
                self.cache[path] = f'<div class="noimg" title="not readable: {e(path)}"></div>'
        return self.cache[path]


def gallery(found: Predictions, thresholds: np.ndarray, ap: dict[str, float | None],
            chosen: Sequence[str] = (), min_labels: int = 1) -> str:
    """The gallery's HTML (several rows of cards); ``ap``: label -> AP, to find the weakest;
    ``thresholds`` and ``min_labels``: the model's decision rule (``mlic.decisions``)."""
    p, t = found.probabilities, found.targets
    known = t >= 0
    predicted = decide(p, thresholds, min_labels)
    errors = (known & (predicted != (t == 1))).sum(axis=1)
    gap = np.where(known, np.abs(p - (t == 1)), 0).sum(axis=1)
    order = np.lexsort((gap, errors))  # fewest wrong decisions first, then the smallest gap
    thumbs = Thumbnails()

    def card(n: int, focus: int | None = None) -> str:
        marks = []
        for c in np.flatnonzero(predicted[n] | (t[n] == 1)):
            kind = ("ok" if predicted[n, c] and t[n, c] == 1 else
                    "miss" if t[n, c] == 1 else "false" if t[n, c] == 0 else "")
            marks.append((kind == "ok", c != focus, -p[n, c], kind, c))
        marks.sort()
        items = [f'<span class="{kind}">{e(found.labels[c])} {p[n, c]:.2f}</span>'
                 for *_, kind, c in marks[:LISTED]]
        if len(marks) > LISTED:
            items.append(f"{len(marks) - LISTED} more")
        return (f'<div class="card" title="{e(found.paths[n])}">{thumbs(found.paths[n])}'
                f'{"<br>".join(items) or "no label"}</div>')

    def row(title: str, images: Sequence[int], focus: int | None = None) -> str:
        if not len(images):
            return ""
        return (f"<h3>{e(title)}</h3><div class=\"gallery\">"
                + "".join(card(int(n), focus) for n in images) + "</div>")

    index = {name: c for c, name in enumerate(found.labels)}
    scored = sorted((a, name) for name, a in ap.items() if a is not None and name in index)
    focus = list(dict.fromkeys([n for n in chosen if n in index] +
                               [name for _, name in scored[:LABELS]]))[:LABELS + len(chosen)]
    parts = [row(f"The {WORST} worst images (most wrong labels, then the largest gap between "
                 f"probabilities and truth)",
                 order[::-1][:WORST]),
             row(f"The {BEST} best images", order[:BEST])]
    for name in focus:
        c = index[name]
        false = np.flatnonzero(predicted[:, c] & (t[:, c] == 0))
        false = false[np.argsort(-p[false, c], kind="stable")][:PER_LABEL]
        missed = np.flatnonzero(~predicted[:, c] & (t[:, c] == 1))
        missed = missed[np.argsort(p[missed, c], kind="stable")][:PER_LABEL]
        what = f"AP {100 * ap[name]:.2f}" if ap.get(name) is not None else "no AP here"
        parts.append(row(f"{name} ({what}): most confident false positives, then missed positives",
                         np.concatenate([false, missed]), c)
                     or f"<h3>{e(name)} ({e(what)})</h3><p>No false positive and no missed positive.</p>")
    sampled = (f" ({len(found.paths)} of the split's {found.total} images were kept with the "
               f"scores, chosen at random; the gallery shows those)"
               if found.total > len(found.paths) else "")
    return (f"<p>Labels: <span class=\"ok\">correct</span>, <span class=\"miss\">not predicted"
            f"</span>, <span class=\"false\">predicted</span> (with the probability; decided by the "
            f"model's rule, as mlic predict decides){e(sampled)}.</p>" + "".join(parts))


def explanations(folder: Path, limit: int = EXPLAINED) -> str:
    """The overlays ``mlic explain`` wrote into ``folder`` (its index.json), as cards; "" if none."""
    index = folder / "index.json"
    if not index.is_file():
        return ""
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
        entries = [x for x in entries if isinstance(x, dict) and "file" in x][:limit]
    except (OSError, ValueError):
        return f'<p class="missing">{e(index)} could not be read.</p>'
    thumbs = Thumbnails()
    cards = []
    for entry in entries:
        path = (folder / str(entry["file"])).resolve()
        if folder.resolve() not in path.parents:  # a listed file outside the folder is not read
            continue
        cards.append(f'<div class="card" title="{e(entry.get("image", ""))}">{thumbs(str(path))}'
                     f'{e(Path(str(entry.get("image", ""))).name)}<br><b>{e(entry.get("label"))}</b>'
                     f' {e(entry.get("probability", ""))} ({e(entry.get("method", ""))})</div>')
    more = f" (the first {limit})" if len(cards) == limit else ""
    return (f"<h3>Explanation maps{e(more)}</h3><p>Where each label comes from (red: strongest), "
            f"from <code>mlic explain</code> ({e(folder.name)}/index.json).</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def chosen_labels(value: Any) -> list[str]:
    """``report.labels`` given as a list or a comma-separated string."""
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    return [str(n) for n in value or []]
