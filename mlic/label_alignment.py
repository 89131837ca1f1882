"""Which of a dataset's label names are the model's, said out loud before anything is scored.

Scoring a model on data whose names differ from its own silently measures something else: the
model's labels the data lacks count as negatives for every image (and drop out of mAP: no
positives), the data's labels the model lacks are ignored. Upper-cased names, or labels joined
with ``;`` where the format splits on ``|``, once left one class of 159 and a 93 mAP for a model
whose true mAP was 79. So every evaluation counts the matching names, lists the others with what
they probably mean (case, separators, spelling), and refuses to score when fewer than
``MIN_OVERLAP`` of the data's labels are the model's, unless the user asks to score the subset.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from mlic.errors import DataError

MIN_OVERLAP = 0.5
JOINERS = ("|", ";", ",", "/")  # separators a list of labels is commonly written with


def _plain(name: str) -> str:
    """A name without case and separator differences: "Hot_Dog" and "hot-dog" -> "hot dog"."""
    return re.sub(r"[\s_\-.]+", " ", name.casefold()).strip()


def near_match(name: str, model_names: Sequence[str]) -> str | None:
    """What a data label that is not the model's probably means, in words, or None."""
    plain = {_plain(n): n for n in model_names}
    if _plain(name) in plain:
        return repr(plain[_plain(name)]) + " (case or separators differ)"
    for joiner in JOINERS:
        parts = [p.strip() for p in name.split(joiner)]
        if len(parts) > 1 and all(p in model_names or _plain(p) in plain for p in parts):
            return f"{len(parts)} labels joined with {joiner!r} (wrong label separator?)"
    close = difflib.get_close_matches(name, list(model_names), n=1, cutoff=0.8)
    return repr(close[0]) + " (spelling)" if close else None


@dataclass
class LabelAlignment:
    """The data's label names against the model's."""

    model: list[str]
    data: list[str]
    matched: list[str] = field(init=False)
    unknown: list[str] = field(init=False)   # the data's names the model does not have
    absent: list[str] = field(init=False)    # the model's names the data does not have
    near: dict[str, str] = field(init=False)  # unknown name -> what it probably means

    def __post_init__(self) -> None:
        model = set(self.model)
        self.matched = [n for n in self.data if n in model]
        self.unknown = [n for n in self.data if n not in model]
        data = set(self.data)
        self.absent = [n for n in self.model if n not in data]
        self.near = {n: m for n in self.unknown if (m := near_match(n, self.model))}

    @property
    def overlap(self) -> float:
        """The share of the data's labels that are the model's (1 when the data has none)."""
        return len(self.matched) / len(self.data) if self.data else 1.0

    def summary(self) -> str:
        """One line: how many match, and the first few that do not, with their near matches."""
        text = (f"{len(self.matched)} of the data's {len(self.data)} label names are among the "
                f"model's {len(self.model)}")
        if self.unknown:
            shown = [f"{n!r}" + (f" -> {self.near[n]}" if n in self.near else "")
                     for n in self.unknown[:5]]
            text += (f"; not the model's: {', '.join(shown)}"
                     + (f" and {len(self.unknown) - 5} more" if len(self.unknown) > 5 else ""))
        return text

    def check(self, source: Any, allow_subset: bool = False) -> None:
        """Refuse to score when too few names match (``allow_subset``: when none match)."""
        if not self.matched and self.data:
            raise DataError(f"no label name matches the model's: {self.summary()}", source)
        if self.overlap < MIN_OVERLAP and not allow_subset:
            raise DataError(f"{self.summary()}; fewer than {MIN_OVERLAP:.0%} match, so the "
                            f"scores would mean little. Fix the names, or score the "
                            f"{len(self.matched)} that match with --allow-label-subset", source)

    def as_dict(self) -> dict[str, Any]:
        return {"matched": len(self.matched), "data_labels": len(self.data),
                "model_labels": len(self.model), "not_in_model": self.unknown,
                "near_matches": self.near, "not_in_data": self.absent}


def align_labels(data_names: Sequence[str], model_names: Sequence[str]) -> LabelAlignment:
    return LabelAlignment(list(model_names), list(data_names))
