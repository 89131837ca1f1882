"""StringArray: many strings (a table's image paths) in one buffer, read like a list.

Nine million paths as a Python list are nine million objects (about 80 bytes each) whose
reference counts every DataLoader worker writes as it reads them, so each forked worker slowly
copies the whole list (copy-on-read). Here they are one UTF-8 ``bytes`` buffer and an ``int64``
offset array: about the text's size, and nothing that reading writes to.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

# surrogatepass: a JSON file can hold a lone surrogate ("\ud800"); it must come back as it went in.
_ERRORS = "surrogatepass"


class StringArray:
    def __init__(self, strings: Iterable[str] = ()):
        encoded = [str(s).encode("utf-8", _ERRORS) for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.buffer = b"".join(encoded)

    @classmethod
    def from_parts(cls, buffer: bytes, offsets: np.ndarray) -> "StringArray":
        out = cls()
        out.buffer, out.offsets = bytes(buffer), np.asarray(offsets, dtype=np.int64)
        return out

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        n = len(self)
        i = int(index) + n if int(index) < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} strings")
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].decode("utf-8", _ERRORS)

    def __iter__(self) -> Iterator[str]:
        buffer, offsets = self.buffer, self.offsets.tolist()
        for start, end in zip(offsets[:-1], offsets[1:]):
            yield buffer[start:end].decode("utf-8", _ERRORS)

    def tolist(self) -> list[str]:
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self.buffer == other.buffer and np.array_equal(self.offsets, other.offsets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container, like a list

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self[:3])
        return f"StringArray([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} strings)"

    def take(self, indices: np.ndarray) -> "StringArray":
        """The strings at ``indices``, in that order, as a new array (no Python strings made)."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Byte k of the output comes from byte (k - its string's new start + its old start).
        source = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        data = np.frombuffer(self.buffer, dtype=np.uint8)[source]
        return StringArray.from_parts(data.tobytes(), offsets)
