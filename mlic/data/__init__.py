"""Data: annotation formats -> LabelTable -> torch Dataset."""
from mlic.data.formats import FORMATS, load_table
from mlic.data.table import LabelTable

__all__ = ["FORMATS", "LabelTable", "load_table"]
