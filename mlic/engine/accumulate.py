"""Gradient accumulation by chunks: one batch, forward/backward in k pieces, the same gradient.

Used by ``OptimizerStep`` and ``SAMStep`` (``train.accumulate``). How chunk losses are combined so
that the accumulated gradient and the returned loss equal the whole batch's:

* sum-reduced losses (``loss_fn.reduction == "sum"``): the chunk losses are simply added;
* mean-reduced losses: each chunk's loss is weighted by its share of the entries the loss averages
  over: for mlic's ``MultiLabelLoss`` (which averages over the *known* target entries, >= 0) the
  share of known entries, for any other loss the share of rows (batch elements).

The equality is exact for models whose output for an image does not depend on the other images
of the batch (no BatchNorm in train mode).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.engine.distributed import no_sync
from mlic.engine.evaluate import autocast
from mlic.losses import MultiLabelLoss

REDUCTIONS = ("mean", "sum")


def split_batch(images: torch.Tensor, targets: torch.Tensor, chunks: int
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a batch along dim 0 into at most ``chunks`` nearly equal, non-empty pieces.

    A batch with fewer rows than ``chunks`` gives one chunk per row. ``chunks`` <= 1 gives the batch.
    """
    if len(images) != len(targets):
        raise ValueError(f"split_batch: {len(images)} images but {len(targets)} targets")
    if chunks <= 1 or len(images) <= 1:
        return [(images, targets)]
    pieces = zip(torch.tensor_split(images, chunks), torch.tensor_split(targets, chunks))
    return [(x, t) for x, t in pieces if len(x) > 0]


def loss_reduction(loss_fn: nn.Module, reduction: str | None = None) -> str:
    """``reduction`` if given, else the loss's own ``reduction`` attribute, else ``"mean"``."""
    value = reduction if reduction is not None else getattr(loss_fn, "reduction", "mean")
    if value not in REDUCTIONS:
        raise ValueError(f"gradient accumulation needs a 'mean' or 'sum' loss reduction, "
                         f"got {value!r}")
    return value


def chunk_weights(loss_fn: nn.Module, chunks: list[tuple[torch.Tensor, torch.Tensor]],
                  reduction: str | None = None) -> list[Any]:
    """Factors for the chunk losses so that their weighted sum is the whole batch's loss.

    Returns Python floats, or 0-dim tensors for mlic losses with a mean (their normaliser, the
    number of known target entries, is counted on the device without a host sync).
    """
    if len(chunks) == 1 or loss_reduction(loss_fn, reduction) == "sum":
        return [1.0] * len(chunks)
    if isinstance(loss_fn, MultiLabelLoss):
        counts = torch.stack([(t >= 0).sum() for _, t in chunks])
        return list(counts.double() / counts.sum().clamp(min=1).double())
    rows = [len(x) for x, _ in chunks]
    total = sum(rows)
    return [n / total for n in rows]


def backward_in_chunks(model: nn.Module, loss_fn: nn.Module, images: torch.Tensor,
                       targets: torch.Tensor, scaler: torch.amp.GradScaler, device: torch.device,
                       amp: bool, chunks: int = 1, reduction: str | None = None,
                       label_states: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and (scaled) backward over the batch in ``chunks`` pieces; gradients accumulate.

    Returns the whole batch's loss, detached (the weighted sum of the chunk losses). The model runs
    under autocast when ``amp``; the loss is computed in float32 on the logits, as in OptimizerStep.
    ``label_states`` (B, C) goes to the model with the images (heads that take known labels).
    Does not zero gradients.
    """
    pieces = split_batch(images, targets, chunks)
    weights = chunk_weights(loss_fn, pieces, reduction)
    # Label states (C-Tran's revealed labels) are split like the targets they come from.
    states = [None] * len(pieces) if label_states is None else \
        [s for _, s in split_batch(images, label_states, chunks)]
    total = None
    for i, ((x, t), state, weight) in enumerate(zip(pieces, states, weights)):
        # Under DDP the gradient is all-reduced once, in the last chunk's backward.
        with no_sync(model, skip=i < len(pieces) - 1):
            with autocast(device, amp):
                logits = model(x) if state is None else model(x, state)
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()  # losses run in float32 (float64 stays float64)
            loss = loss_fn(logits, t)
            if not (isinstance(weight, float) and weight == 1.0):
                loss = loss * (weight.to(loss.dtype) if torch.is_tensor(weight) else weight)
            scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total
