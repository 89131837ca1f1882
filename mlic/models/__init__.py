"""Models: a timm backbone (``backbone.py``) and a head chosen by name (``heads/``)."""
from mlic.models.backbone import Backbone, Preprocessing
from mlic.models.classifier import MultiLabelClassifier, create_model, model_from_config
from mlic.models.heads import HEADS, build_head, register_head

__all__ = ["Backbone", "Preprocessing", "MultiLabelClassifier", "create_model", "model_from_config",
           "HEADS", "build_head", "register_head"]
