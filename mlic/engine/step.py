"""One optimisation step: forward, loss, backward, optimizer step, with mixed precision.

Split from the epoch loop so that SAM (two forward/backward passes per step) and gradient
accumulation can replace it without touching anything else.
"""
from __future__ import annotations

import torch
from torch import nn

from mlic.engine.accumulate import backward_in_chunks
from mlic.engine.clipping import GradientClipper


class OptimizerStep:
    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, amp: bool = False, grad_clip: float = 0.0, accumulate: int = 1,
                 grad_clip_scope: str = "parts"):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.device, self.grad_clip, self.accumulate = device, grad_clip, int(accumulate)
        # Clipping per part (backbone, head) by default: mlic.engine.clipping says why.
        self.clipper = GradientClipper(model, grad_clip, grad_clip_scope) if grad_clip > 0 else None
        self.amp = amp and device.type == "cuda"
        fp16 = self.amp and not torch.cuda.is_bf16_supported()
        # A gradient scaler is only needed for fp16; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        # The last step's gradient norm before clipping (None without clipping), and whether it
        # was clipped: the trainer counts clipped steps per epoch (metrics.csv).
        self.grad_norm: float | None = None
        self.clipped = False

    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 label_states: torch.Tensor | None = None) -> tuple[float, bool]:
        """Returns (loss, stepped): ``stepped`` is False when fp16 overflow made the scaler skip.
        ``label_states``: labels revealed to the model (label-mask training), or None."""
        self.optimizer.zero_grad(set_to_none=True)
        # Forward and backward per chunk (losses in float32), gradients summed as for the whole batch.
        loss = backward_in_chunks(self.model, self.loss_fn, images, targets, self.scaler,
                                  self.device, self.amp, self.accumulate, label_states=label_states)
        if self.clipper is not None:
            self.scaler.unscale_(self.optimizer)
            self.grad_norm, self.clipped = self.clipper()
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        stepped = scale_before is None or self.scaler.get_scale() >= scale_before
        return float(loss.detach()), stepped

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
