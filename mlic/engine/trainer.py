"""Training: the epoch loop over a run's parts.

The parts are built apart (``mlic.engine.assembly``): the model and its loss coupled once, the
loaders, the optimizer, its schedule and the ``OptimizerStep``; the loop knows nothing of heads or
losses. ``train.lr: auto`` is settled between building the model and building the optimizer
(``mlic.engine.lr_finder``). Each epoch the trainer trains, evaluates the model and its EMA on the
validation split, keeps the better one as ``best``, and saves ``last`` with everything needed to
resume.
"""
from __future__ import annotations

import errno
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from mlic.atomic import remove_stale_temps
from mlic.config import load_config, save_config, with_defaults
from mlic.data.transforms import batch_to_device, eval_transform
from mlic.data_paths import locate_data, with_absolute_paths
from mlic.engine import checkpoint as ckpt
from mlic.engine import distributed
from mlic.engine.assembly import Trainee, build_trainee, equip
from mlic.engine.decision_rule import THRESHOLDS_FILE, choose_rule
from mlic.engine.decoder_health import decoder_health, last_cross_attention
from mlic.engine.early_stopping import EarlyStopping, onecycle_warmup_finished
from mlic.engine.evaluate import format_report
from mlic.engine.label_mask import reveal, sample_revealed
from mlic.engine.lr_finder import find_lr
from mlic.engine.nonfinite import NonFiniteGuard
from mlic.engine.rng import rng_state, set_rng_state
from mlic.engine.splits import make_loader
from mlic.errors import ConfigError
from mlic.models import MultiLabelClassifier
from mlic.predictions import predictions_file
from mlic.report import write_report_or_warn
from mlic.tracking import Tracking
from mlic.run_folder import (append_metrics, checkpoints_of, close_logger, new_run_dir, run_logger,
                             truncate_metrics)


class Trainer:
    """Holds the pieces of one run. ``fit()`` runs the remaining epochs."""

    def __init__(self, config: dict[str, Any], run_dir: Path, resume: bool = False,
                 progress: bool = True, quiet: bool = False):
        distributed.require_group()
        progress = progress and distributed.is_main()  # rank 0 alone logs and writes (DDP)
        self.config, self.run_dir, self.progress = config, run_dir, progress
        self.log = run_logger(run_dir, quiet) if distributed.is_main() else distributed.silent_logger()
        self.trainee: Trainee = build_trainee(config, run_dir, self.log, progress, resume)
        parts = equip(self.trainee, self._settle_lr(resume))
        t = self.trainee  # the loop's names for the parts
        self.device, self.splits, self.label_names = t.device, t.splits, t.label_names
        self.model, self.train_model, self.loss_fn = t.model, t.train_model, t.loss_fn
        self.train_loader, self.val_loader = t.train_loader, t.val_loader
        self.channels_last, self.failure_log = t.channels_last, t.failure_log
        self.skipped_up_front = t.skipped_up_front
        self.optimizer, self.scheduler, self.step = parts.optimizer, parts.scheduler, parts.step
        train_cfg = config["train"]
        self.guard = NonFiniteGuard(train_cfg["max_skipped_steps"], self.step.scaler.is_enabled(),
                                    checkpoints_of(run_dir))
        self.label_mask = float(train_cfg["label_mask"]) if self.model.takes_label_states else 0.0
        # Steps that train the head alone (train.head_warmup_epochs); counted in steps, so that a
        # resume in the middle of the warm-up goes on with it.
        self.head_warmup_steps = round(float(train_cfg["head_warmup_epochs"]) * len(self.train_loader))
        self.stopper = None
        if train_cfg["early_stopping"]:
            if self.val_loader is None:
                self.log.info("note: train.early_stopping needs a validation split (data.val); off")
            else:
                self.stopper = EarlyStopping(train_cfg["patience"], train_cfg["es_smoothing"])
        self.ema = None
        if train_cfg["ema"] > 0:
            self.ema = ModelEmaV3(self.model, decay=float(train_cfg["ema"]))
        self.epoch, self.global_step, self.best = 0, 0, -math.inf
        self._probe: torch.Tensor | None = None  # images for _decoder_health, loaded when first used
        if resume:
            self._restore()
        # steps.csv and train.loggers; rank 0 alone, and never able to fail the run
        self.tracking = (Tracking(run_dir, config, self.log, after_step=self.global_step)
                         if distributed.is_main() else Tracking.off())

    def _settle_lr(self, resume: bool) -> float:
        """train.lr, or with ``auto`` the lr the search (the lr_finder section) finds, written to
        the run's config.yaml (``lr_finder.json``/``.png`` hold the search). The search leaves the
        trainee as it was built, so the run is the one it would have been with that lr given."""
        lr = self.config["train"]["lr"]
        if lr != "auto":
            return float(lr)
        if distributed.is_distributed():
            raise ConfigError("train.lr=auto is not supported in a distributed run: find the lr with "
                              "`mlic lr-find` (one process), then set train.lr")
        if resume:  # the search writes its lr into config.yaml before the first epoch is saved
            raise ConfigError(f"{self.run_dir / 'config.yaml'}: train.lr is 'auto' in a run with a "
                              f"saved epoch; set the lr it was trained with")
        search = find_lr(self.trainee, self.config["lr_finder"], log=self.log.info)
        search.save(self.run_dir, "lr_finder")
        self.config["train"]["lr"] = search.lr
        save_config(self.config, self.run_dir / "config.yaml")
        self.log.info(f"train.lr=auto: {search.method} search chose lr {search.lr:.3g} in "
                      f"{search.seconds:.0f}s (written to config.yaml; details in lr_finder.json)")
        return search.lr

    # ------------------------------------------------------------------------------ bad images
    def _count_failures(self) -> int:
        """Images that failed to load mid-run so far (lines of the failure log)."""
        if not self.failure_log.is_file():
            return 0
        with open(self.failure_log, encoding="utf-8") as f:
            return sum(1 for _ in f)

    def _report_skipped(self, failures_before: int) -> int:
        """Training images not trained on this epoch: left out up front + failed since then."""
        failed = self._count_failures() - failures_before
        if failed:
            self.log.info(f"epoch {self.epoch}: {failed} images could not be read and were replaced "
                          f"by the next readable ones (listed in {self.failure_log})")
        return self.skipped_up_front + failed

    # ----------------------------------------------------------------------------------- state
    def _restore(self) -> None:
        folder = checkpoints_of(self.run_dir)
        state = ckpt.load_training_state(folder)  # self-contained: weights included
        weights = state.get("model")
        if weights is None:  # a state saved before the weights were put in it
            weights = ckpt.load_model(folder, tag="last")[0].state_dict()
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            raise ckpt.WeightsError(f"{folder / ckpt.STATE_FILE}: its weights do not fit the model "
                                    f"of {self.run_dir / 'config.yaml'} ({str(e)[:300]})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step.load_state_dict(state["step"])
        if self.ema is not None and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        if self.stopper is not None and state.get("early_stopping"):
            self.stopper.load_state_dict(state["early_stopping"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.best = float(state["best"])
        if distributed.is_main():
            truncate_metrics(self.run_dir, self.epoch)
        self.log.info(f"resumed from {folder / ckpt.STATE_FILE}: epoch {self.epoch} done, "
                      f"step {self.global_step}, best mAP {self.best:.4f}")

    def _save_last(self, metrics: dict[str, Any]) -> None:
        folder = checkpoints_of(self.run_dir)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step.state_dict(), "rng": rng_state(), "epoch": self.epoch,
                 "global_step": self.global_step, "best": self.best,
                 "ema": self.ema.module.state_dict() if self.ema is not None else None,
                 "early_stopping": self.stopper.state_dict() if self.stopper is not None else None,
                 "model": self.model.state_dict()}
        # The state (all a resume reads, in one atomic file) first; then the weights to use.
        ckpt.save_training_state(folder, state)
        ckpt.save_model(folder, "last", self.model.state_dict(),
                        self.metadata(epoch=self.epoch, metrics=metrics))

    def metadata(self, **extra: Any) -> dict[str, Any]:
        return ckpt.model_metadata(self.model, self.label_names,
                                   thresholds=self.config["eval"]["threshold"],
                                   min_labels=self.config["eval"]["min_labels"], **extra)

    # ------------------------------------------------------------------------------------ loop
    def train_one_epoch(self) -> tuple[float, int, int]:
        self.model.train()
        # Seeding per epoch makes the order and augmentation of epoch e the same after a resume.
        distributed.seed_epoch(self.train_loader, int(self.config["seed"]), self.epoch)
        total, count, skipped, clipped = 0.0, 0, 0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.config['train']['epochs']}",
                   disable=not self.progress, leave=False, mininterval=1.0)
        for images, targets in bar:
            images = batch_to_device(images, self.device, self.channels_last)
            targets = targets.to(self.device, non_blocking=True)
            self._freeze_backbone(self.global_step < self.head_warmup_steps)
            label_states = None
            if self.label_mask > 0:  # C-Tran: some labels are told, the loss is on the others
                label_states, targets = reveal(targets, sample_revealed(targets, self.label_mask))
            try:
                loss, stepped = self.step(images, targets, label_states)
            except ValueError as e:  # torch's batch norm on one value per channel
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise ConfigError(
                    f"batch normalization cannot train on {len(images)} image(s) per batch "
                    f"at {images.shape[-1]} px: each channel of a layer sees a single value; "
                    f"set train.batch_size to 2 or more (per process, under DDP)") from None
            self.guard(loss, stepped, self.epoch + 1, self.global_step + 1)  # NaN/inf: stop
            skipped += not stepped
            clipped += self.step.clipped
            self.tracking.step(self.global_step + 1, self.epoch + 1, loss,
                               self.optimizer.param_groups[0]["lr"])  # the lr this step used
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            self.global_step += 1
            if math.isfinite(loss):  # a skipped fp16 step's inf is not part of the epoch's loss
                total, count = total + loss, count + 1
            if count % self.config["train"]["log_every"] == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
        return distributed.mean_over_ranks(total / max(count, 1)), skipped, clipped

    def _freeze_backbone(self, frozen: bool) -> None:
        if frozen != self.model.backbone_frozen:
            self.model.backbone_frozen = frozen
            self.log.info(f"step {self.global_step + 1}: " + (
                f"head warm-up, the backbone frozen for {self.head_warmup_steps} steps" if frozen
                else "head warm-up over: the whole model trains"))

    def evaluate(self, model: MultiLabelClassifier, loader, desc: str) -> dict[str, Any]:
        return self.trainee.evaluate(model, loader, desc)

    def fit(self, on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None) -> Path:
        """Train the remaining epochs, then evaluate the selected weights (``finish``).

        ``on_epoch_end(epoch, row)``: called after each epoch is saved, with its metrics.csv row;
        a true return ends training there (``finish`` still runs). An exception raised in it (e.g.
        ``optuna.TrialPruned``) propagates, the epoch's checkpoint being complete."""
        epochs = int(self.config["train"]["epochs"])
        self.log.info(f"training {self.model.model_config['backbone']} + {self.model.model_config['head']} "
                      f"on {len(self.splits.train)} images, {len(self.label_names)} labels, "
                      f"{epochs} epochs, device {self.device}; run folder {self.run_dir}")
        shown = range(min(8, len(self.splits.train)))
        self.tracking.start([str(self.splits.train.image_path(i)) for i in shown],
                            [self.splits.train.labels_of(i) for i in shown])
        try:
            while self.epoch < epochs and not (self.stopper is not None and self.stopper.stopped):
                start, failures = time.time(), self._count_failures()
                loss, skipped, clipped = self.train_one_epoch()
                self.epoch += 1
                row = {"epoch": self.epoch, "steps": self.global_step, "train_loss": loss,
                       "lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": skipped,
                       "clipped_steps": clipped}
                self._select(row)
                row.update(self._decoder_health())
                row["skipped_images"] = self._report_skipped(failures)
                row["seconds"] = round(time.time() - start, 1)
                if distributed.is_main():
                    append_metrics(self.run_dir, row)
                    self.tracking.epoch(self.epoch, row)
                    self._save_last({k: row[k] for k in ("train_loss", "val_mAP", "val_mAP_ema")
                                     if row.get(k) is not None})
                val = "" if row.get("val_mAP") is None else f"  val mAP {100 * row['val_mAP']:.2f}" + (
                    f" (EMA {100 * row['val_mAP_ema']:.2f})" if row.get("val_mAP_ema") is not None else "")
                health = "" if row.get("attn_ratio") is None else (
                    f"  decoder: attn/query {row['attn_ratio']:.3g}, image share {row['image_share']:.3g}")
                self.log.info(f"epoch {self.epoch}/{epochs}  loss {loss:.4f}{val}{health}  {row['seconds']:.0f}s")
                if on_epoch_end is not None and on_epoch_end(self.epoch, dict(row)):
                    self.log.info(f"stopped after epoch {self.epoch} by on_epoch_end")
                    break
                if self.stopper is not None and self.stopper.stopped:
                    self.log.info(f"early stop after epoch {self.epoch}: validation mAP has not beaten "
                                  f"its smoothed value ({self.stopper.smooth:.4f}) for "
                                  f"{self.stopper.wait} epochs after the warm-up")
        except KeyboardInterrupt:
            self.tracking.close()
            self.log.info(f"interrupted: the last complete epoch ({self.epoch}) is saved in "
                          f"{self.run_dir / 'checkpoints'}; continue with "
                          f"`mlic train --resume {self.run_dir}`")
            raise
        self.finish()
        return self.run_dir

    def _decoder_health(self) -> dict[str, float]:
        """``attn_ratio`` and ``image_share`` of a decoder head (mlic.engine.decoder_health) on a
        fixed batch of up to 64 validation (else training) images; {} for other heads."""
        if last_cross_attention(self.model.head) is None:
            return {}
        if self._probe is None:
            table = self.splits.val if self.splits.val is not None else self.splits.train
            table = table.subset(range(min(64, len(table))))
            images, _ = next(iter(make_loader(table, eval_transform(self.model.preprocessing), 64, 0,
                                              False, on_bad=self.config["data"]["on_bad_image"],
                                              failure_log=self.failure_log)))
            self._probe = batch_to_device(images, self.device, self.channels_last)
        return decoder_health(self.model, self._probe) or {}

    def _select(self, row: dict[str, Any]) -> None:
        """Evaluate model and EMA; save the better as ``best`` if it is at least as good as before.

        Without a validation split, the latest weights (the EMA's if EMA is on) are ``best``.
        """
        folder = checkpoints_of(self.run_dir)
        candidates = {"model": self.model}
        if self.ema is not None:
            candidates["ema"] = self.ema.module
        for module in candidates.values():  # DDP: BatchNorm statistics as rank 0 has them
            distributed.broadcast_buffers(module)
        if self.val_loader is None:
            chosen = "ema" if self.ema is not None else "model"
            row["selected"] = chosen
            if distributed.is_main():
                ckpt.save_model(folder, "best", candidates[chosen].state_dict(),
                                self.metadata(epoch=self.epoch, selected=chosen))
            return
        scores = {name: self.evaluate(m, self.val_loader, f"val {name}")["mAP"]
                  for name, m in candidates.items()}
        row["val_mAP"], row["val_mAP_ema"] = scores["model"], scores.get("ema")
        chosen = max(scores, key=lambda k: scores[k])
        value = round(scores[chosen], 4)
        if self.stopper is not None:
            self.stopper.update(scores[chosen], onecycle_warmup_finished(self.scheduler))
            row.update(self.stopper.status)
        if value >= self.best or (self.stopper is not None and self.stopper.perfect):
            self.best = value
            row["selected"] = chosen
            if distributed.is_main():
                ckpt.save_model(folder, "best", candidates[chosen].state_dict(),
                                self.metadata(epoch=self.epoch, selected=chosen,
                                              val_mAP=scores[chosen]))
        row["best_mAP"] = self.best

    def finish(self) -> None:
        """Evaluate the selected weights on the validation and test splits and write the reports."""
        distributed.barrier()  # rank 0 has written best.*
        model, _ = ckpt.load_model(checkpoints_of(self.run_dir), tag="best")
        model.to(self.device)
        pre = model.preprocessing
        rule = None  # (thresholds, min_labels): chosen on the validation split, used on the test split
        for key in ("val", "test"):
            table = getattr(self.splits, key)
            if table is None:
                continue
            scores = self.trainee.score(model, self.trainee.eval_loader(table, pre), f"{key} (best)")
            if not distributed.is_main():
                continue
            if key == "val" and self.config["eval"]["tune_thresholds"]:
                chosen = choose_rule(self.run_dir, self.label_names, scores.probabilities,
                                     scores.targets, "val", table.source,
                                     self.config["eval"]["min_labels"])
                rule = (np.asarray(list(chosen["thresholds"].values())), chosen["min_labels"])
                self.log.info(f"decision rule chosen on the validation split: {chosen['rule']} "
                              f"(saved with the best weights; {THRESHOLDS_FILE})")
            report = self.trainee.report(scores, table, predictions_file(self.run_dir, key),
                                         rule or (self.config["eval"]["threshold"],
                                                  self.config["eval"]["min_labels"]))
            ckpt.write_json(self.run_dir / f"eval_{key}.json", report)
            self.log.info(f"{key} split, selected weights:\n{format_report(report)}")
        if rule is None and distributed.is_main():
            self.log.info(self._untuned_note())
        if distributed.is_main():
            report_path = write_report_or_warn(self.run_dir, self.log)  # a failure only warns
            if report_path is not None:
                self.log.info(f"report: {report_path}")
        self.tracking.finish()  # after the report: MLflow keeps it as an artifact
        self.log.info(f"done: {self.run_dir}")
        close_logger(self.log)

    def _untuned_note(self) -> str:
        why = ("there is no validation split" if self.splits.val is None
               else "eval.tune_thresholds is off")
        return (f"decisions: one threshold, {self.config['eval']['threshold']}, for every label "
                f"({why}); per-class thresholds chosen on held-out images decide better: "
                f"mlic tune-thresholds {self.run_dir} --data HELD_OUT_ANNOTATIONS")


def train(config: Mapping[str, Any] | str | Path | None = None, overrides: Iterable[str] = (),
          resume: str | Path | None = None, progress: bool = True, quiet: bool = False,
          on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None) -> Path:
    """Train from a config (a dict, a YAML path, or None for defaults + overrides); returns the run folder.

    ``resume``: a run folder whose ``checkpoints/last.*`` training continues from, with its config.
    ``on_epoch_end``: see ``Trainer.fit``.
    Under torchrun (WORLD_SIZE > 1) this is one process of a DDP run (docs/distributed.md).
    """
    restart, run_dir = False, None  # run_dir: None until made, for the error below
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", overrides)
        _check_resume_overrides(load_config(run_dir / "config.yaml"), cfg)
        cfg["data"] = locate_data(run_dir, cfg)  # the run may have moved, or run from elsewhere
        # Killed before its first epoch was saved: the run starts again, in the same folder.
        restart = not (checkpoints_of(run_dir) / ckpt.STATE_FILE).is_file()
        if distributed.is_main():
            remove_stale_temps(checkpoints_of(run_dir))  # temporary files of killed writes
            if restart:
                truncate_metrics(run_dir, 0)
    elif isinstance(config, Mapping):
        cfg = load_config(None, overrides, base=with_defaults(config))
    else:
        cfg = load_config(config, overrides)
    if resume is None:  # config.yaml records them absolute: the run works from any folder
        cfg = with_absolute_paths(cfg)
    started = distributed.init_from_env(cfg["device"])
    try:
        if resume is None:
            run_dir = distributed.shared_folder(lambda: _new_run(cfg))
        trainer = Trainer(cfg, run_dir, resume=resume is not None and not restart,
                          progress=progress, quiet=quiet)
        if resume is not None and restart:
            trainer.log.info(f"{run_dir}: no epoch was saved before the run stopped "
                             f"(no checkpoints/{ckpt.STATE_FILE}): training starts from the beginning")
        return trainer.fit(on_epoch_end)
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        # Saves are atomic: what is on disk is the last complete epoch's, whole.
        saved = run_dir is not None and (checkpoints_of(run_dir) / ckpt.STATE_FILE).is_file()
        raise ConfigError(f"cannot write {e.filename or run_dir} ({e.strerror}): training stopped; "
                          + (f"the last complete epoch is saved; free space and continue with "
                             f"mlic train --resume {run_dir}" if saved else
                             "no epoch was saved")) from None
    finally:
        if started:
            distributed.teardown()


# Errors of a folder that cannot take more writes: disk full, quota, read-only, permissions.
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _new_run(cfg: Mapping[str, Any]) -> Path:
    run_dir = new_run_dir(cfg["output_dir"], cfg.get("name"))
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


# What the saved optimizer, schedule and weights were built for: a resume cannot change these
# (e.g. more epochs would step OneCycle past its end; another optimizer cannot take the state).
RESUME_FIXED = ("model", "data.classes", "data.image_size", "train.epochs", "train.batch_size",
                "train.optimizer", "train.no_bias_decay", "train.double_bias_lr", "train.head_lr_scale",
                "train.scheduler",
                "train.pct_start", "train.div_factor", "train.final_div_factor",
                # Stored in the optimizer's and scheduler's state: a new value would be ignored.
                "train.lr", "train.weight_decay", "train.momentum")


def _check_resume_overrides(saved: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    for key in RESUME_FIXED:
        old_value, new_value = saved, new
        for part in key.split("."):
            old_value, new_value = old_value[part], new_value[part]
        if old_value != new_value:
            raise ConfigError(f"'{key}' cannot change when resuming ({old_value!r} in the run's "
                              f"config.yaml, {new_value!r} now): the checkpoint's optimizer, schedule "
                              f"and weights were made for the original value; start a new run")
