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
from dataclasses import dataclass
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
EXPLAINED = 24       # explanation overlays shown apart from the gallery's cards, at most
CARD_MAPS = 2        # explanation overlays on one card, at most

CSS = """.gallery{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0}.card{width:150px;font-size:11px;
border:1px solid #ddd;padding:4px;overflow-wrap:anywhere}.card img{display:block;margin:0 auto 3px;
max-width:140px;max-height:112px}.ok{color:#1a7f37}.miss{color:#b35900}.miss::before{content:"missed "}
.false{color:#c62828}.false::before{content:"false "}.noimg{width:112px;height:84px;background:#ccc;
margin:0 auto 3px}.map{margin-top:4px;color:#555}"""


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


@dataclass
class Choice:
    """The images the gallery shows, as indices into the predictions."""

    predicted: np.ndarray                     # (N, C) the model's decisions
    worst: np.ndarray
    best: np.ndarray
    per_label: list[tuple[str, int, np.ndarray, np.ndarray]]  # name, index, false, missed


def choose(found: Predictions, thresholds: np.ndarray, ap: dict[str, float | None],
           chosen: Sequence[str] = (), min_labels: int = 1) -> Choice:
    """``ap``: label -> AP, to find the weakest; ``thresholds`` and ``min_labels``: the model's
    decision rule (``mlic.decisions``)."""
    p, t = found.probabilities, found.targets
    known = t >= 0
    predicted = decide(p, thresholds, min_labels)
    errors = (known & (predicted != (t == 1))).sum(axis=1)
    gap = np.where(known, np.abs(p - (t == 1)), 0).sum(axis=1)
    order = np.lexsort((gap, errors))  # fewest wrong decisions first, then the smallest gap
    index = {name: c for c, name in enumerate(found.labels)}
    scored = sorted((a, name) for name, a in ap.items() if a is not None and name in index)
    focus = list(dict.fromkeys([n for n in chosen if n in index] +
                               [name for _, name in scored[:LABELS]]))[:LABELS + len(chosen)]
    per_label = []
    for name in focus:
        c = index[name]
        false = np.flatnonzero(predicted[:, c] & (t[:, c] == 0))
        missed = np.flatnonzero(~predicted[:, c] & (t[:, c] == 1))
        per_label.append((name, c, false[np.argsort(-p[false, c], kind="stable")][:PER_LABEL],
                          missed[np.argsort(p[missed, c], kind="stable")][:PER_LABEL]))
    return Choice(predicted, order[::-1][:WORST], order[:BEST], per_label)


def gallery(found: Predictions, choice: Choice, ap: dict[str, float | None],
            maps: list[dict[str, Any]] = (), shown: set[tuple[str, str]] | None = None) -> str:
    """The gallery's HTML: rows of cards for the images ``choose`` picked; a card shows the maps
    of its labels among ``maps`` (``explained``), at most ``CARD_MAPS``, and adds them to
    ``shown``."""
    p, t, predicted = found.probabilities, found.targets, choice.predicted
    thumbs = Thumbnails()
    by_key = {(str(x.get("image")), str(x.get("label"))): x for x in maps}
    shown = set() if shown is None else shown

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
        overlays = []
        for *_, kind, c in marks:
            key = (found.paths[n], found.labels[c])
            if key in by_key and len(overlays) < CARD_MAPS:
                shown.add(key)
                overlays.append(f'<div class="map">{thumbs(str(by_key[key]["path"]))}'
                                f'map: {e(found.labels[c])}</div>')
        return (f'<div class="card" title="{e(found.paths[n])}">{thumbs(found.paths[n])}'
                f'{"<br>".join(items) or "no label"}{"".join(overlays)}</div>')

    def row(title: str, images: Sequence[int], focus: int | None = None) -> str:
        if not len(images):
            return ""
        return (f"<h3>{e(title)}</h3><div class=\"gallery\">"
                + "".join(card(int(n), focus) for n in images) + "</div>")

    parts = [row(f"The {WORST} worst images (most wrong labels, then the largest gap between "
                 f"probabilities and truth)", choice.worst),
             row(f"The {BEST} best images", choice.best)]
    for name, c, false, missed in choice.per_label:
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


def examples(found: Predictions, choice: Choice, wrong: int = 3) -> list[tuple[str, list[str]]]:
    """What to explain so the gallery's lesson shows: each worst image with its (up to ``wrong``)
    wrong labels, each weak label's errors with that label; (image path, label names)."""
    p, t = found.probabilities, found.targets
    pairs: dict[str, list[str]] = {}
    for n in choice.worst:
        bad = np.flatnonzero((t[n] >= 0) & (choice.predicted[n] != (t[n] == 1)))
        bad = bad[np.argsort(-np.abs(p[n, bad] - (t[n, bad] == 1)), kind="stable")][:wrong]
        pairs.setdefault(found.paths[n], []).extend(found.labels[c] for c in bad)
    for name, _, false, missed in choice.per_label:
        for n in np.concatenate([false, missed]):
            pairs.setdefault(found.paths[int(n)], []).append(name)
    return [(path, list(dict.fromkeys(names))) for path, names in pairs.items() if names]


def explained(folder: Path) -> tuple[list[dict[str, Any]], str]:
    """The maps ``mlic explain`` listed in ``folder``/index.json whose files lie in ``folder``
    (a listed file elsewhere is not read), each with ``path`` set; and a note if unreadable."""
    index = folder / "index.json"
    if not index.is_file():
        return [], ""
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], f'<p class="missing">{e(index)} could not be read.</p>'
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and "file" in entry:
            path = (folder / str(entry["file"])).resolve()
            if folder.resolve() in path.parents and path.is_file():
                found.append({**entry, "path": path})
    return found, ""


def explanations(entries: list[dict[str, Any]], shown: set[tuple[str, str]],
                 limit: int = EXPLAINED) -> str:
    """Cards of the maps not already shown with a gallery image (at most ``limit``)."""
    rest = [x for x in entries if (str(x.get("image")), str(x.get("label"))) not in shown][:limit]
    if not rest:
        return ""
    thumbs = Thumbnails()
    cards = [f'<div class="card" title="{e(x.get("image", ""))}">{thumbs(str(x["path"]))}'
             f'{e(Path(str(x.get("image", ""))).name)}<br><b>{e(x.get("label"))}</b>'
             f' {e(x.get("probability", ""))} ({e(x.get("method", ""))})</div>' for x in rest]
    more = f" (the first {limit})" if len(rest) == limit else ""
    return (f"<h3>Other explanation maps{e(more)}</h3><p>Where each label comes from (red: "
            f"strongest), from <code>mlic explain</code> (explain/index.json).</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def chosen_labels(value: Any) -> list[str]:
    """``report.labels`` given as a list or a comma-separated string."""
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    return [str(n) for n in value or []]
