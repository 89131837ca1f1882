"""The classifier as it is exported: images (and label states) in, probabilities (and logits) out.

The sigmoid is part of the graph, so a deployed model hands out probabilities that compare directly
with the stored thresholds; cosine heads already carry their scale s inside their logits
(``mlic.models.classifier``), so nothing of the loss is left for the caller to re-apply.
"""
from __future__ import annotations

import torch
from torch import nn

from mlic.models import MultiLabelClassifier


class ExportGraph(nn.Module):
    def __init__(self, model: MultiLabelClassifier, logits: bool = True):
        super().__init__()
        self.model = model
        self.logits = logits

    @property
    def input_names(self) -> list[str]:
        return ["images", "label_states"] if self.model.takes_label_states else ["images"]

    @property
    def output_names(self) -> list[str]:
        return ["probabilities", "logits"] if self.logits else ["probabilities"]

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        size = self.model.preprocessing.image_size
        images = torch.zeros(batch, 3, size, size)
        if self.model.takes_label_states:
            return images, torch.full((batch, self.model.num_classes), -1.0)
        return (images,)

    def forward(self, images: torch.Tensor, label_states: torch.Tensor | None = None):
        logits = self.model(images, label_states)
        if logits.dtype != torch.float32:  # no no-op Cast in the graph: NNCF trips over one
            logits = logits.float()
        probabilities = torch.sigmoid(logits)
        return (probabilities, logits) if self.logits else probabilities
