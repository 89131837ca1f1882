"""What label-aware heads know about the labels: names, co-occurrence, word embeddings.

Computed once from the training LabelTable (``mlic.data.stats``) and a text encoder
(``mlic.models.label_embeddings``), handed to the heads that use it (the label graph, ML-GCN),
and stored inside those heads as buffers, so a saved model carries its graph with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelContext:
    label_names: list[str]
    conditional: np.ndarray              # (C, C) P(j | i) over training images, zero diagonal
    embeddings: np.ndarray | None = None  # (C, E) label word embeddings, or None
    embedding_source: str = ""           # e.g. "minilm", "glove:/path", "onehot"
