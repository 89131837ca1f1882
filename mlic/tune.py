"""Hyper-parameter search with Optuna over a training config (``mlic tune``), as the paper's code
(openvinotoolkit/deep-object-reid branch multilabel, ``tools/auxiliary/optuna_optim.py``).

Searched, per trial:

* ``train.lr``: log-uniform over [min_lr, max_lr], rounded to 3 significant digits (the
  reference: a linear grid [1e-3, 0.1] by 1e-3);
* ``loss.params.scale`` (s), int 1..50: only for the angular losses (am, aam); it also sets the
  head's ``scale`` when the config gives one;
* ``data.augment.cutout``: 0.1..1.0 by 0.1;
* ``model.head_params.pooling``: avg | max | avg+max, only for heads that take ``pooling``
  (linear, label_graph without a decoder).

Each trial is a full ``mlic train`` run of the config (its ``train.epochs``) into
``DIR/trials/<number>``. The score is the reference's: (best + last validation mAP) / 2, an
epoch's mAP being the better of the model's and the EMA's; each epoch's mAP goes to a
``MedianPruner(n_startup_trials=5, n_warmup_steps=4, interval_steps=2)`` (the reference's), which
may stop a trial early. A trial whose training fails (loss not finite) scores 0. The sampler is
``TPESampler(n_startup_trials=5)``.

The study lives in ``DIR/study.db`` (SQLite), so ``resume=True`` adds trials to it; trials an
interrupted search left "running" are marked failed then. After every search ``DIR/trials.csv``
lists all trials and ``DIR/best_config.yaml`` is the base config with the best trial's values: a
full config for ``mlic train --config``.
"""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from mlic.config import check, load_config, save_config
from mlic.engine.trainer import Trainer
from mlic.errors import ConfigError, MlicError
from mlic.losses import takes_cosine_logits
from mlic.models.heads import HEAD_SPECS
from mlic.run_folder import checkpoints_of, close_logger

STUDY_NAME = "mlic-tune"
POOLINGS = ("avg", "max", "avg+max")
CSV_COLUMNS = ["number", "state", "value", "lr", "scale", "cutout", "pooling", "best_mAP",
               "last_mAP", "epochs", "seconds", "run_dir", "error"]


def head_takes_pooling(config: Mapping[str, Any]) -> bool:
    spec = HEAD_SPECS.get(config["model"]["head"])
    if spec is None or not spec.takes("pooling"):
        return False
    # A label-graph head feeding an ML-Decoder pools nothing (the decoder attends to the map).
    return not (config["model"].get("head_params") or {}).get("decoder")


def suggest(trial, config: Mapping[str, Any], min_lr: float, max_lr: float) -> dict[str, Any]:
    """This trial's values, by config key."""
    values = {"train.lr": float(f"{trial.suggest_float('lr', min_lr, max_lr, log=True):.3g}")}
    if takes_cosine_logits(config["loss"]["name"]):
        values["loss.params.scale"] = trial.suggest_int("scale", 1, 50)
    values["data.augment.cutout"] = round(trial.suggest_float("cutout", 0.1, 1.0, step=0.1), 1)
    if head_takes_pooling(config):
        values["model.head_params.pooling"] = trial.suggest_categorical("pooling", list(POOLINGS))
    return values


def values_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's Optuna params as config values (the same rounding as ``suggest``)."""
    keys = {"lr": "train.lr", "scale": "loss.params.scale", "cutout": "data.augment.cutout",
            "pooling": "model.head_params.pooling"}
    values = {keys[k]: v for k, v in params.items() if k in keys}
    if "train.lr" in values:
        values["train.lr"] = float(f"{values['train.lr']:.3g}")
    if "data.augment.cutout" in values:
        values["data.augment.cutout"] = round(values["data.augment.cutout"], 1)
    return values


def apply_values(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(config))
    for key, value in values.items():
        if key == "loss.params.scale":
            cfg["loss"]["params"] = {**(cfg["loss"]["params"] or {}), "scale": value}
            head_params = cfg["model"]["head_params"] or {}
            if "scale" in head_params:  # the trainer refuses a head scale other than the loss's
                cfg["model"]["head_params"] = {**head_params, "scale": value}
        elif key == "model.head_params.pooling":
            cfg["model"]["head_params"] = {**(cfg["model"]["head_params"] or {}), "pooling": value}
        else:
            section, name = key.rsplit(".", 1)
            node = cfg
            for part in section.split("."):
                node = node[part]
            node[name] = value
    check(cfg)
    return cfg


def _trial_dir(out: Path, number: int) -> Path:
    path, n = out / "trials" / str(number), 1
    while path.exists():  # a folder left by a study that was deleted: keep it
        n += 1
        path = out / "trials" / f"{number}-{n}"
    checkpoints_of(path).mkdir(parents=True)
    return path


def tune(config: str | Path | None, overrides: Iterable[str] = (), out: str | Path = "tune",
         n_trials: int | None = None, timeout: float | None = None, resume: bool = False,
         min_lr: float = 1e-5, max_lr: float = 0.1, progress: bool = False,
         log: Callable[[str], None] = print):
    """Run (or, with ``resume``, continue) the search; returns the Optuna study.

    ``config``: the training config (YAML path); with ``resume`` it may be None: the base config
    saved in ``out`` at the start is used (``overrides`` still apply).
    """
    import optuna  # here: half a second to import, and only the search needs it

    out = Path(out)
    db = out / "study.db"
    if n_trials is None and timeout is None:
        raise ConfigError("mlic tune: give the number of trials (--trials) and/or a time limit "
                          "(--timeout)")
    if resume and not db.exists():
        raise MlicError(f"{out}: no study to resume (no study.db); start one without --resume")
    if not resume and db.exists():
        raise MlicError(f"{out} already holds a study (study.db): continue it with --resume, or "
                        f"give another --out")
    if config is None and resume:
        config = out / "base_config.yaml"
    if config is None:
        raise ConfigError("mlic tune: give --config FILE")
    base = load_config(config, overrides)
    if base["data"]["val"] is None:
        raise ConfigError("mlic tune scores trials by the validation mAP: set data.val")
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"mlic tune: need 0 < min_lr < max_lr, got {min_lr}, {max_lr}")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(base, out / "base_config.yaml")

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    existing = (optuna.load_study(study_name=STUDY_NAME, storage=storage).trials if resume else [])
    # A sampler seeded as the first session's would repeat its start-up samples.
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, load_if_exists=resume, direction="maximize",
        sampler=optuna.samplers.TPESampler(n_startup_trials=5, seed=int(base["seed"]) + len(existing)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=4, interval_steps=2))
    for stale in existing:
        if stale.state == optuna.trial.TrialState.RUNNING:  # left by an interrupted search
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, base, min_lr, max_lr)
        run_dir = _trial_dir(out, trial.number)
        cfg = apply_values(base, values)
        cfg["output_dir"], cfg["name"] = str(out / "trials"), run_dir.name
        save_config(cfg, run_dir / "config.yaml")
        trial.set_user_attr("run_dir", str(run_dir))
        scores: list[float] = []
        start = time.time()

        def on_epoch_end(epoch: int, row: dict[str, Any]) -> bool:
            score = max(v for v in (row.get("val_mAP"), row.get("val_mAP_ema")) if v is not None)
            scores.append(float(score))
            trial.set_user_attr("best_mAP", max(scores))
            trial.set_user_attr("last_mAP", scores[-1])
            trial.set_user_attr("epochs", epoch)
            trial.report(scores[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")
            return False

        trainer = Trainer(cfg, run_dir, progress=progress, quiet=True)  # config errors abort the study
        try:
            trainer.fit(on_epoch_end)
            value = (max(scores) + scores[-1]) / 2
        except optuna.TrialPruned:
            log(f"trial {trial.number}: {_describe(values)}  pruned after epoch {len(scores)} "
                f"(val mAP {100 * scores[-1]:.2f})")
            raise
        except MlicError as e:  # e.g. the loss became NaN: a bad trial, not a broken search
            trial.set_user_attr("error", str(e).splitlines()[0][:300])
            value = 0.0
        finally:
            trial.set_user_attr("seconds", round(time.time() - start, 1))
            close_logger(trainer.log)
        log(f"trial {trial.number}: {_describe(values)}  score {100 * value:.2f}"
            + (f" (best {100 * max(scores):.2f}, last {100 * scores[-1]:.2f})" if scores else
               f" ({trial.user_attrs.get('error', '')})"))
        return value

    try:
        study.optimize(objective, n_trials=n_trials, timeout=timeout)
    finally:
        optuna.logging.set_verbosity(verbosity)
        write_trials_csv(study, out / "trials.csv")
        best = _best_trial(study)
        if best is not None:
            save_config(apply_values(base, values_of(best.params)), out / "best_config.yaml")
    if best is None:
        raise MlicError(f"mlic tune: no trial completed; see {out / 'trials.csv'}")
    log(f"best: trial {best.number}, score {100 * best.value:.2f}, {_describe(values_of(best.params))}"
        f"\nwritten: {out / 'best_config.yaml'}, {out / 'trials.csv'} (study: {db})")
    return study


def _best_trial(study):
    import optuna
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(done, key=lambda t: t.value) if done else None


def _describe(values: Mapping[str, Any]) -> str:
    return "  ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else
                     f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())


def write_trials_csv(study, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for t in study.trials:
            values = values_of(t.params)
            row = {"number": t.number, "state": t.state.name.lower(),
                   "value": "" if t.value is None or not math.isfinite(t.value) else f"{t.value:.6g}",
                   "lr": values.get("train.lr", ""), "scale": values.get("loss.params.scale", ""),
                   "cutout": values.get("data.augment.cutout", ""),
                   "pooling": values.get("model.head_params.pooling", "")}
            for key in ("best_mAP", "last_mAP", "epochs", "seconds", "run_dir", "error"):
                value = t.user_attrs.get(key, "")
                row[key] = f"{value:.6g}" if isinstance(value, float) else value
            writer.writerow(row)
