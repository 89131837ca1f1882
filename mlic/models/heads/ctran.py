"""C-Tran head: a transformer over image tokens and label tokens that carry a known/unknown state.

Lanchantin et al., "General Multi-label Image Classification with Transformers" (CVPR 2021);
behaviour and defaults of the released code (QData/C-Tran, ``models/CTran.py``). Written from a
description of that behaviour, not from the code.

    image tokens  = proj(feature map) as H*W tokens   (+ 2-D sine position encoding, optional)
    label token c = label_embedding[c] + state_embedding[state_c]   state: unknown, negative, positive
    h             = encoder(LayerNorm([image tokens; label tokens]))   post-norm, no attention mask
    logit_c       = <w_c, h_label_c> + b_c           each label read from its own token

A label's state comes from ``label_states`` (B, C), in the targets' encoding: 1 known positive,
0 known negative, -1 unknown. Unknown is a fixed zero vector, so a model that is told nothing sees
the label embeddings alone. The reference gets that from ``padding_idx=0`` of a 3-row table; here the
table has only the two known states and unknown entries are masked to zero, so no change to the
table (a load, a bug, an optimizer with weight decay on a padding row) can ever leak into them.

Choices, and why:

* ``hidden_dim`` defaults to the backbone's width, as in the reference (2048 for ResNet-101): no
  projection. Any other width adds a 1x1 projection. With wide backbones the label tokens dominate
  the cost (C tokens of width D through every layer): ``mlic flops`` shows it; a hidden_dim of 256-512
  keeps the head cheap on CPUs.
* The layers are the post-norm DETR layers of ``transformer.py`` (FFN = hidden width, ReLU, 4 heads,
  dropout 0.1, 3 layers by default); PyTorch's default init, label embeddings U(+-1/sqrt(D)).
* ``cosine=True`` gives logit_c = scale * cos(h_c, w_c) without a bias, for the AM/AAM losses.
* Label-mask training (which labels are revealed, and the loss only on the others) belongs to the
  trainer: ``mlic.engine.label_mask``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mlic.errors import ConfigError
from mlic.models.heads.cosine import cosine_logits, paired_cosine
from mlic.models.heads.registry import register_head
from mlic.models.heads.position import sine_position_encoding
from mlic.models.heads.transformer import EncoderLayer


@register_head("ctran")
class CTranHead(nn.Module):
    takes_label_states = True

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int | None = None,
                 num_heads: int = 4, layers: int = 3, ff_dim: int | None = None,
                 dropout: float = 0.1, position_encoding: bool = False, cosine: bool = False,
                 scale: float = 23.0):
        super().__init__()
        hidden = in_features if hidden_dim is None else int(hidden_dim)
        if hidden % num_heads or (position_encoding and hidden % 2):
            raise ConfigError(f"ctran: hidden_dim ({hidden}) must be divisible by num_heads "
                              f"({num_heads}) (and even with position_encoding); set "
                              f"model.head_params.hidden_dim")
        if layers < 1:
            raise ConfigError(f"ctran: needs layers >= 1, got {layers}")
        self.num_classes, self.hidden_dim = num_classes, hidden
        self.position_encoding = bool(position_encoding)
        self.cosine, self.scale = bool(cosine), float(scale)
        self.input_proj = nn.Conv2d(in_features, hidden, 1) if hidden != in_features else nn.Identity()
        bound = 1 / math.sqrt(hidden)
        self.label_embedding = nn.Parameter(torch.empty(num_classes, hidden).uniform_(-bound, bound))
        # Row 0: known negative, row 1: known positive. Unknown has no row (a fixed zero).
        self.state_embedding = nn.Parameter(torch.empty(2, hidden).uniform_(-bound, bound))
        self.token_norm = nn.LayerNorm(hidden)
        self.encoder = nn.ModuleList(EncoderLayer(hidden, num_heads, ff_dim or hidden, dropout)
                                     for _ in range(layers))
        self.class_weight = nn.Parameter(torch.empty(num_classes, hidden).uniform_(-bound, bound))
        self.class_bias = None if cosine else nn.Parameter(torch.zeros(num_classes))

    def label_tokens(self, batch: int, label_states: torch.Tensor | None, dtype: torch.dtype
                     ) -> torch.Tensor:
        """(B, C, hidden): label embeddings plus the embedding of each label's known state."""
        tokens = self.label_embedding.to(dtype).unsqueeze(0).expand(batch, -1, -1)
        if label_states is None:
            return tokens
        if label_states.shape != (batch, self.num_classes):
            raise ValueError(f"label_states must have shape ({batch}, {self.num_classes}), "
                             f"got {tuple(label_states.shape)}")
        known = (label_states >= 0).unsqueeze(-1).to(dtype)
        positive = (label_states > 0).unsqueeze(-1).to(dtype)
        negative_row, positive_row = self.state_embedding.to(dtype)
        # A blend rather than an index, so the graph is the same for every input (ONNX-friendly).
        state = negative_row + positive * (positive_row - negative_row)
        return tokens + known * state

    def forward(self, features: torch.Tensor, label_states: torch.Tensor | None = None
                ) -> torch.Tensor:  # (B, D, H, W), (B, C) -> (B, C)
        x = self.input_proj(features)
        height, width = x.shape[-2:]
        image = x.flatten(2).transpose(1, 2)  # (B, HW, hidden), row-major
        if self.position_encoding:
            image = image + sine_position_encoding(height, width, self.hidden_dim, image.device,
                                                   image.dtype).unsqueeze(0)
        labels = self.label_tokens(image.shape[0], label_states, image.dtype)
        h = self.token_norm(torch.cat([image, labels], dim=1))
        for layer in self.encoder:
            h = layer(h)
        h = h[:, -self.num_classes:]  # the label tokens
        if self.cosine:
            return cosine_logits(paired_cosine(h, self.class_weight.to(h.dtype)), self.scale)
        return (h * self.class_weight.to(h.dtype)).sum(-1) + self.class_bias.to(h.dtype)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, hidden_dim={self.hidden_dim}, "
                f"position_encoding={self.position_encoding}, cosine={self.cosine}")
