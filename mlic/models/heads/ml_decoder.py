"""ML-Decoder head: fixed queries cross-attend to the feature map, then a group fully-connected layer.

Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head" (WACV 2023); behaviour of
the released code (Alibaba-MIIL/ML_Decoder @8a9e984) and of the paper's cosine variant (DOR
``torchreid/models/ml_decoder.py``; Alibaba-MIIL/ML_Decoder ``src_files/ml_decoder/ml_decoder.py``).
Written from a description of that behaviour, not from either code base.

    tokens = act(Linear(D -> E)(feature map as H*W tokens))        act: ReLU, or LeakyReLU(0.2) if cosine
    t      = K fixed random queries (K = min(100, C) by default)
    t      = LN1(t + Dropout(t))                                    stands in for self-attention
    t      = LN2(t + Dropout(MultiHeadAttention(q=t, k=v=tokens)))
    t      = LN3(t + Dropout(W2 Dropout(ReLU(W1 t))))
    logits = group FC: query k gives g = ceil(C / K) class logits h_k^T P_k; keep the first C; + bias

Choices, and why:

* The queries are N(0, 1) noise that is never trained (the reference's frozen ``nn.Embedding``).
  They are a persistent buffer rather than a frozen parameter, so optimisers, weight decay and
  parameter counts never see them while ``state_dict`` still saves them: a reloaded model must get
  the very same noise back, or its group FC weights would be read against different queries.
* The reference removes the decoder's self-attention (the queries are fixed, so attending among
  them adds cost and little else) but keeps the layer's first residual + LayerNorm on t + Dropout(t);
  that is reproduced as is, since it changes the numbers (LN1 of 2t in eval mode).
* No positional encoding, on tokens or queries, as the reference: the head is order-free, so it
  takes any H x W, 1 x 1 and non-square maps included.
* The group FC is one batched einsum over all K queries, not a loop. P has shape (K, E, g), xavier-
  normal initialised as one 3-D tensor as the reference does (PyTorch's fans: E*g in, K*g out).
* ``cosine=True`` is the paper's form for the AM/AAM losses: h_k and every class column of P are
  L2-normalised, and a learnable per-class bias (zero init) is added to the cosine without a clamp,
  so the logit is scale * (cos + bias), with the scale inside the head as for every mlic cosine head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlic.errors import ConfigError
from mlic.models.heads.cosine import cosine_logits
from mlic.models.heads.registry import register_head


class _DecoderLayer(nn.Module):
    """One post-norm transformer decoder layer whose self-attention is replaced by t + Dropout(t)."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff_dim, dim))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=1e-5) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = self.norm1(t + self.dropout1(t))
        attended = self.cross_attn(t, tokens, tokens, need_weights=False)[0]
        t = self.norm2(t + self.dropout2(attended))
        return self.norm3(t + self.dropout3(self.ff(t)))


@register_head("ml_decoder")
class MLDecoderHead(nn.Module):
    queries: torch.Tensor

    def __init__(self, in_features: int, num_classes: int, num_queries: int | None = None,
                 embed_dim: int = 768, num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1,
                 cosine: bool = False, scale: float = 23.0):
        super().__init__()
        if num_queries is None:
            num_queries = min(100, num_classes)  # "full decoding" (one query per class) up to 100
        if num_queries < 1:
            raise ConfigError(f"ml_decoder: num_queries must be at least 1, got {num_queries}")
        if embed_dim % num_heads:
            raise ConfigError(f"ml_decoder: embed_dim ({embed_dim}) must be divisible by "
                              f"num_heads ({num_heads})")
        self.num_classes = num_classes
        self.num_queries = min(num_queries, num_classes)  # more queries than classes would idle
        self.group_size = math.ceil(num_classes / self.num_queries)
        self.cosine = bool(cosine)
        self.scale = float(scale)

        self.project = nn.Linear(in_features, embed_dim)
        # DOR uses LeakyReLU(0.2) whenever it trains this head with the angular losses; kept as part
        # of that recipe (the original ML-Decoder, plain logits, uses ReLU).
        self.activation = nn.LeakyReLU(0.2) if cosine else nn.ReLU()
        self.register_buffer("queries", torch.randn(self.num_queries, embed_dim), persistent=True)
        self.decoder = _DecoderLayer(embed_dim, num_heads, ff_dim, dropout)
        self.group_weight = nn.Parameter(torch.empty(self.num_queries, embed_dim, self.group_size))
        nn.init.xavier_normal_(self.group_weight)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, C)
        tokens = self.activation(self.project(features.flatten(2).transpose(1, 2)))  # (B, HW, E)
        t = self.queries.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        h = self.decoder(t, tokens)  # (B, K, E)
        weight = self.group_weight
        if self.cosine:
            h = F.normalize(h, dim=-1)
            weight = F.normalize(weight, dim=1)  # each of the K*g class columns to unit length
        out = torch.einsum("bkd,kdg->bkg", h, weight.to(h.dtype)).flatten(1)[:, :self.num_classes]
        if self.cosine:
            return cosine_logits(out, self.scale, self.bias)
        return out + self.bias

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_queries={self.num_queries}, "
                f"group_size={self.group_size}, cosine={self.cosine}, scale={self.scale}")
