"""A run's parts, built once from its config, apart from the loop that uses them.

``build_trainee`` reads and checks the splits, builds the model and its loss coupled once
(``mlic.coupling``) and the loaders, on the run's device: a ``Trainee``, all the learning-rate
search (``lr_finder``) needs besides an evaluation. ``equip`` adds the optimizer at a known lr, its
schedule and the optimizer step: ``RunParts``, which the ``Trainer`` wires together with EMA,
early stopping, checkpoints and resume. So ``train.lr: auto`` is settled between the two, before
any schedule exists.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mlic.coupling import build_coupled_loss, head_params_for_loss
from mlic.data.table import LabelTable
from mlic.data.transforms import eval_transform, train_transform
from mlic.engine import distributed
from mlic.engine.decision_rule import decisions_block
from mlic.engine.evaluate import Scores, metrics_report, predict_scores
from mlic.engine.label_context import build_label_context
from mlic.engine.optim import build_optimizer, build_scheduler
from mlic.engine.rng import seed_everything
from mlic.engine.sam import SAMStep
from mlic.engine.splits import (Splits, check_split_images, hold_out_validation, load_splits,
                                make_loader, write_held_out)
from mlic.engine.step import OptimizerStep
from mlic.errors import ConfigError, DataError
from mlic.models import MultiLabelClassifier, create_model
from mlic.models.heads import head_uses_label_context
from mlic.predictions import save_predictions
from mlic.run_folder import HELD_OUT_LABELS, HELD_OUT_VAL
from mlic.preprocessing import Preprocessing


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but no CUDA device is available")
    return device


@dataclass
class Trainee:
    """What is trained, on what: the model and its loss, the splits and their loaders, the device."""

    config: dict[str, Any]
    device: torch.device
    splits: Splits
    train_loader: DataLoader
    val_loader: DataLoader | None
    model: MultiLabelClassifier
    train_model: nn.Module   # what the steps call: ``model`` in DDP (distributed) or compiled
    loss_fn: nn.Module
    channels_last: bool
    failure_log: Path        # images that fail to load mid-run (data.on_bad_image=skip), one a line
    skipped_up_front: int    # training images left out by the check before training
    progress: bool

    @property
    def label_names(self) -> list[str]:
        return self.splits.label_names

    def new_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """A fresh optimizer over the model's parameter groups (train.*), at ``lr``."""
        return build_optimizer(self.model, {**self.config["train"], "lr": lr})

    def plain_step(self, optimizer: torch.optim.Optimizer) -> OptimizerStep:
        """A plain optimizer step (no SAM) on the model and loss, as train.* configures it."""
        cfg = self.config["train"]
        return OptimizerStep(self.model, self.loss_fn, optimizer, self.device, amp=cfg["amp"],
                             grad_clip=cfg["grad_clip"], accumulate=cfg["accumulate"],
                             grad_clip_scope=cfg["grad_clip_scope"])

    def eval_loader(self, table: LabelTable, preprocessing: Preprocessing | None = None) -> DataLoader:
        return eval_loader(self.config, table, preprocessing or self.model.preprocessing,
                           self.failure_log)

    def evaluate(self, model: MultiLabelClassifier, loader: DataLoader, desc: str,
                 predictions: Path | None = None) -> dict[str, Any]:
        """The metrics report of ``model`` over the whole split (every rank gets it); with
        ``predictions``, rank 0 also saves the scores there (``mlic.predictions``)."""
        scores = self.score(model, loader, desc)
        report = None
        if distributed.is_main():
            table = loader.dataset.table if predictions is not None else None
            report = self.report(scores, table, predictions)
        return distributed.broadcast_object(report)

    def score(self, model: MultiLabelClassifier, loader: DataLoader, desc: str) -> Scores | None:
        """The scores of ``model`` over the whole split on rank 0 (None on the other ranks)."""
        scores = predict_scores(model, loader, self.device, self.config["train"]["amp"],
                                self.channels_last, desc, self.progress)
        # Under DDP each rank scored its share: the metrics are computed once, over the whole split.
        gathered = Scores(*(distributed.gather_rows(a) for a in scores))
        return gathered if distributed.is_main() else None

    def report(self, scores: Scores, table: LabelTable | None, predictions: Path | None = None,
               rule: tuple[Any, int] | None = None) -> dict[str, Any]:
        """The metrics report of ``scores`` (mAP, model selection and early stopping rank the
        logits); with ``rule`` (thresholds, min_labels), also what the model's decisions give."""
        report = metrics_report(scores.probabilities, scores.targets, self.label_names,
                                self.config["eval"]["threshold"],
                                self.config["eval"]["empty_classes"], ranking=scores.logits,
                                tuned_thresholds=None if rule is None or np.ndim(rule[0]) == 0
                                else np.asarray(rule[0]))
        if rule is not None:
            report["decisions"] = decisions_block(scores.probabilities, scores.targets, *rule)
        if predictions is not None:  # the report's gallery and curves read them
            save_predictions(predictions, [str(table.image_path(i)) for i in range(len(table))],
                             self.label_names, scores.probabilities, scores.targets)
        return report

    def validation_map(self, model: MultiLabelClassifier) -> float:
        """The validation mAP of ``model`` (the lr search's evaluation)."""
        return float(self.evaluate(model, self.val_loader, "val")["mAP"])


@dataclass
class RunParts:
    """A trainee equipped to train: the optimizer, its schedule (stepped per step) and the step."""

    trainee: Trainee
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: OptimizerStep | SAMStep


def build_trainee(config: dict[str, Any], run_dir: Path, log: logging.Logger, progress: bool = True,
                  resume: bool = False) -> Trainee:
    """Seed, read and check the splits, build model and loss, and the loaders (in that order: the
    order the random numbers are drawn in)."""
    data, train_cfg = config["data"], config["train"]
    seed_everything(int(config["seed"]))
    device = distributed.process_device(resolve_device(config["device"]))
    splits = load_splits(data, int(config["seed"]))
    for note in splits.notes:
        log.info(f"note: {note}")
    report = run_dir / "bad_images.txt"
    if distributed.is_main():  # the list of this start's check (a resume checks again)
        report.unlink(missing_ok=True)
    skipped = check_split_images(splits, data, log, report if distributed.is_main() else None,
                                 progress)
    held_out = hold_out_validation(splits, data, int(config["seed"]))
    if held_out:
        log.info(f"note: {held_out}")
    if splits.held_out and distributed.is_main():  # eval and tune-thresholds find it in the run
        try:
            write_held_out(splits.val, run_dir / HELD_OUT_VAL, run_dir / HELD_OUT_LABELS)
        except DataError as e:  # a label name with "|" has no plain-CSV form; training goes on
            log.info(f"note: the held-out validation split is not saved ({e})")

    m, loss = config["model"], config["loss"]
    loss_params = dict(loss["params"] or {})
    head_params, context = _label_context(splits, m, log)
    head_params = head_params_for_loss(loss["name"], loss_params, m["head"], head_params)
    model = create_model(
        m["backbone"], len(splits.label_names), head=m["head"],
        pretrained=bool(m["pretrained"]) and not resume, weights=None if resume else m["weights"],
        image_size=data["image_size"], drop_rate=m["drop_rate"], head_params=head_params,
        label_context=context, log=log.info)
    model.to(device)
    channels_last = bool(train_cfg["channels_last"])
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = distributed.prepare_model(model, device, train_cfg["sync_bn"], train_cfg["compile"],
                                            log, frozen_at_times=train_cfg["head_warmup_epochs"] > 0)
    failure_log = run_dir / "unreadable_images.txt"
    train_loader = make_loader(
        splits.train, train_transform(model.preprocessing, data["augment"]),
        distributed.per_process_batch(train_cfg["batch_size"]), data["num_workers"], shuffle=True,
        drop_last=len(splits.train) > train_cfg["batch_size"], seed=config["seed"],
        sampler=distributed.train_sampler(len(splits.train), int(config["seed"]) * 100_003),
        on_bad=data["on_bad_image"], failure_log=failure_log, max_pixels=data["max_image_pixels"])
    val_loader = None
    if splits.val is not None:
        val_loader = eval_loader(config, splits.val, model.preprocessing, failure_log)
    loss_fn = build_coupled_loss(loss["name"], loss_params, model.head, m["head"])
    return Trainee(config, device, splits, train_loader, val_loader, model, train_model, loss_fn,
                   channels_last, failure_log, skipped, progress)


def eval_loader(config: Mapping[str, Any], table: LabelTable, preprocessing: Preprocessing,
                failure_log: Path) -> DataLoader:
    """This rank's share of a split (every image once over all ranks; ``evaluate`` gathers)."""
    batch = distributed.per_process_batch(config["eval"]["batch_size"], "eval.batch_size")
    return make_loader(table, eval_transform(preprocessing), batch, config["data"]["num_workers"],
                       False, sampler=distributed.eval_sampler(len(table)),
                       on_bad=config["data"]["on_bad_image"], failure_log=failure_log,
                       max_pixels=config["data"]["max_image_pixels"])


def equip(trainee: Trainee, lr: float) -> RunParts:
    """The optimizer at ``lr`` (times each group's ``lr_scale``), its schedule, and the step."""
    cfg = trainee.config["train"]
    optimizer = trainee.new_optimizer(lr)
    scheduler = build_scheduler(optimizer, cfg, len(trainee.train_loader))
    if cfg["sam"]:
        step = SAMStep(trainee.train_model, trainee.loss_fn, optimizer, trainee.device,
                       amp=cfg["amp"], grad_clip=cfg["grad_clip"],
                       grad_clip_scope=cfg["grad_clip_scope"], rho=cfg["sam_rho"],
                       adaptive=cfg["sam_adaptive"], accumulate=cfg["accumulate"],
                       perturbation=cfg["sam_perturbation"])
    else:
        step = OptimizerStep(trainee.train_model, trainee.loss_fn, optimizer, trainee.device,
                             amp=cfg["amp"], grad_clip=cfg["grad_clip"],
                             grad_clip_scope=cfg["grad_clip_scope"], accumulate=cfg["accumulate"])
    return RunParts(trainee, optimizer, scheduler, step)


def _label_context(splits: Splits, m: Mapping[str, Any], log: logging.Logger):
    """Label statistics and word embeddings for the heads that use them, from the training split."""
    head_params = dict(m["head_params"] or {})
    if not head_uses_label_context(m["head"]):
        return head_params, None
    source = m["label_embeddings"]
    context = build_label_context(splits.train, splits.label_names, source)
    head_params.setdefault("embedding_dim", int(context.embeddings.shape[1]))
    if source == "learned":
        head_params.setdefault("learned_embeddings", True)
    log.info(f"label graph: {len(splits.label_names)} labels, co-occurrence from "
             f"{len(splits.train)} training images, embeddings: {context.embedding_source}")
    return head_params, context
