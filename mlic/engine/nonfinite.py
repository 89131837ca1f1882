"""What a NaN or inf loss does to a run: stop it, naming the step, before anything is saved.

Without a gradient scaler (float32, bf16) the first non-finite loss stops the run: the weights
cannot be trusted after that step. Under fp16 mixed precision the scaler skips steps whose
gradients overflowed and lowers its scale, which is normal for a few steps; ``tolerated`` skipped
steps in a row are accepted, one more stops the run. Stopping raises before the epoch's
checkpoint is written, so ``checkpoints/last.*`` and ``best.*`` stay those of the last good epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

from mlic.errors import MlicError


class NonFiniteLoss(MlicError):
    """The loss became NaN or inf (or fp16 steps kept overflowing)."""


class NonFiniteGuard:
    def __init__(self, tolerated: int, scaler_enabled: bool, checkpoints: Path):
        self.tolerated, self.scaler_enabled = int(tolerated), bool(scaler_enabled)
        self.checkpoints = checkpoints
        self.in_a_row = 0  # steps skipped in a row

    def __call__(self, loss: float, stepped: bool, epoch: int, step: int) -> None:
        """Check one step's result; ``epoch`` and ``step`` (global) count from 1."""
        finite = math.isfinite(loss)
        if finite and stepped:
            self.in_a_row = 0
            return
        where = f"at epoch {epoch}, step {step}"
        advice = "lower train.lr (or check the data and loss.params) and start again"
        # The first epoch has no checkpoint to keep: say so rather than promise one.
        keep = (f"the last good checkpoint is kept in {self.checkpoints}; {advice}, or resume "
                f"from it" if (Path(self.checkpoints) / "last.state.pt").is_file() else
                f"no epoch was completed, so no checkpoint was saved in {self.checkpoints}; "
                f"{advice}")
        if not finite and not self.scaler_enabled:
            raise NonFiniteLoss(f"the loss became {loss} {where}: training stopped; {keep}")
        self.in_a_row += 1
        if self.in_a_row > self.tolerated:
            raise NonFiniteLoss(f"{self.in_a_row} steps in a row were skipped for a non-finite loss "
                                f"or gradient (last loss {loss}, {where}; train.max_skipped_steps "
                                f"is {self.tolerated}): training stopped; {keep}")
