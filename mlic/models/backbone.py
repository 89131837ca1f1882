"""Any timm model as a feature-map extractor.

The backbone returns a spatial map (B, D, H, W) for every architecture: CNN maps pass through,
channels-last maps (Swin, ConvNeXt-V2 variants with NHWC output) are permuted, and token sequences
(ViT) lose their prefix tokens and are laid back on their grid. Heads can then pool, attend or
re-weight without knowing which family the backbone came from.
"""
from __future__ import annotations

import math

import timm
import torch
from torch import nn

from mlic.errors import ConfigError, WeightsError
from mlic.models.weights import LITE_PACKAGES, lite_package_state_dict, load_into
from mlic.preprocessing import Preprocessing


class Backbone(nn.Module):
    def __init__(self, name: str, pretrained: bool = False, drop_rate: float = 0.0):
        super().__init__()
        self.name = name
        use_hub = pretrained and name not in LITE_PACKAGES
        try:
            self.body = timm.create_model(name, pretrained=use_hub, num_classes=0, global_pool="",
                                          drop_rate=drop_rate)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
                raise ConfigError(f"model.backbone: timm has no model {name!r}"
                                  + (f"; similar: {', '.join(close)}" if close else "")) from None
            raise
        except Exception as e:  # hub download failed: offline, or no pretrained tag for this model
            if not use_hub:
                raise
            raise WeightsError(
                f"could not fetch pretrained weights for {name!r} from timm's hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). Offline, pass a local file with model.weights=PATH "
                f"or set model.pretrained=false.") from None
        classifier = self.body.pretrained_cfg.get("classifier", "classifier")
        # Key prefixes of the pretrained classifier, which weights files of the full timm model hold.
        self.classifier_prefixes = tuple(
            f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
        if pretrained and name in LITE_PACKAGES:
            depths = [len(stage) for stage in self.body.blocks]
            load_into(self.body, lite_package_state_dict(name, depths), f"{name} package",
                      self.classifier_prefixes)
        self.num_features = self.body.num_features
        self.num_prefix_tokens = getattr(self.body, "num_prefix_tokens", 0)
        self.channels_last_output = getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def preprocessing(self, image_size: int | None = None) -> Preprocessing:
        cfg = self.body.pretrained_cfg
        size = image_size or cfg.get("input_size", (3, 224, 224))[-1]
        interpolation = cfg.get("interpolation", "bilinear")
        return Preprocessing(int(size), tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                             tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                             interpolation if interpolation in ("bilinear", "bicubic") else "bilinear")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body.forward_features(images)
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2) if self.channels_last_output else x
        if x.ndim == 3:  # (B, tokens, D)
            tokens = x[:, self.num_prefix_tokens:]
            side = math.isqrt(tokens.shape[1])
            grid = (side, side) if side * side == tokens.shape[1] else (1, tokens.shape[1])
            return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
        raise ConfigError(f"model.backbone: {self.name} gives features of shape {tuple(x.shape)}, "
                          f"which mlic cannot use as a feature map")
