"""A multi-label classifier: a timm backbone's feature map, then a head that gives logits.

Logits are final: probability = sigmoid(logit). Cosine heads (for the AM/AAM losses) put their
scale inside, logit = s * (cos + bias), so a saved or exported model turns logits into the same
probabilities it was trained with, and the losses see the same kind of input from every head.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mlic.errors import ConfigError
from mlic.models.backbone import Backbone
from mlic.models.heads import build_head
from mlic.models.label_context import LabelContext
from mlic.models.weights import load_model_file
from mlic.preprocessing import Preprocessing


class MultiLabelClassifier(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module, model_config: dict[str, Any],
                 preprocessing: Preprocessing):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.model_config = dict(model_config)
        self.preprocessing = preprocessing
        # Head warm-up (train.head_warmup_epochs): the backbone runs without autograd, so its
        # weights get no gradient and no update, and the backward pass skips it.
        self.backbone_frozen = False

    @property
    def num_classes(self) -> int:
        return int(self.model_config["num_classes"])

    @property
    def takes_label_states(self) -> bool:
        """True for heads (C-Tran) whose prediction can use labels known for the image."""
        return bool(getattr(self.head, "takes_label_states", False))

    def forward(self, images: torch.Tensor, label_states: torch.Tensor | None = None) -> torch.Tensor:
        """``label_states`` (B, C): 1 known positive, 0 known negative, -1 unknown (the targets'
        encoding); only heads with ``takes_label_states`` use it, the others ignore it."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            features = self.backbone(images)
        if self.takes_label_states:
            return self.head(features, label_states)
        return self.head(features)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())


def create_model(backbone: str, num_classes: int, head: str = "linear", pretrained: bool = False,
                 weights: str | None = None, image_size: int | None = None, drop_rate: float = 0.0,
                 head_params: dict[str, Any] | None = None,
                 label_context: LabelContext | None = None,
                 log: Callable[[str], Any] = print) -> MultiLabelClassifier:
    """Build a classifier from names, e.g. ``create_model("tf_efficientnet_lite0", 80)``.

    ``pretrained`` uses the offline weights package where one exists (EfficientNet-Lite0/1/2), else
    timm's hub; ``weights`` loads a local .safetensors/.pth file instead: a backbone, or a whole
    model (another run's checkpoint), whose head loads where it fits (``mlic.models.weights``);
    ``log`` receives the one-line summary of what was loaded.
    ``label_context`` (label names, co-occurrence, word embeddings) is handed to heads that use it.
    """
    if num_classes < 1:
        raise ConfigError(f"a model needs at least one class, got num_classes={num_classes}")
    body = Backbone(backbone, pretrained=pretrained and weights is None, drop_rate=drop_rate)
    head_params = dict(head_params or {})
    head_module = build_head(head, body.num_features, num_classes, label_context=label_context,
                             **head_params)
    config = {"backbone": backbone, "head": head, "num_classes": num_classes,
              "head_params": head_params, "drop_rate": drop_rate}
    model = MultiLabelClassifier(body, head_module, config, body.preprocessing(image_size))
    if weights is not None:
        log(load_model_file(model, weights, "backbone.body.", body.classifier_prefixes))
    return model


def model_from_config(config: dict[str, Any], preprocessing: dict[str, Any]) -> MultiLabelClassifier:
    """Rebuild a saved model's architecture (weights, label graph included, are loaded by the caller)."""
    model = create_model(config["backbone"], int(config["num_classes"]), head=config["head"],
                         drop_rate=float(config.get("drop_rate", 0.0)),
                         head_params=config.get("head_params") or {})
    model.preprocessing = Preprocessing.from_dict(preprocessing)
    return model
