"""CSV cells that stay text when the file is opened in a spreadsheet.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel,
LibreOffice and Google Sheets as a formula, so a label name such as ``=HYPERLINK(...)`` from an
annotation file or an exported model's metadata would run as one when a CSV mlic wrote is opened.
OWASP's advice (CSV injection): such cells get a leading single quote, which spreadsheets show as
text. Plain numbers (a negative value) are not formulas and are written as they are.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` if a spreadsheet would read it as a formula."""
    if isinstance(value, str) and value.startswith(TRIGGERS) and not NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(cells: Iterable[Any]) -> list[Any]:
    return [safe_cell(c) for c in cells]
