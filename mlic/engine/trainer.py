"""Training: builds the pieces from a config and runs the epoch loop.

The loop knows nothing of heads or losses: it gets a model, a loss, loaders and an
``OptimizerStep``. Each epoch it trains, evaluates the model and its EMA on the validation split,
keeps the better one as ``best``, and saves ``last`` with everything needed to resume.
"""
from __future__ import annotations

import inspect
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mlic.config import load_config, save_config
from mlic.atomic import remove_stale_temps
from mlic.data.dataset import MultiLabelDataset
from mlic.data.validate import validate_images
from mlic.data.formats import load_table
from mlic.data.table import LabelTable
from mlic.data.transforms import batch_to_device, eval_transform, train_transform
from mlic.engine import checkpoint as ckpt
from mlic.engine import distributed
from mlic.engine.evaluate import format_report, metrics_report, predict_scores
from mlic.engine.optim import build_optimizer, build_scheduler
from mlic.engine.run_dir import (append_metrics, close_logger, new_run_dir, run_logger,
                                 truncate_metrics)
from mlic.engine.label_mask import reveal, sample_revealed
from mlic.engine.decoder_health import decoder_health, last_cross_attention
from mlic.engine.early_stopping import EarlyStopping, onecycle_warmup_finished
from mlic.engine.nonfinite import NonFiniteGuard
from mlic.engine.sam import SAMStep
from mlic.engine.step import OptimizerStep
from mlic.errors import ConfigError
from mlic.losses import build_loss
from mlic.models import MultiLabelClassifier, create_model
from mlic.models.heads import HEADS, head_uses_label_context
from mlic.models.heads.cosine import cosine_scale
from mlic.predictions import predictions_file, save_predictions
from mlic.tracking import Tracking


ANGULAR_LOSSES = ("am", "aam")


@dataclass
class Splits:
    label_names: list[str]
    train: LabelTable
    val: LabelTable | None = None
    test: LabelTable | None = None
    notes: list[str] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def read_classes(classes: Any) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    path = Path(classes)
    if not path.is_file():
        raise ConfigError(f"data.classes: {path} is neither a list of names nor a file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_splits(data: Mapping[str, Any], seed: int = 0) -> Splits:
    """Read the splits and align them all to one label order (the training split's by default)."""
    if data.get("train") is None:
        raise ConfigError("data.train is not set: give the training annotations, e.g. "
                          "data.train=path/to/train.csv")
    train = load_table(data["train"])
    names = read_classes(data.get("classes")) or train.label_names
    splits = Splits(names, train.with_labels(names, "negative"))
    if data.get("hide_fraction"):
        splits.train, hidden = splits.train.hide(float(data["hide_fraction"]), seed)
        splits.notes.append(f"data.hide_fraction: {hidden} training labels hidden (set to unknown)")
    unlabelled = int((~(splits.train.targets == 1).any(axis=1)).sum())
    if unlabelled:
        splits.notes.append(f"{unlabelled} of {len(train)} training images have no positive label "
                            f"(kept: they are negatives for every label they do not mark unknown)")
    missing = sorted(set(names) - set(train.label_names))
    if missing:
        splits.notes.append(f"{len(missing)} labels of data.classes never occur in the training split")
    for key in ("val", "test"):
        if data.get(key) is None:
            continue
        table = load_table(data[key])
        extra = sorted(set(table.label_names) - set(names))
        if extra:
            splits.notes.append(f"{key}: {len(extra)} labels not among the training labels are "
                                f"ignored: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        setattr(splits, key, table.with_labels(names, "negative"))
    return splits


def make_loader(table: LabelTable, transform, batch_size: int, workers: int, shuffle: bool,
                drop_last: bool = False, seed: int = 0, sampler=None, on_bad: str = "error",
                failure_log: Path | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    dataset = MultiLabelDataset(table, transform, on_bad, failure_log)
    return DataLoader(dataset, batch_size=batch_size,
                      shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, drop_last=drop_last, generator=generator,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(_flatten_python_state(random.getstate())),
            "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2])],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _flatten_python_state(state) -> Iterable[int]:
    version, internal, gauss = state
    return [version, *internal, -1 if gauss is None else 0]


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    values = list(state["python"])
    random.setstate((values[0], tuple(values[1:-1]), None))
    keys, pos = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, 0, 0.0))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Holds the pieces of one run. ``fit()`` runs the remaining epochs."""

    def __init__(self, config: dict[str, Any], run_dir: Path, resume: bool = False,
                 progress: bool = True, quiet: bool = False):
        distributed.require_group()
        progress = progress and distributed.is_main()  # rank 0 alone logs and writes (DDP)
        self.config, self.run_dir, self.progress = config, run_dir, progress
        self.log = run_logger(run_dir, quiet) if distributed.is_main() else distributed.silent_logger()
        data, train_cfg = config["data"], config["train"]
        seed_everything(int(config["seed"]))
        self.device = distributed.process_device(resolve_device(config["device"]))

        self.splits = load_splits(data, int(config["seed"]))
        self.label_names = self.splits.label_names
        for note in self.splits.notes:
            self.log.info(f"note: {note}")
        # Images that fail to load mid-run (under on_bad_image=skip) are listed here, one a line.
        self.failure_log = run_dir / "unreadable_images.txt"
        self.skipped_up_front = self._validate_images(data, progress)

        m = config["model"]
        loss_params = dict(config["loss"]["params"] or {})
        head_params, context = self._label_context(m)
        if config["loss"]["name"] in ANGULAR_LOSSES and "cosine" not in head_params and \
                "cosine" in inspect.signature(HEADS[m["head"]].__init__).parameters:
            head_params["cosine"] = True  # AM/AAM work on cosine logits (DOR switches it the same way)
        if config["loss"]["name"] in ANGULAR_LOSSES and "scale" in loss_params:
            head_params.setdefault("scale", loss_params["scale"])
            if isinstance(head_params.get("decoder"), dict):  # label graph feeding an ML-Decoder
                head_params["decoder"] = {"scale": loss_params["scale"], **head_params["decoder"]}
        self.model: MultiLabelClassifier = create_model(
            m["backbone"], len(self.label_names), head=m["head"],
            pretrained=bool(m["pretrained"]) and not resume, weights=None if resume else m["weights"],
            image_size=data["image_size"], drop_rate=m["drop_rate"], head_params=head_params,
            label_context=context, log=self.log.info)
        self.model.to(self.device)
        self.channels_last = bool(train_cfg["channels_last"])
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # What the steps call: DDP around self.model in a distributed run, compiled if asked.
        self.train_model = distributed.prepare_model(self.model, self.device, train_cfg["sync_bn"],
                                                     train_cfg["compile"], self.log)
        pre = self.model.preprocessing
        self.train_loader = make_loader(
            self.splits.train, train_transform(pre, data["augment"]),
            distributed.per_process_batch(train_cfg["batch_size"]), data["num_workers"], shuffle=True,
            drop_last=len(self.splits.train) > train_cfg["batch_size"], seed=config["seed"],
            sampler=distributed.train_sampler(len(self.splits.train), int(config["seed"]) * 100_003),
            on_bad=data["on_bad_image"], failure_log=self.failure_log)
        self.val_loader = None
        if self.splits.val is not None:
            self.val_loader = self._eval_loader(self.splits.val, pre)

        self.loss_fn = build_loss(config["loss"]["name"], **loss_params)
        self._sync_loss_scale(loss_params)
        # train.lr "auto": a placeholder until estimate_lr() (run by fit()) finds the lr.
        self.lr_auto = train_cfg["lr"] == "auto"
        if self.lr_auto and distributed.is_distributed():
            raise ConfigError("train.lr=auto is not supported in a distributed run: find the lr with "
                              "`mlic lr-find` (one process), then set train.lr")
        optim_cfg = {**train_cfg, "lr": 1e-3} if self.lr_auto else train_cfg
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, optim_cfg, len(self.train_loader))
        if train_cfg["sam"]:
            self.step = SAMStep(self.train_model, self.loss_fn, self.optimizer, self.device,
                                amp=train_cfg["amp"], grad_clip=train_cfg["grad_clip"],
                                grad_clip_scope=train_cfg["grad_clip_scope"],
                                rho=train_cfg["sam_rho"], adaptive=train_cfg["sam_adaptive"],
                                accumulate=train_cfg["accumulate"],
                                perturbation=train_cfg["sam_perturbation"])
        else:
            self.step = OptimizerStep(self.train_model, self.loss_fn, self.optimizer, self.device,
                                      amp=train_cfg["amp"], grad_clip=train_cfg["grad_clip"],
                                      grad_clip_scope=train_cfg["grad_clip_scope"],
                                      accumulate=train_cfg["accumulate"])
        self.guard = NonFiniteGuard(train_cfg["max_skipped_steps"], self.step.scaler.is_enabled(),
                                    run_dir / "checkpoints")
        self.label_mask = float(train_cfg["label_mask"]) if self.model.takes_label_states else 0.0
        self.stopper = None
        if train_cfg["early_stopping"]:
            if self.val_loader is None:
                self.log.info("note: train.early_stopping needs a validation split (data.val); off")
            else:
                self.stopper = EarlyStopping(train_cfg["patience"], train_cfg["es_smoothing"])
        self.ema = None
        if train_cfg["ema"] > 0:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.model, decay=float(train_cfg["ema"]))
        self.epoch, self.global_step, self.best = 0, 0, -math.inf
        self._probe: torch.Tensor | None = None  # images for _decoder_health, loaded when first used
        if resume:
            self._restore()
        # steps.csv and train.loggers; rank 0 alone, and never able to fail the run
        self.tracking = (Tracking(run_dir, config, self.log, after_step=self.global_step)
                         if distributed.is_main() else Tracking.off())

    def _eval_loader(self, table: LabelTable, pre) -> DataLoader:
        """This rank's share of a split (every image once over all ranks; ``evaluate`` gathers)."""
        batch = distributed.per_process_batch(self.config["eval"]["batch_size"], "eval.batch_size")
        return make_loader(table, eval_transform(pre), batch, self.config["data"]["num_workers"],
                           False, sampler=distributed.eval_sampler(len(table)),
                           on_bad=self.config["data"]["on_bad_image"], failure_log=self.failure_log)

    def _sync_loss_scale(self, loss_params: Mapping[str, Any]) -> None:
        """AM/AAM apply their margin in cosine units, so they must know the head's scale s."""
        if self.config["loss"]["name"] not in ANGULAR_LOSSES:
            return
        scale = cosine_scale(self.model.head)
        if scale is None:
            raise ConfigError(f"loss '{self.config['loss']['name']}' works on cosine logits: set "
                              f"model.head_params.cosine=true (head '{self.config['model']['head']}')")
        if "scale" in loss_params and float(loss_params["scale"]) != scale:
            raise ConfigError(f"loss.params.scale ({loss_params['scale']}) differs from the head's "
                              f"scale ({scale}); set one of them (loss.params.scale sets both)")
        self.loss_fn.scale = scale

    def _label_context(self, m: Mapping[str, Any]):
        """Label statistics and word embeddings for the heads that use them, from the training split."""
        head_params = dict(m["head_params"] or {})
        if not head_uses_label_context(m["head"]):
            return head_params, None
        from mlic.models.label_embeddings import build_label_context
        source = m["label_embeddings"]
        context = build_label_context(self.splits.train, self.label_names, source)
        head_params.setdefault("embedding_dim", int(context.embeddings.shape[1]))
        if source == "learned":
            head_params.setdefault("learned_embeddings", True)
        self.log.info(f"label graph: {len(self.label_names)} labels, co-occurrence from "
                      f"{len(self.splits.train)} training images, embeddings: {context.embedding_source}")
        return head_params, context

    # ------------------------------------------------------------------------------ bad images
    def _validate_images(self, data: Mapping[str, Any], progress: bool) -> int:
        """Check every split's images (data.check_images); under data.on_bad_image=skip, drop the
        bad ones from the splits. Returns the number of training images left out."""
        report = self.run_dir / "bad_images.txt"
        if distributed.is_main():  # the list of this start's check (a resume checks again)
            report.unlink(missing_ok=True)
        hint = "; fix or remove them, or set data.on_bad_image=skip to train on the rest"
        left_out = 0
        for key in ("train", "val", "test"):
            table = getattr(self.splits, key)
            if table is None:
                continue
            self.log.info(f"{key}: {table.summary()}  [{table.source}]")
            usable, problems = validate_images(
                table, data["check_images"], data["on_bad_image"], progress,
                report if distributed.is_main() else None, hint)
            if problems:
                self.log.info(f"{key}: skipped {len(problems)} of {len(table)} images that cannot "
                              f"be used (data.on_bad_image=skip; listed in {report}), e.g. "
                              f"{problems[0]}")
                setattr(self.splits, key, usable)
                left_out += len(problems) if key == "train" else 0
        return left_out

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
        folder = self.run_dir / "checkpoints"
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
        folder = self.run_dir / "checkpoints"
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
                                   thresholds=self.config["eval"]["threshold"], **extra)

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
            label_states = None
            if self.label_mask > 0:  # C-Tran: some labels are told, the loss is on the others
                label_states, targets = reveal(targets, sample_revealed(targets, self.label_mask))
            loss, stepped = self.step(images, targets, label_states)
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

    def evaluate(self, model: MultiLabelClassifier, loader, desc: str,
                 predictions: Path | None = None) -> dict[str, Any]:
        """The metrics report of ``model`` over the whole split (every rank gets it); with
        ``predictions``, rank 0 also saves the scores there (``mlic.predictions``)."""
        scores = predict_scores(model, loader, self.device, self.config["train"]["amp"],
                                self.channels_last, desc, self.progress)
        # Under DDP each rank scored its share: the metrics are computed once, over the whole split.
        probabilities, logits, targets = (distributed.gather_rows(a) for a in scores)
        report = None
        if distributed.is_main():  # mAP (model selection, early stopping) ranks the logits
            report = metrics_report(probabilities, targets, self.label_names,
                                    self.config["eval"]["threshold"],
                                    self.config["eval"]["empty_classes"], ranking=logits)
            if predictions is not None:  # the report's gallery and curves read them
                table = loader.dataset.table
                save_predictions(predictions, [str(table.image_path(i)) for i in range(len(table))],
                                 self.label_names, probabilities, targets)
        return distributed.broadcast_object(report)

    def estimate_lr(self) -> float:
        """Find the lr (``mlic.engine.lr_finder``; the lr_finder section says how), set it on every
        param group (times its ``lr_scale``) and rebuild the schedule for it; the config.yaml of the
        run gets the value, ``lr_finder.json``/``.png`` the search. Weights, optimizer state and
        random states are those from before the search, so the run is the one it would have been
        with the found lr given explicitly."""
        from mlic.engine.lr_finder import find_lr, set_lr
        search = find_lr(self, self.config["lr_finder"])
        search.save(self.run_dir, "lr_finder")
        for group in self.optimizer.param_groups:
            group.pop("initial_lr", None)  # else a new scheduler keeps the placeholder's
        set_lr(self.optimizer, search.lr)
        self.config["train"]["lr"] = search.lr
        self.scheduler = build_scheduler(self.optimizer, self.config["train"], len(self.train_loader))
        self.lr_auto = False
        save_config(self.config, self.run_dir / "config.yaml")
        self.log.info(f"train.lr=auto: {search.method} search chose lr {search.lr:.3g} in "
                      f"{search.seconds:.0f}s (written to config.yaml; details in lr_finder.json)")
        return search.lr

    def fit(self, on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None) -> Path:
        """Train the remaining epochs, then evaluate the selected weights (``finish``).

        ``on_epoch_end(epoch, row)``: called after each epoch is saved, with its metrics.csv row;
        a true return ends training there (``finish`` still runs). An exception raised in it (e.g.
        ``optuna.TrialPruned``) propagates, the epoch's checkpoint being complete."""
        if self.lr_auto and self.global_step == 0:
            self.estimate_lr()
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
        folder = self.run_dir / "checkpoints"
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
        model, _ = ckpt.load_model(self.run_dir / "checkpoints", tag="best")
        model.to(self.device)
        pre = model.preprocessing
        for key in ("val", "test"):
            table = getattr(self.splits, key)
            if table is None:
                continue
            report = self.evaluate(model, self._eval_loader(table, pre), f"{key} (best)",
                                   predictions=predictions_file(self.run_dir, key))
            if distributed.is_main():
                ckpt.write_json(self.run_dir / f"eval_{key}.json", report)
            self.log.info(f"{key} split, selected weights:\n{format_report(report)}")
        if distributed.is_main():
            from mlic.report import write_report_or_warn  # here: mlic.report imports mlic.engine
            report_path = write_report_or_warn(self.run_dir, self.log)  # a failure only warns
            if report_path is not None:
                self.log.info(f"report: {report_path}")
        self.tracking.finish()  # after the report: MLflow keeps it as an artifact
        self.log.info(f"done: {self.run_dir}")
        close_logger(self.log)


def train(config: Mapping[str, Any] | str | Path | None = None, overrides: Iterable[str] = (),
          resume: str | Path | None = None, progress: bool = True, quiet: bool = False,
          on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None) -> Path:
    """Train from a config (a dict, a YAML path, or None for defaults + overrides); returns the run folder.

    ``resume``: a run folder whose ``checkpoints/last.*`` training continues from, with its config.
    ``on_epoch_end``: see ``Trainer.fit``.
    Under torchrun (WORLD_SIZE > 1) this is one process of a DDP run (docs/distributed.md).
    """
    restart = False
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", overrides)
        _check_resume_overrides(load_config(run_dir / "config.yaml"), cfg)
        # Killed before its first epoch was saved: the run starts again, in the same folder.
        restart = not (run_dir / "checkpoints" / ckpt.STATE_FILE).is_file()
        if distributed.is_main():
            remove_stale_temps(run_dir / "checkpoints")  # temporary files of killed writes
            if restart:
                truncate_metrics(run_dir, 0)
    elif isinstance(config, Mapping):
        cfg = load_config(None, overrides, base=_with_defaults(config))
    else:
        cfg = load_config(config, overrides)
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
    finally:
        if started:
            distributed.teardown()


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


def _with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    from mlic.config import default_config, merge
    base = default_config()
    merge(base, config, where="config")
    return base
