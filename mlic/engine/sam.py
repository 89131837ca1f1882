"""Sharpness-aware minimisation (SAM / ASAM) as a drop-in replacement for ``OptimizerStep``.

One SAM step (Foret et al., ICLR 2021) as the recipe runs it (deep-object-reid's
``torchreid/optim/sam.py``; docs/training.md, "SAM"), wrapping any torch optimizer ("base"):

1. forward/backward at the current weights w (under autocast when ``amp``); unscale the gradient g;
2. if g has an inf/nan anywhere: skip the whole step (gradients zeroed, the fp16 scaler lowers its
   scale, ``stepped`` is False);
3. else perturb w <- w + e with e = rho * g / (||g||_2 + 1e-12), the norm being global over every
   parameter of the optimizer that has a gradient. With ``adaptive`` (ASAM) the perturbation is
   weighted per element by |w|: e = rho * w^2 * g / (|| |w| * g ||_2 + 1e-12);
4. zero the gradients; forward/backward at w + e; unscale; if non-finite: restore w and skip;
5. restore w exactly and let the base optimizer step with the gradient from the perturbed point
   (through the scaler, so fp16 overflow handling is the usual one), then update the scaler.

Details worth knowing:

* The returned loss is the **second** pass's (at w + e), as the reference logs it. It is higher
  than a plain step's loss at w would be, by roughly rho * ||g||. When the first pass is skipped,
  the first pass's loss is returned (it is the only one there is).
* w is restored from a copy taken before the perturbation, not by subtracting e: w + e - e is not
  w in floating point. The copy lives only during the step; SAM keeps no state between steps, so
  the base optimizer's ``state_dict`` is all that a resume needs (plus the scaler's, here).
* The scaler is updated after each pass (``unscale_`` may run once per update), so an fp16
  scaler's growth counter advances twice per SAM step: ``growth_interval`` counts passes.
* BatchNorm running statistics are updated in both forward passes (as the reference does); with
  ``accumulate`` > 1 each chunk is normalised with its own batch statistics.
* ``grad_clip`` (per part or global, ``grad_clip_scope``: mlic.engine.clipping) applies to the
  second gradient only; clipping the first would not change e, which depends on g's direction alone.
* Weight decay is the base optimizer's business: e is computed from the loss gradient only.

Gradient accumulation: with ``accumulate`` = k, ``__call__`` still takes one batch; it is split into
k chunks (``mlic.engine.accumulate``), and each pass runs forward/backward over all chunks before the
gradient is used (so e comes from the gradient of the whole batch). How chunk losses are combined,
so that the accumulated gradient (and the returned loss) equal the whole-batch ones:

* sum-reduced losses (``loss_fn.reduction == "sum"``): the chunk losses are simply added;
* mean-reduced losses: each chunk's loss is weighted by its share of the entries the loss averages
  over: for mlic's ``MultiLabelLoss`` (which averages over the *known* target entries, >= 0) the
  share of known entries, for any other loss the share of rows (batch elements).

A loss without a ``reduction`` attribute is taken to be a mean (torch's default); pass
``loss_reduction`` to say otherwise. The equality is exact for models whose output for an image does
not depend on the other images of the batch (no BatchNorm in train mode).

Under DDP (``model`` wrapped in DistributedDataParallel, docs/distributed.md), ``perturbation`` says
which gradient e comes from:

* ``"global"`` (default): the first pass's gradient is all-reduced like any other, so e is the one a
  single process would compute from the whole (global) batch: the run is the single-process run,
  whatever the number of processes, at the price of a second all-reduce per step;
* ``"local"``: the first pass runs under ``no_sync``: each process perturbs its copy of w along its
  own share's gradient (Foret et al.'s m-sharpness with m = the per-process batch, which they found
  to generalise at least as well, and one all-reduce per step instead of two). The skip decision
  and an fp16 scaler's inf check are made common to all ranks, so the ranks never diverge.

Either way the second pass's gradient is all-reduced, and every rank restores the same w and takes
the same optimizer step with it, so weights (and an EMA of them) stay identical on every rank.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mlic.engine import distributed
from mlic.engine.accumulate import backward_in_chunks
from mlic.engine.clipping import GradientClipper

PERTURBATIONS = ("global", "local")


# --------------------------------------------------------------------------------------- step
class SAMStep:
    """SAM around ``optimizer``; called as ``loss, stepped = step(images, targets)``.

    Args:
        model, loss_fn, optimizer, device, amp, grad_clip: as for ``OptimizerStep``.
        rho: radius of the perturbation (0.05 in the recipe).
        adaptive: ASAM's element-wise |w| weighting (the recipe's cfg default is False; note the
            SAM class of the reference defaults to True).
        accumulate: number of chunks each batch is split into (gradient accumulation).
        loss_reduction: "mean" | "sum" | None (read ``loss_fn.reduction``); see the module doc.
        scaler: a GradScaler to use instead of the default (enabled only for fp16 autocast).
        perturbation: "global" | "local": under DDP, whether the first pass's gradient is
            all-reduced (see the module doc); no effect in a single process.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, amp: bool = False, grad_clip: float = 0.0,
                 rho: float = 0.05, adaptive: bool = False, accumulate: int = 1,
                 loss_reduction: str | None = None,
                 scaler: torch.amp.GradScaler | None = None, perturbation: str = "global",
                 grad_clip_scope: str = "parts"):
        if rho < 0:
            raise ValueError(f"SAM: rho must be >= 0, got {rho}")
        if int(accumulate) < 1:
            raise ValueError(f"SAM: accumulate must be >= 1, got {accumulate}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"SAM: perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        self.local = perturbation == "local"
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.device, self.grad_clip = torch.device(device), float(grad_clip)
        self.clipper = GradientClipper(model, grad_clip, grad_clip_scope) if grad_clip > 0 else None
        self.rho, self.adaptive, self.accumulate = float(rho), bool(adaptive), int(accumulate)
        self.loss_reduction = loss_reduction
        self.amp = amp and self.device.type == "cuda"
        if scaler is None:
            fp16 = self.amp and not torch.cuda.is_bf16_supported()
            scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler = scaler
        self.grad_norm: float | None = None  # the last second-pass gradient norm, before clipping
        self.clipped = False  # whether the last step clipped it

    # ------------------------------------------------------------------------------- helpers
    def _params_with_grads(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]
                if p.grad is not None]

    def _pass(self, images: torch.Tensor, targets: torch.Tensor,
              label_states: torch.Tensor | None = None) -> torch.Tensor:
        loss = backward_in_chunks(self.model, self.loss_fn, images, targets, self.scaler,
                                  self.device, self.amp, self.accumulate, self.loss_reduction,
                                  label_states=label_states)
        self.scaler.unscale_(self.optimizer)
        return loss

    @staticmethod
    def _global_norm(tensors: list[torch.Tensor]) -> float:
        """||concat(tensors)||_2 as a Python float (the step's one host sync per pass)."""
        if not tensors:
            return 0.0
        norms = torch._foreach_norm(tensors)
        device, dtype = norms[0].device, torch.float32
        for n in norms:
            dtype = torch.promote_types(dtype, n.dtype)
        return float(torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms])))

    def _skip(self, loss: torch.Tensor, backup: list[torch.Tensor] | None = None,
              params: list[torch.Tensor] | None = None) -> tuple[float, bool]:
        if backup is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # unscale_ recorded the inf: an fp16 scale drops
        return float(loss), False

    # ---------------------------------------------------------------------------------- step
    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 label_states: torch.Tensor | None = None) -> tuple[float, bool]:
        """Returns (loss at w + e, stepped); ``stepped`` is False when a non-finite gradient in
        either pass made the step be skipped (the weights are then unchanged). ``label_states``:
        labels revealed to the model (label-mask training), the same in both passes."""
        self.optimizer.zero_grad(set_to_none=True)
        with distributed.no_sync(self.model, self.local):
            first_loss = self._pass(images, targets, label_states)
        if self.local:
            distributed.sync_found_inf(self.scaler, self.optimizer)

        params = self._params_with_grads()
        grads = [p.grad for p in params]
        with torch.no_grad():
            if self.adaptive:
                weighted = torch._foreach_mul(grads, torch._foreach_abs(params))
                norm = self._global_norm(weighted)
                del weighted
            else:
                norm = self._global_norm(grads)
            # A local gradient may be non-finite on one rank only: all ranks skip, or none.
            if distributed.any_rank(not math.isfinite(norm)) if self.local \
                    else not math.isfinite(norm):
                return self._skip(first_loss)
            self.scaler.update()
            backup = [p.detach().clone() for p in params]
            # e is built in the gradient buffers (they are discarded next), then added to w.
            if self.adaptive:
                torch._foreach_mul_(grads, params)
                torch._foreach_mul_(grads, params)
            torch._foreach_add_(params, grads, alpha=self.rho / (norm + 1e-12))
        del grads
        self.optimizer.zero_grad(set_to_none=True)

        loss = self._pass(images, targets, label_states)
        all_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.clipper is not None:
            norm, self.clipped = self.clipper()
        else:
            with torch.no_grad():
                norm = self._global_norm([p.grad for p in all_params if p.grad is not None])
            self.clipped = False
        self.grad_norm = norm
        if not math.isfinite(norm):
            return self._skip(loss, backup, params)
        with torch.no_grad():
            torch._foreach_copy_(params, backup)
        del backup
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss), True

    def state_dict(self) -> dict:
        """The scaler's state; the same layout as ``OptimizerStep.state_dict`` (SAM keeps no other
        state between steps: the base optimizer's state is saved with the optimizer)."""
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
