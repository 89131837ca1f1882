"""Errors a user can act on.

Every problem with the user's input (a file, an annotation, a config key) is raised as an
``MlicError`` whose message names the file or key and says what is wrong. The command line prints
these messages without a traceback; anything else is a bug in mlic and keeps its traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class MlicError(Exception):
    """Base class of the errors that are the user's to fix."""


class DataError(MlicError):
    """A dataset, annotation or image file cannot be used."""

    def __init__(self, message: str, path: object | None = None):
        # One positional argument keeps the error picklable and rebuildable by DataLoader workers.
        super().__init__(f"{path}: {message}" if path is not None else message)


class ConfigError(MlicError):
    """A configuration key or value is wrong."""


class WeightsError(MlicError):
    """A weights file or checkpoint cannot be loaded."""


class DataWarning(UserWarning):
    """Input that is used, but not all of it or not as it may have been meant (named in the text)."""


def did_you_mean(word: object, options: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` with the closest of ``options``, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
