"""Initial learning-rate estimation: an LR range test and the paper's short-trials (TPE) search.

Both work on a ``Trainee`` (``mlic.engine.assembly``: the run's model and loss, its loaders, its
device), before the run has an optimizer or a schedule, and leave it **exactly** as they found it:
model weights and buffers (BatchNorm statistics included), the train/eval mode of every module,
the loss's state, the Python/NumPy/torch(/CUDA) random states and the loaders' generators are
copied before and put back afterwards, also when the search fails or is interrupted. So the
weights a run starts from after the search are the ones it was built with (pretrained, or
``model.weights``) and the run is the run it would have been with the found lr given explicitly.
(The reference, deep-object-reid's ``torchreid/apis/training.py::run_lr_finder``, rebuilds the
model after its search and so loses ``model.load_weights``.)

Both use a **plain** optimizer step on a fresh optimizer with the run's parameter groups
(``Trainee.new_optimizer``; one per trial): no SAM, no EMA, no schedule, as the reference's finder
does. Group lr ratios are kept: a group with an ``lr_scale`` (the doubled bias lr) gets
``lr * lr_scale``. The short trials score each trial with an evaluation callable (the trainee's
validation mAP by default).

``lr_range_test``: one step per batch, the lr rising exponentially from ``min_lr`` to ``max_lr``;
the suggestion is the lr where the smoothed loss falls fastest (see ``steepest_descent``). The
reference's "fast_ai" mode (``torchreid/optim/lr_finder.py``) is the same idea (it crashes on
multi-label: it reads ``engine.main_losses``, which the multi-label engine lacks) with a warm-up
epoch first, which is not done here.

``lr_short_trials``: the reference's "TPE" mode: Optuna TPE over the lr, each trial a few epochs at
a constant lr from the same starting point, scored by the last epoch's validation mAP.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from mlic.config import DEFAULTS, load_config, save_config, with_defaults
from mlic.data.transforms import batch_to_device
from mlic.engine.assembly import Trainee, build_trainee
from mlic.engine.checkpoint import write_json
from mlic.engine.distributed import seed_epoch
from mlic.engine.step import OptimizerStep
from mlic.errors import ConfigError, MlicError
from mlic.run_folder import checkpoints_of, close_logger, new_run_dir, run_logger

#: A model's score after some training (the validation mAP): what the short trials maximise.
Evaluate = Callable[[nn.Module], float]

METHODS = ("range", "trials")


# ----------------------------------------------------------------------------------- snapshot
class Snapshot:
    """Everything a search may change in a trainee, copied; ``restore()`` puts it back exactly.

    ``restore`` may be called any number of times (once per trial): it never hands out the copies.
    The searches' optimizers are their own, built fresh and dropped afterwards.
    """

    def __init__(self, trainee: Trainee):
        self.trainee = trainee
        model = trainee.model
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.modes = [m.training for m in model.modules()]
        loss_fn = trainee.loss_fn
        self.loss = ({k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
                     if isinstance(loss_fn, nn.Module) else None)
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.generators = {name: loader.generator.get_state() for name, loader in self._loaders()}

    def _loaders(self) -> Iterator[tuple[str, Any]]:
        for name, loader in (("train", self.trainee.train_loader), ("val", self.trainee.val_loader)):
            if loader is not None and loader.generator is not None:
                yield name, loader

    def restore(self) -> None:
        trainee = self.trainee
        trainee.model.load_state_dict(self.weights)  # copies into the existing tensors
        for module, mode in zip(trainee.model.modules(), self.modes):
            module.training = mode
        if self.loss is not None:
            trainee.loss_fn.load_state_dict(self.loss)
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for name, loader in self._loaders():
            loader.generator.set_state(self.generators[name])


# ------------------------------------------------------------------------------------ helpers
def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group to ``lr`` times its ``lr_scale`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _batches(trainee: Trainee) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches on the device, the loader restarted as often as needed."""
    while True:
        empty = True
        for images, targets in trainee.train_loader:
            empty = False
            yield (batch_to_device(images, trainee.device, trainee.channels_last),
                   targets.to(trainee.device, non_blocking=True))
        if empty:
            raise MlicError("the training loader yields no batches (fewer images than a batch?)")


def _check_range(min_lr: float, max_lr: float) -> None:
    if not (0 < float(min_lr) < float(max_lr)):
        raise ConfigError(f"lr_finder: need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")


# --------------------------------------------------------------------------------- range test
@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]            # raw loss of each step's batch (before that step's update)
    smoothed: list[float]          # exponentially smoothed, bias-corrected
    suggestion: float | None       # steepest descent of the smoothed loss
    min_loss_lr: float | None      # lr of the lowest smoothed loss; min_loss_lr / 10 is the other rule
    stop_reason: str = "end of sweep"
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_range_test(trainee: Trainee, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int | None = None,
                  smoothing: float = 0.05, diverge_factor: float = 5.0,
                  skip_start: float = 0.1, skip_end: float = 0.05) -> LRFinderResult:
    """Exponential lr sweep, one plain optimizer step per batch; the trainee is left as found.

    steps: sweep points (batches); ``None``: one epoch of batches, at most 100. More steps than an
        epoch has restart the loader.
    smoothing: weight of the newest loss in the exponential moving average (bias-corrected, so the
        first points are not pulled towards 0). torch-lr-finder's default is 0.05; the reference's
        fast_ai mode passes 0.01 (deep-object-reid ``torchreid/optim/lr_finder.py``), which over a
        sweep of ~100 steps averages nearly the whole history (a window of ~100 steps) and so shifts
        the steepest descent to too-high lrs; 0.05 (a window of ~20 steps) is used here.
    diverge_factor: stop once the smoothed loss exceeds this many times its lowest value (and on a
        non-finite loss, which is not recorded).
    skip_start / skip_end: fractions of the points (at least one each) left out at either end when
        looking for the steepest descent: the first average few losses and the last are the
        divergence.
    """
    _check_range(min_lr, max_lr)
    if not 0 < smoothing <= 1:
        raise ConfigError(f"lr_finder: smoothing must be in (0, 1], got {smoothing}")
    steps = min(len(trainee.train_loader), 100) if steps is None else int(steps)
    if steps < 2:
        raise ConfigError(f"lr_finder: a range test needs at least 2 steps, got {steps}")
    lrs_planned = np.geomspace(min_lr, max_lr, steps).tolist()
    lrs, losses, smoothed = [], [], []
    stop_reason = "end of sweep"
    snapshot = Snapshot(trainee)
    batches = _batches(trainee)
    try:
        optimizer = trainee.new_optimizer(min_lr)
        step = trainee.plain_step(optimizer)
        trainee.model.train()
        average, best = 0.0, math.inf
        for i, (lr, (images, targets)) in enumerate(zip(lrs_planned, batches)):
            set_lr(optimizer, lr)
            loss, _ = step(images, targets)
            if not math.isfinite(loss):
                stop_reason = f"loss {loss} at lr {lr:.3g}"
                break
            average = (1 - smoothing) * average + smoothing * loss
            value = average / (1 - (1 - smoothing) ** (i + 1))
            lrs.append(lr), losses.append(loss), smoothed.append(value)
            best = min(best, value)
            if best > 0 and value > diverge_factor * best:
                stop_reason = f"diverged at lr {lr:.3g} (smoothed loss > {diverge_factor:g} x lowest)"
                break
    finally:
        batches.close()  # ends the loader's iterator (and its workers) before the state goes back
        snapshot.restore()
    min_loss_lr = lrs[int(np.argmin(smoothed))] if smoothed else None
    settings = {"min_lr": min_lr, "max_lr": max_lr, "steps": steps, "smoothing": smoothing,
                "diverge_factor": diverge_factor}
    return LRFinderResult(lrs, losses, smoothed, steepest_descent(lrs, smoothed, skip_start, skip_end),
                          min_loss_lr, stop_reason, settings)


def steepest_descent(lrs: list[float], smoothed: list[float], skip_start: float = 0.1,
                     skip_end: float = 0.05) -> float | None:
    """The lr where d(smoothed loss)/d(log lr) is most negative, ends left out.

    ``skip_start`` / ``skip_end`` of the points (at least one each, when at least 5 points remain)
    are ignored. Without any falling point the rule has nothing to say; then the other rule is used,
    the lr of the lowest smoothed loss / 10 (never below the first lr). ``None`` without points.
    """
    n = len(smoothed)
    if n == 0:
        return None
    if n < 3:
        return lrs[0]
    first, last = max(1, int(n * skip_start)), n - max(1, int(n * skip_end))
    if last - first < 3:
        first, last = 0, n
    slope = np.gradient(np.asarray(smoothed, dtype=float), np.log(np.asarray(lrs, dtype=float)))
    window = slope[first:last]
    if window.min() >= 0:
        return max(lrs[int(np.argmin(smoothed))] / 10, lrs[0])
    return float(lrs[first + int(np.argmin(window))])


# ------------------------------------------------------------------------------- short trials
def lr_short_trials(trainee: Trainee, n_trials: int = 15, epochs_per_trial: int = 1,
                    min_lr: float = 1e-6, max_lr: float = 1.0, step: float | None = None,
                    timeout: float | None = None, seed: int = 0,
                    evaluate: Evaluate | None = None, log: Callable[[str], None] | None = None):
    """The reference's TPE mode: returns ``(best_lr, study)``; the trainee is left as found.

    Each trial starts from the trainee's state (weights, random states: restored before every
    trial and after the study), trains ``epochs_per_trial`` epochs at a constant lr with a plain
    step on a fresh optimizer (no SAM, EMA or schedule), reports ``evaluate(model)`` (default: the
    validation mAP) after every epoch to a ``MedianPruner`` and scores the last epoch's value. A diverging trial (non-finite loss) scores 0.
    The lr is sampled log-uniformly over [min_lr, max_lr] and rounded to 3 significant digits; a
    value already tried is pruned without training. ``step`` samples a linear grid instead, as the
    reference did ([1e-5, 1e-3] by 1e-5, a grid that does not even hold its own released lrs 5e-3
    and 7e-3; see docs/training.md). TPESampler(n_startup_trials=5, seed), as the reference.

    Every trial's epoch e sees the data in the order the real run's epoch e will.
    """
    import optuna  # here: half a second to import, and only this search needs it

    _check_range(min_lr, max_lr)
    if evaluate is None and trainee.val_loader is None:
        raise ConfigError("lr_finder.method=trials scores each trial by the validation mAP: set a "
                          "validation split (data.val), or use lr_finder.method=range")
    epochs = int(epochs_per_trial)
    if epochs < 1 or int(n_trials) < 1:
        raise ConfigError("lr_finder: n_trials and epochs_per_trial must be >= 1")
    evaluate = evaluate or trainee.validation_map
    tried: dict[float, int] = {}
    snapshot = Snapshot(trainee)

    def objective(trial: optuna.Trial) -> float:
        if step:
            lr = trial.suggest_float("lr", min_lr, max_lr, step=step)
        else:
            lr = trial.suggest_float("lr", min_lr, max_lr, log=True)
        lr = float(f"{lr:.3g}")
        trial.set_user_attr("lr", lr)
        if lr in tried:
            trial.set_user_attr("duplicate_of", tried[lr])
            raise optuna.TrialPruned()
        tried[lr] = trial.number
        snapshot.restore()
        train_step = trainee.plain_step(trainee.new_optimizer(lr))
        value = 0.0
        for epoch in range(epochs):
            loss = _train_epoch(trainee, train_step, epoch)
            if not math.isfinite(loss):
                trial.set_user_attr("diverged", True)
                if log:
                    log(f"lr trial {trial.number}: lr {lr:.3g} diverged in epoch {epoch + 1}")
                return 0.0
            value = float(evaluate(trainee.model))
            value = value if math.isfinite(value) else 0.0
            if log:
                log(f"lr trial {trial.number}: lr {lr:.3g} epoch {epoch + 1}/{epochs} "
                    f"loss {loss:.4f} val mAP {100 * value:.2f}")
            trial.report(value, epoch)
            if epoch < epochs - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return value

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(n_startup_trials=5, seed=seed),
                                    pruner=optuna.pruners.MedianPruner())
        study.optimize(objective, n_trials=int(n_trials), timeout=timeout)
    finally:
        optuna.logging.set_verbosity(verbosity)
        snapshot.restore()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise MlicError("lr_finder: no trial completed (all pruned or timed out); give more trials "
                        "or a longer lr_finder.timeout")
    return float(study.best_trial.user_attrs["lr"]), study


def _train_epoch(trainee: Trainee, step: OptimizerStep, epoch: int) -> float:
    """One epoch of plain steps, data ordered as the run's epoch ``epoch``; the mean loss."""
    seed_epoch(trainee.train_loader, int(trainee.config["seed"]), epoch)  # as Trainer.train_one_epoch
    trainee.model.train()
    total, count = 0.0, 0
    for images, targets in trainee.train_loader:
        images = batch_to_device(images, trainee.device, trainee.channels_last)
        loss, _ = step(images, targets.to(trainee.device, non_blocking=True))
        if not math.isfinite(loss):
            return loss
        total, count = total + loss, count + 1
    return total / max(count, 1)


# --------------------------------------------------------------------------- one entry point
@dataclass
class LRSearch:
    """What ``find_lr`` found: the lr, and the range-test curve or the trials behind it."""
    method: str
    lr: float
    seconds: float
    result: LRFinderResult | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "lr": self.lr, "seconds": round(self.seconds, 1)}
        if self.result is not None:
            out.update(self.result.to_dict())
            out["min_loss_lr_div10"] = (self.result.min_loss_lr / 10
                                        if self.result.min_loss_lr is not None else None)
        if self.trials:
            out["trials"] = self.trials
        return out

    def table(self, rows: int = 8) -> str:
        if self.result is not None:
            r = self.result
            lines = [f"{'lr':>10}  {'loss':>9}  {'smoothed':>9}"]
            picks = np.linspace(0, len(r.lrs) - 1, min(rows, len(r.lrs))).round().astype(int)
            for i in sorted(set(picks.tolist())):
                lines.append(f"{r.lrs[i]:10.3g}  {r.losses[i]:9.4f}  {r.smoothed[i]:9.4f}")
            lines.append(f"stopped: {r.stop_reason}")
            lines.append(f"suggestion (steepest descent): {r.suggestion:.3g}")
            if r.min_loss_lr is not None:
                lines.append(f"lowest loss at {r.min_loss_lr:.3g}; / 10 = {r.min_loss_lr / 10:.3g}")
            return "\n".join(lines)
        lines = [f"{'trial':>5}  {'lr':>10}  {'state':>8}  {'val mAP':>8}"]
        for t in self.trials:
            value = "" if t["value"] is None else f"{100 * t['value']:8.2f}"
            lines.append(f"{t['number']:5d}  {t['lr']:10.3g}  {t['state']:>8}  {value:>8}")
        lines.append(f"best lr: {self.lr:.3g}")
        return "\n".join(lines)

    def save(self, folder: Path, stem: str) -> list[Path]:
        """``<stem>.json`` and, when matplotlib is installed, ``<stem>.png``."""
        folder = Path(folder)
        written = [folder / f"{stem}.json"]
        write_json(written[0], self.to_dict())
        try:
            if self.result is not None:
                plot_lr_curve(self.result, folder / f"{stem}.png")
            else:
                plot_trials(self.trials, folder / f"{stem}.png", self.lr)
            written.append(folder / f"{stem}.png")
        except ImportError:
            pass
        return written


def find_lr(trainee: Trainee, settings: Mapping[str, Any] | None = None, method: str | None = None,
            evaluate: Evaluate | None = None, log: Callable[[str], None] | None = None) -> LRSearch:
    """Run the search that ``settings`` (the config's ``lr_finder`` section) names; the trials
    score with ``evaluate`` (default: the trainee's validation mAP) and report to ``log``."""
    s = {**DEFAULTS["lr_finder"], **(settings or {})}
    method = method or s["method"]
    if method not in METHODS:
        raise ConfigError(f"lr_finder.method must be one of {', '.join(METHODS)}, got {method!r}")
    timeout = s["timeout"]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise ConfigError(f"lr_finder.timeout must be a number of seconds > 0 or null, got {timeout!r}")
    start = time.time()
    if method == "range":
        result = lr_range_test(trainee, s["min_lr"], s["max_lr"], s["steps"], s["smoothing"])
        if result.suggestion is None:
            raise MlicError(f"lr range test: no finite loss at all ({result.stop_reason}); "
                            f"lower lr_finder.min_lr or check the data")
        return LRSearch("range", float(f"{result.suggestion:.3g}"), time.time() - start, result=result)
    best, study = lr_short_trials(trainee, s["n_trials"], s["epochs_per_trial"], s["min_lr"],
                                  s["max_lr"], timeout=timeout, seed=int(trainee.config["seed"]),
                                  evaluate=evaluate, log=log)
    trials = [{"number": t.number, "lr": t.user_attrs.get("lr"), "state": t.state.name.lower(),
               "value": t.value, "intermediate": [t.intermediate_values[k]
                                                  for k in sorted(t.intermediate_values)]}
              for t in study.trials]
    return LRSearch("trials", best, time.time() - start, trials=trials)


# ------------------------------------------------------------------------------------ plots
def _figure():
    # Imported here: matplotlib takes a second to import. Figure, not pyplot: the caller's backend
    # is left alone.
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def plot_lr_curve(result: LRFinderResult, path: str | Path) -> Path:
    """Loss and smoothed loss against lr (log x), the suggestion marked; a PNG."""
    fig, ax = _figure()
    ax.plot(result.lrs, result.losses, color="0.7", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C3", linestyle="--",
                   label=f"suggestion {result.suggestion:.3g}")
    if result.min_loss_lr is not None:
        ax.axvline(result.min_loss_lr / 10, color="C2", linestyle=":",
                   label=f"lowest-loss lr / 10 = {result.min_loss_lr / 10:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def plot_trials(trials: list[dict[str, Any]], path: str | Path, best: float | None = None) -> Path:
    """Validation mAP of each finished trial against its lr (log x); a PNG."""
    fig, ax = _figure()
    done = [t for t in trials if t.get("value") is not None]
    ax.scatter([t["lr"] for t in done], [100 * t["value"] for t in done], color="C0")
    if best is not None:
        ax.axvline(best, color="C3", linestyle="--", label=f"best {best:.3g}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation mAP (%)")
    ax.set_title("LR short trials")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


# ------------------------------------------------------------------------------- mlic lr-find
def lr_find(config: str | Path | Mapping[str, Any] | None, overrides: Any = (),
            method: str | None = None, out: str | Path | None = None, progress: bool = True
            ) -> tuple[LRSearch, Path]:
    """A dry run of the search for a config: nothing is trained or saved but the search's
    ``lr_find.json`` / ``.png`` (and ``lr_find_config.yaml``, ``train.log``) in ``out`` (default: a
    new ``<output_dir>/<name>-lr-find-<time>`` folder). Returns the search and the folder."""
    if isinstance(config, Mapping):
        cfg = load_config(None, overrides, base=with_defaults(config))
    else:
        cfg = load_config(config, overrides)
    if out is None:
        folder = new_run_dir(cfg["output_dir"], f"{cfg.get('name') or 'run'}-lr-find")
        checkpoints_of(folder).rmdir()
    else:
        folder = Path(out)
        if (folder / "config.yaml").exists():
            raise MlicError(f"{folder} holds a run (config.yaml); give lr-find a folder of its own")
        folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "lr_find_config.yaml")
    log = run_logger(folder, quiet=True)
    try:
        trainee = build_trainee(cfg, folder, log, progress)
        search = find_lr(trainee, cfg["lr_finder"], method=method, log=log.info)
    finally:
        close_logger(log)
    search.save(folder, "lr_find")
    return search, folder
