"""Query2Label head: a small transformer whose learnable label queries read the feature map.

Liu et al., "Query2Label: A Simple Transformer Way to Multi-Label Classification" (2021); behaviour
and defaults of the released code (SlongLiu/query2labels @55eb050, ``lib/models/query2label.py``,
a DETR transformer). Written from a description of that behaviour, not from the code.

    memory = encoder(proj(feature map) as H*W tokens)      self-attention with sine pos on q and k
    h      = decoder(target = 0, label queries)           per layer: cross-attention, q = target +
                                                           query_pos, k = memory + pos, v = memory
    logit_k = <w_k, LN(h_k)> + b_k                         GroupWiseLinear: one classifier per query

Choices, and why:

* Defaults are the reference's: 1 encoder and 2 decoder layers, 4 heads, FFN 8192, dropout 0.1,
  post-norm, ReLU, hidden = the backbone's channels with no input projection (``hidden_dim`` other
  than ``in_features``, or ``input_projection=True``, adds a 1x1 projection). The paper's own port
  (its Tables 2-5) keeps the projection and uses FFN = hidden: ``ff_dim=D, input_projection=True``.
  The reference defaults are large: with EfficientNetV2-S (D = 1280) the
  head has ~83M parameters, most of them in the three 1280 -> 8192 -> 1280 FFNs.
* The decoder has no self-attention in any layer (the reference default removes it, with its
  dropout and norm). The target starts at zeros, so the first layer's query is query_pos alone.
* Only the last decoder layer's output is used, after a final LayerNorm; the encoder has no final
  norm (DETR post-norm). Position encoding: ``position.sine_position_encoding`` (DETR, normalised).
* Xavier-uniform init for every weight with more than one dimension inside the encoder and
  decoder; the label queries keep nn.Embedding's N(0, 1) and the projection PyTorch's default, as
  in the reference, where both live outside its transformer.
* ``cosine=True`` gives logit_k = scale * cos(h_k, w_k), clamped to [-1, 1] like ``CosineLinear``,
  without a bias. DOR's Q2L port put a flat cosine classifier on the (B, C, d) output, which cannot
  work (deep-object-reid branch multilabel, ``torchreid/models/q2l.py``); this per-class cosine is
  the fixed form of what it meant.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mlic.errors import ConfigError
from mlic.models.heads.cosine import cosine_logits, paired_cosine
from mlic.models.heads.registry import register_head
from mlic.models.heads.position import sine_position_encoding
from mlic.models.heads.transformer import DecoderLayer, EncoderLayer


@register_head("query2label")
class Query2LabelHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden_dim: int | None = None,
                 num_heads: int = 4, encoder_layers: int = 1, decoder_layers: int = 2,
                 ff_dim: int = 8192, dropout: float = 0.1, cosine: bool = False, scale: float = 23.0,
                 input_projection: bool | None = None):
        super().__init__()
        hidden = in_features if hidden_dim is None else int(hidden_dim)
        if hidden % num_heads or hidden % 2:
            raise ConfigError(f"query2label: hidden_dim ({hidden}) must be even and divisible by "
                              f"num_heads ({num_heads}); set hidden_dim to add an input projection")
        if decoder_layers < 1 or encoder_layers < 0:
            raise ConfigError(f"query2label: needs decoder_layers >= 1 and encoder_layers >= 0, "
                              f"got {decoder_layers} and {encoder_layers}")
        self.num_classes = num_classes
        self.hidden_dim = hidden
        self.cosine = bool(cosine)
        self.scale = float(scale)

        if input_projection is None:
            input_projection = hidden != in_features
        if not input_projection and hidden != in_features:
            raise ConfigError(f"query2label: hidden_dim {hidden} differs from the backbone's "
                              f"{in_features} channels, which needs input_projection")
        self.input_proj = nn.Conv2d(in_features, hidden, 1) if input_projection else nn.Identity()
        self.encoder = nn.ModuleList(EncoderLayer(hidden, num_heads, ff_dim, dropout)
                                     for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(hidden, num_heads, ff_dim, dropout)
                                     for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(hidden)
        for p in (*self.encoder.parameters(), *self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.label_queries = nn.Embedding(num_classes, hidden)
        # GroupWiseLinear: class k's own weight vector and bias read only its own query's output.
        bound = 1 / math.sqrt(hidden)
        self.class_weight = nn.Parameter(torch.empty(num_classes, hidden).uniform_(-bound, bound))
        self.class_bias = None if cosine else nn.Parameter(
            torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, C)
        x = self.input_proj(features)
        height, width = x.shape[-2:]
        src = x.flatten(2).transpose(1, 2)  # (B, HW, hidden), row-major like the encoding
        pos = sine_position_encoding(height, width, self.hidden_dim, src.device, src.dtype).unsqueeze(0)
        for layer in self.encoder:
            src = layer(src, pos)
        query_pos = self.label_queries.weight.to(src.dtype).unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, src, pos)
        h = self.decoder_norm(tgt)  # (B, C, hidden)
        if self.cosine:
            return cosine_logits(paired_cosine(h, self.class_weight), self.scale)
        return (h * self.class_weight).sum(-1) + self.class_bias

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, cosine={self.cosine}, scale={self.scale}"
