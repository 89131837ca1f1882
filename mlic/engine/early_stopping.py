"""Early stopping on a plateau of the validation metric (deep-object-reid's
``MultilabelEngine.exit_on_plateau_and_choose_best``, ``torchreid/engine/image/multilabel.py``).

Each epoch the trainer passes the selection metric (max of the model's and the EMA's val mAP) and
whether the learning-rate warm-up is over. With a = round(metric, 4):

1. |a - 1| < 1e-4: stop now (and the caller marks this epoch as best); in floating point 0.9999
   already counts;
2. a <= smooth: if the warm-up is over, wait += 1 and a stop is requested once wait >= patience;
   during the warm-up nothing happens;
3. a > smooth: smooth <- smoothing * a + (1 - smoothing) * smooth, and wait <- 0.

``smooth`` starts at 0, so the first epoch always "improves". As in the reference, ``wait`` is
reset only by beating the *smoothed* metric: bad epochs count cumulatively even when separated by
epochs that beat the previous epoch but not ``smooth``; an epoch that beats ``smooth`` resets it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class EarlyStopping:
    """Args:
        patience: bad epochs (after the warm-up) before a stop is requested (the recipe's 5).
        smoothing: weight of the new metric in the smoothed one (0.8).
        warmup_finished: the default for :meth:`update`'s argument: a bool, or a callable
            returning one (e.g. ``lambda: onecycle_warmup_finished(scheduler)``); None = True.
    """

    def __init__(self, patience: int = 5, smoothing: float = 0.8,
                 warmup_finished: Callable[[], bool] | bool | None = None):
        if patience < 1:
            raise ValueError(f"early stopping: patience must be >= 1, got {patience}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"early stopping: smoothing must be in (0, 1], got {smoothing}")
        self.patience, self.smoothing = int(patience), float(smoothing)
        self.warmup_finished = warmup_finished
        self.smooth, self.wait = 0.0, 0
        self.stopped = False      # a stop was requested by the last update (or an earlier one)
        self.perfect = False      # the stop came from a metric of 1: that epoch should be best

    def update(self, metric: float, warmup_finished: bool | None = None) -> bool:
        """Record one epoch's metric; True when training should stop after this epoch.

        ``warmup_finished`` None: the constructor's ``warmup_finished`` decides.
        """
        if warmup_finished is None:
            default = self.warmup_finished
            warmup_finished = True if default is None else bool(
                default() if callable(default) else default)
        a = round(float(metric), 4)
        if abs(a - 1.0) < 1e-4:
            self.stopped = self.perfect = True
        elif a <= self.smooth:
            if warmup_finished:
                self.wait += 1
                if self.wait >= self.patience:
                    self.stopped = True
        else:
            self.smooth = self.smoothing * a + (1.0 - self.smoothing) * self.smooth
            self.wait = 0
        return self.stopped

    @property
    def status(self) -> dict[str, Any]:
        """For the metrics row: the smoothed metric and the count of bad epochs."""
        return {"es_smooth": round(self.smooth, 6), "es_wait": self.wait}

    def state_dict(self) -> dict[str, Any]:
        return {"smooth": float(self.smooth), "wait": int(self.wait), "stopped": bool(self.stopped),
                "perfect": bool(self.perfect)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.smooth, self.wait = float(state["smooth"]), int(state["wait"])
        self.stopped = bool(state.get("stopped", False))
        self.perfect = bool(state.get("perfect", False))


def onecycle_warmup_finished(scheduler: Any) -> bool:
    """Whether the LR warm-up is over: for torch's OneCycleLR, whether the scheduler has passed the
    end of its first (increasing) phase, i.e. ``last_epoch > _schedule_phases[0]['end_step']``
    (= pct_start * total_steps - 1); the LR the next step uses is then below the peak.

    A scheduler with a ``warmup_finished`` attribute (or method) is asked; any other scheduler (or
    None) has no warm-up, so True.
    """
    if scheduler is None:
        return True
    own = getattr(scheduler, "warmup_finished", None)
    if own is not None:
        return bool(own() if callable(own) else own)
    if isinstance(scheduler, _onecycle_type()):
        phases = getattr(scheduler, "_schedule_phases", None)
        if phases:
            end = float(phases[0]["end_step"])
        else:  # no phase table (another torch version): nothing else says where phase 1 ends
            return True
        return scheduler.last_epoch > end
    return True


def _onecycle_type() -> type:
    import torch
    return torch.optim.lr_scheduler.OneCycleLR
