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
from mlic.data.dataset import MultiLabelDataset, check_images
from mlic.data.formats import load_table
from mlic.data.table import LabelTable
from mlic.data.transforms import batch_to_device, eval_transform, train_transform
from mlic.engine import checkpoint as ckpt
from mlic.engine.evaluate import format_report, metrics_report, predict_scores
from mlic.engine.optim import build_optimizer, build_scheduler
from mlic.engine.run_dir import (append_metrics, close_logger, new_run_dir, run_logger,
                                 truncate_metrics)
from mlic.engine.label_mask import reveal, sample_revealed
from mlic.engine.early_stopping import EarlyStopping, onecycle_warmup_finished
from mlic.engine.sam import SAMStep
from mlic.engine.step import OptimizerStep
from mlic.errors import ConfigError, MlicError
from mlic.losses import build_loss
from mlic.models import MultiLabelClassifier, create_model
from mlic.models.heads import HEADS, head_uses_label_context
from mlic.models.heads.cosine import cosine_scale


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
                drop_last: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(MultiLabelDataset(table, transform), batch_size=batch_size, shuffle=shuffle,
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
        self.config, self.run_dir, self.progress = config, run_dir, progress
        self.log = run_logger(run_dir, quiet)
        data, train_cfg = config["data"], config["train"]
        seed_everything(int(config["seed"]))
        self.device = resolve_device(config["device"])

        self.splits = load_splits(data, int(config["seed"]))
        self.label_names = self.splits.label_names
        for note in self.splits.notes:
            self.log.info(f"note: {note}")
        for key in ("train", "val", "test"):
            table = getattr(self.splits, key)
            if table is not None:
                self.log.info(f"{key}: {table.summary()}  [{table.source}]")
                check_images(table, data["check_images"], progress)

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
            label_context=context)
        self.model.to(self.device)
        self.channels_last = bool(train_cfg["channels_last"])
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        pre = self.model.preprocessing
        self.train_loader = make_loader(self.splits.train, train_transform(pre, data["augment"]),
                                        train_cfg["batch_size"], data["num_workers"], shuffle=True,
                                        drop_last=len(self.splits.train) > train_cfg["batch_size"],
                                        seed=config["seed"])
        self.val_loader = None
        if self.splits.val is not None:
            self.val_loader = make_loader(self.splits.val, eval_transform(pre),
                                          config["eval"]["batch_size"], data["num_workers"], False)

        self.loss_fn = build_loss(config["loss"]["name"], **loss_params)
        self._sync_loss_scale(loss_params)
        # train.lr "auto": a placeholder until estimate_lr() (run by fit()) finds the lr.
        self.lr_auto = train_cfg["lr"] == "auto"
        optim_cfg = {**train_cfg, "lr": 1e-3} if self.lr_auto else train_cfg
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, optim_cfg, len(self.train_loader))
        if train_cfg["sam"]:
            self.step = SAMStep(self.model, self.loss_fn, self.optimizer, self.device,
                                amp=train_cfg["amp"], grad_clip=train_cfg["grad_clip"],
                                rho=train_cfg["sam_rho"], adaptive=train_cfg["sam_adaptive"],
                                accumulate=train_cfg["accumulate"])
        else:
            self.step = OptimizerStep(self.model, self.loss_fn, self.optimizer, self.device,
                                      amp=train_cfg["amp"], grad_clip=train_cfg["grad_clip"],
                                      accumulate=train_cfg["accumulate"])
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
        if resume:
            self._restore()

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

    # ----------------------------------------------------------------------------------- state
    def _restore(self) -> None:
        folder = self.run_dir / "checkpoints"
        model, meta = ckpt.load_model(folder, tag="last")
        self.model.load_state_dict(model.state_dict())
        state = ckpt.load_training_state(folder)
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
        truncate_metrics(self.run_dir, self.epoch)
        self.log.info(f"resumed from {folder / 'last.json'}: epoch {self.epoch} done, "
                      f"step {self.global_step}, best mAP {self.best:.4f}")

    def _save_last(self, metrics: dict[str, Any]) -> None:
        folder = self.run_dir / "checkpoints"
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step.state_dict(), "rng": rng_state(), "epoch": self.epoch,
                 "global_step": self.global_step, "best": self.best,
                 "ema": self.ema.module.state_dict() if self.ema is not None else None,
                 "early_stopping": self.stopper.state_dict() if self.stopper is not None else None}
        # Weights and state first, the JSON last: a checkpoint is complete when its JSON exists.
        ckpt.save_training_state(folder, state)
        ckpt.save_model(folder, "last", self.model.state_dict(),
                        self.metadata(epoch=self.epoch, metrics=metrics))

    def metadata(self, **extra: Any) -> dict[str, Any]:
        return ckpt.model_metadata(self.model, self.label_names,
                                   thresholds=self.config["eval"]["threshold"], **extra)

    # ------------------------------------------------------------------------------------ loop
    def train_one_epoch(self) -> tuple[float, int]:
        self.model.train()
        # Seeding per epoch makes the order and augmentation of epoch e the same after a resume.
        seed = int(self.config["seed"]) * 100_003 + self.epoch
        self.train_loader.generator.manual_seed(seed)
        random.seed(seed)
        total, count, skipped = 0.0, 0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.config['train']['epochs']}",
                   disable=not self.progress, leave=False, mininterval=1.0)
        for images, targets in bar:
            images = batch_to_device(images, self.device, self.channels_last)
            targets = targets.to(self.device, non_blocking=True)
            label_states = None
            if self.label_mask > 0:  # C-Tran: some labels are told, the loss is on the others
                label_states, targets = reveal(targets, sample_revealed(targets, self.label_mask))
            loss, stepped = self.step(images, targets, label_states)
            if not math.isfinite(loss):
                raise MlicError(f"the loss became {loss} at epoch {self.epoch + 1}, step "
                                f"{self.global_step + 1}; the last good checkpoint is kept in "
                                f"{self.run_dir / 'checkpoints'}. Lower train.lr or check the data.")
            skipped += not stepped
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            self.global_step += 1
            total, count = total + loss, count + 1
            if count % self.config["train"]["log_every"] == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1), skipped

    def evaluate(self, model: MultiLabelClassifier, loader, desc: str) -> dict[str, Any]:
        scores, targets = predict_scores(model, loader, self.device, self.config["train"]["amp"],
                                         self.channels_last, desc, self.progress)
        return metrics_report(scores, targets, self.label_names, self.config["eval"]["threshold"],
                              self.config["eval"]["empty_classes"])

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
        try:
            while self.epoch < epochs and not (self.stopper is not None and self.stopper.stopped):
                start = time.time()
                loss, skipped = self.train_one_epoch()
                self.epoch += 1
                row = {"epoch": self.epoch, "steps": self.global_step, "train_loss": loss,
                       "lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": skipped}
                self._select(row)
                row["seconds"] = round(time.time() - start, 1)
                append_metrics(self.run_dir, row)
                self._save_last({k: row[k] for k in ("train_loss", "val_mAP", "val_mAP_ema")
                                 if row.get(k) is not None})
                val = "" if row.get("val_mAP") is None else f"  val mAP {100 * row['val_mAP']:.2f}" + (
                    f" (EMA {100 * row['val_mAP_ema']:.2f})" if row.get("val_mAP_ema") is not None else "")
                self.log.info(f"epoch {self.epoch}/{epochs}  loss {loss:.4f}{val}  {row['seconds']:.0f}s")
                if on_epoch_end is not None and on_epoch_end(self.epoch, dict(row)):
                    self.log.info(f"stopped after epoch {self.epoch} by on_epoch_end")
                    break
                if self.stopper is not None and self.stopper.stopped:
                    self.log.info(f"early stop after epoch {self.epoch}: validation mAP has not beaten "
                                  f"its smoothed value ({self.stopper.smooth:.4f}) for "
                                  f"{self.stopper.wait} epochs after the warm-up")
        except KeyboardInterrupt:
            self.log.info(f"interrupted: the last complete epoch ({self.epoch}) is saved in "
                          f"{self.run_dir / 'checkpoints'}; continue with "
                          f"`mlic train --resume {self.run_dir}`")
            raise
        self.finish()
        return self.run_dir

    def _select(self, row: dict[str, Any]) -> None:
        """Evaluate model and EMA; save the better as ``best`` if it is at least as good as before.

        Without a validation split, the latest weights (the EMA's if EMA is on) are ``best``.
        """
        folder = self.run_dir / "checkpoints"
        candidates = {"model": self.model}
        if self.ema is not None:
            candidates["ema"] = self.ema.module
        if self.val_loader is None:
            chosen = "ema" if self.ema is not None else "model"
            row["selected"] = chosen
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
            ckpt.save_model(folder, "best", candidates[chosen].state_dict(),
                            self.metadata(epoch=self.epoch, selected=chosen, val_mAP=scores[chosen]))
        row["best_mAP"] = self.best

    def finish(self) -> None:
        """Evaluate the selected weights on the validation and test splits and write the reports."""
        model, _ = ckpt.load_model(self.run_dir / "checkpoints", tag="best")
        model.to(self.device)
        pre = model.preprocessing
        for key in ("val", "test"):
            table = getattr(self.splits, key)
            if table is None:
                continue
            loader = make_loader(table, eval_transform(pre), self.config["eval"]["batch_size"],
                                 self.config["data"]["num_workers"], False)
            report = self.evaluate(model, loader, f"{key} (best)")
            ckpt.write_json(self.run_dir / f"eval_{key}.json", report)
            self.log.info(f"{key} split, selected weights:\n{format_report(report)}")
        self.log.info(f"done: {self.run_dir}")
        close_logger(self.log)


def train(config: Mapping[str, Any] | str | Path | None = None, overrides: Iterable[str] = (),
          resume: str | Path | None = None, progress: bool = True, quiet: bool = False,
          on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None) -> Path:
    """Train from a config (a dict, a YAML path, or None for defaults + overrides); returns the run folder.

    ``resume``: a run folder whose ``checkpoints/last.*`` training continues from, with its config.
    ``on_epoch_end``: see ``Trainer.fit``.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", overrides)
        _check_resume_overrides(load_config(run_dir / "config.yaml"), cfg)
        if not (run_dir / "checkpoints" / "last.json").is_file():
            raise MlicError(f"{run_dir}: no complete checkpoint to resume from yet "
                            f"(checkpoints/last.json is missing); start the run again")
        return Trainer(cfg, run_dir, resume=True, progress=progress, quiet=quiet).fit(on_epoch_end)
    if isinstance(config, Mapping):
        cfg = load_config(None, overrides, base=_with_defaults(config))
    else:
        cfg = load_config(config, overrides)
    run_dir = new_run_dir(cfg["output_dir"], cfg.get("name"))
    save_config(cfg, run_dir / "config.yaml")
    return Trainer(cfg, run_dir, progress=progress, quiet=quiet).fit(on_epoch_end)


# What the saved optimizer, schedule and weights were built for: a resume cannot change these
# (e.g. more epochs would step OneCycle past its end; another optimizer cannot take the state).
RESUME_FIXED = ("model", "data.classes", "data.image_size", "train.epochs", "train.batch_size",
                "train.optimizer", "train.no_bias_decay", "train.double_bias_lr", "train.scheduler",
                "train.pct_start",
                "train.div_factor", "train.final_div_factor")


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
