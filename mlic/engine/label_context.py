"""The label graph's inputs, from a run's training split: label statistics and word embeddings.

Statistics are computed from the data (``mlic.data.stats``) and embeddings by name
(``mlic.models.label_embeddings``); the heads that use them get the resulting ``LabelContext``
and know nothing of datasets.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlic.data.stats import conditional_cooccurrence
from mlic.errors import ConfigError
from mlic.models.label_context import LabelContext
from mlic.models.label_embeddings import label_embeddings


def build_label_context(table_or_targets, label_names: Sequence[str] | None = None,
                        embedding_source: str | None = "minilm",
                        cache_dir: str | Path | None = None) -> LabelContext:
    """A LabelContext from a training LabelTable (or its targets matrix) and an embedding source.

    P(j | i) counts images (ML-GCN's statistic); DOR counts object instances, which lowers it for
    labels that appear many times in one image (deep-object-reid's stored
    ``gan_tools/adj_matrieses/adj_matrix_*.npy``; docs/heads.md). ``embedding_source=None`` leaves
    the embeddings out.
    """
    if label_names is None:
        label_names = getattr(table_or_targets, "label_names", None)
        if label_names is None:
            raise ConfigError("build_label_context: pass label_names with a targets matrix")
    names = [str(n) for n in label_names]
    conditional = conditional_cooccurrence(table_or_targets)
    if conditional.shape[0] != len(names):
        raise ConfigError(f"build_label_context: {len(names)} label names for a targets matrix "
                          f"with {conditional.shape[0]} columns")
    embeddings, source = (None, "") if embedding_source is None else label_embeddings(
        names, embedding_source, cache_dir)
    return LabelContext(names, conditional, embeddings, source)
