"""Configuration: defaults, YAML files, dotted command-line overrides, and checks.

A config is a nested dict. ``DEFAULTS`` below is the schema: every key a user may set exists
there, and its default's type is the type the key must have. A key that is not in the schema is an
error with the nearest valid key suggested, so a typo never silently falls back to a default.
The defaults are the paper's recipe (the released COCO configuration, openvinotoolkit/deep-object-reid
branch multilabel, configs/EfficientNetV2_small_mld.yml; docs/training.md): EfficientNetV2-S
at 448 px, cosine ML-Decoder, AAM loss, SAM around SGD with doubled bias lr and no bias decay,
OneCycle, EMA, early stopping, RandAugment + Cutout + flip. Files under configs/ override them.
A few sections hold free-form mappings (``data.train`` and friends, ``loss.params``,
``model.head_params``): their contents are checked by whoever consumes them.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mlic.errors import ConfigError, did_you_mean

# Keys whose value is a free mapping (or a path): not checked against the schema here.
FREE_KEYS = {"data.train", "data.val", "data.test", "loss.params", "model.head_params",
             "data.classes"}

DEFAULTS: dict[str, Any] = {
    "name": None,            # run folder name; default: <config stem>-<timestamp>
    "output_dir": "runs",    # parent of run folders
    "seed": 0,
    "device": "auto",        # auto | cpu | cuda | cuda:N
    "data": {
        "train": None,       # split spec: path, or {format, path, root, ...options}
        "val": None,         # used for model selection (model vs EMA); optional
        # Without data.val, this share of the training images (drawn with the seed) is held out
        # as the validation split: weights selection, early stopping, decision thresholds. 0: none.
        "val_fraction": 0.1,
        "test": None,        # evaluated once at the end with the selected weights; optional
        "classes": None,     # label order: list or file; default: the training table's
        "image_size": 448,
        # Images with more pixels are refused from their header, before decoding (a compressed
        # file of a few hundred KB can decode to gigabytes: a decompression bomb). 128 MP holds
        # the largest common camera frames (102 MP) and four 8K frames, while the model sees
        # image_size^2 (0.2 MP at 448); raise it for larger real images.
        "max_image_pixels": 128_000_000,
        "hide_fraction": 0.0,  # hide this share of the training labels (-1): simulated partial labels
        "num_workers": 2,
        # What is checked before training: decode (every file read, in parallel) | exists | none
        "check_images": "decode",
        # error: stop with the list of bad images (file and reason) | skip: train on the rest
        "on_bad_image": "error",
        "augment": {
            "hflip": True,   # off for data where left/right is a label (the emoji benchmark)
            "shift": 0,      # random translation, in pixels, up to this much
            # "reference": the reference code's RandAugment (2 ops, each with p 0.5, magnitude
            # uniform over the range), rebuilt from timm's ops; or a timm string such as
            # "rand-m9-n2-mstd0.5" (magnitude ~ N(9, 0.5): stronger); null = off. docs/training.md
            "randaugment": "reference",
            "cutout": 0.4,   # side of the cutout square as a fraction of the image; 0 = off
            "cutout_p": 0.5,
        },
    },
    "model": {
        "backbone": "tf_efficientnetv2_s.in21k",
        "head": "ml_decoder",  # linear | ml_decoder | label_graph | ml_gcn | query2label
        "pretrained": True,   # offline package weights if they exist, else timm's hub
        "weights": None,      # a local .safetensors / .pth file for the backbone
        "drop_rate": 0.0,
        "head_params": {},    # cosine is switched on for the am/aam losses unless set here
        # Word vectors of the label names, for the label-graph heads (label_graph, ml_gcn):
        # minilm (offline package) | glove:/path/to/glove.txt | onehot | learned
        "label_embeddings": "minilm",
    },
    "loss": {
        "name": "aam",        # bce | asl | am | aam
        "params": {},         # the loss's own defaults (aam: s 23, k 0.7, gamma_neg 1)
    },
    "train": {
        "epochs": 60,
        "batch_size": 84,        # global: torchrun's N processes take batch_size / N each
        "optimizer": "sgd",     # adamw | sgd | adam
        "lr": 0.007,            # or "auto": estimated before training (lr_finder section)
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "no_bias_decay": True,  # no weight decay on biases and norm weights
        "scheduler": "onecycle",  # onecycle | cosine | constant
        "pct_start": 0.2,
        "div_factor": 100.0,
        "final_div_factor": 1000.0,
        "ema": 0.9997,          # EMA decay per step; 0 = off
        "sam": True,            # sharpness-aware minimisation around the optimizer (2 passes/step)
        "sam_rho": 0.05,
        "sam_adaptive": False,  # ASAM: perturbation scaled by |w|
        # Under DDP: SAM's perturbation from the all-reduced gradient (global, = the single-process
        # run) or from each process's own (local, no_sync); docs/distributed.md
        "sam_perturbation": "global",
        "double_bias_lr": True,  # biases at 2x lr (the paper's recipe, Caffe style)
        # lr of the head's parameters relative to the backbone's (ML-GCN trains its graph head at
        # 10x the backbone's lr); 1 = one lr for all, as the paper's recipe
        "head_lr_scale": 1.0,
        # Train the head alone (backbone frozen) for this many epochs first (fractions allowed),
        # then everything: a fresh head's first large gradients do not reach pretrained features.
        # 0 = off, the paper's recipe. docs/training.md, "Head warm-up".
        "head_warmup_epochs": 0.0,
        # Label-mask training for heads that take known labels (C-Tran): reveal up to this share of
        # each image's labels to the model and score the rest; 0 = off. Other heads ignore it.
        "label_mask": 0.75,
        "accumulate": 1,        # split each batch into this many chunks (same result, less memory)
        "early_stopping": True,  # the paper's heuristic on the validation mAP (needs data.val)
        "patience": 5,
        "es_smoothing": 0.8,
        "amp": True,            # mixed precision on CUDA; ignored on CPU
        # Largest gradient norm (0 = no clipping). Not in the reference: a fresh ML-Decoder trained
        # by SGD on the summed loss collapses in its first steps without it (docs/training.md,
        # "The decoder collapse"); later in a run the gradient is smaller and clipping stops acting.
        "grad_clip": 10.0,
        # parts: the backbone's and the head's gradients clipped apart (a fresh decoder's gradient
        # would otherwise take the whole norm: mlic.engine.clipping) | model: one global norm.
        "grad_clip_scope": "parts",
        # Mixed precision (fp16): steps in a row skipped for an inf/nan loss or gradient before the
        # run stops; without a gradient scaler the first non-finite loss stops it.
        "max_skipped_steps": 20,
        "log_every": 20,
        "channels_last": False,
        "compile": False,       # torch.compile the training forward/backward
        "sync_bn": False,       # SyncBatchNorm across processes in a distributed run (GPUs)
        # Experiment tracking besides metrics.csv and steps.csv (always written): any of
        # tensorboard, mlflow (pip install 'mlic[tracking]'); rank 0 only; a logger's failure is a
        # warning, never the run's (mlic/tracking.py, docs/seeing.md)
        "loggers": [],
    },
    "lr_finder": {               # used when train.lr is "auto", and by `mlic lr-find`
        "method": "range",       # range: LR range test | trials: short constant-lr runs, TPE
        "min_lr": 1e-6,
        "max_lr": 1.0,
        "steps": 100,            # range: sweep points (batches; the loader restarts if needed)
        "smoothing": 0.05,       # range: weight of the newest loss in the smoothed curve
        "n_trials": 15,          # trials: number of trials
        "epochs_per_trial": 1,   # trials: epochs per trial (the reference: 10)
        "timeout": None,         # trials: seconds for the whole search; null = no limit
    },
    "eval": {
        "batch_size": 128,       # global, like train.batch_size
        "threshold": 0.5,
        "empty_classes": "skip",  # skip | zero: classes without positives in mAP
        # At the end of training, choose the decision rule (per-class thresholds) on the
        # validation split's scores and store it with the model (mlic/engine/decision_rule.py).
        "tune_thresholds": True,
        "min_labels": 1,  # the rule's floor of labels per image (0: an image may get none)
    },
}

CHOICES = {
    "device": None,
    "data.check_images": ("decode", "exists", "none"),
    "data.on_bad_image": ("error", "skip"),
    "train.optimizer": ("adamw", "sgd", "adam"),
    "train.scheduler": ("onecycle", "cosine", "constant"),
    "train.sam_perturbation": ("global", "local"),
    "train.grad_clip_scope": ("parts", "model"),
    "lr_finder.method": ("range", "trials"),
    "eval.empty_classes": ("skip", "zero"),
}

LIST_CHOICES = {"train.loggers": ("tensorboard", "mlflow")}  # lists whose items are choices

POSITIVE = {"train.epochs", "train.batch_size", "train.lr", "data.image_size", "eval.batch_size",
            "data.max_image_pixels",
            "train.accumulate", "train.patience", "train.head_lr_scale",
            "train.pct_start", "train.div_factor", "train.final_div_factor", "train.log_every",
            "lr_finder.min_lr", "lr_finder.max_lr", "lr_finder.steps", "lr_finder.n_trials",
            "lr_finder.epochs_per_trial", "lr_finder.smoothing"}
NON_NEGATIVE = {"train.head_warmup_epochs", "eval.min_labels", "train.max_skipped_steps", "train.weight_decay", "train.momentum", "train.ema", "train.grad_clip", "train.sam_rho",
                "data.num_workers", "data.augment.shift", "data.augment.cutout"}
AUTO_KEYS = {"train.lr"}  # may also be the string "auto"
# Upper bounds, each with why: past them a value is a typo that would exhaust memory or overflow.
MAXIMUM = {
    "data.image_size": (8192, "an 8K frame's width; one 8192 px input is 0.8 GB as float32 "
                              "before the first layer"),
    "data.num_workers": (512, "loader processes; more than any machine has cores"),
    "data.max_image_pixels": (2_000_000_000, "2 gigapixels decode to 8 GB or more"),
    "train.lr": (100, "no optimizer mlic has trains at steps that large"),
    "lr_finder.min_lr": (100, "no optimizer mlic has trains at steps that large"),
    "lr_finder.max_lr": (100, "no optimizer mlic has trains at steps that large"),
}
# Every other count: 2^31 - 1 is far past a year-long run (epochs, steps) and is what torch's
# 32-bit sizes hold.
MAX_INT = (2**31 - 1, "counts this large are typos")
# A config with more values than this, YAML aliases expanded, is refused: aliases of aliases
# (a "billion laughs" document) would otherwise expand exponentially when config.yaml is written.
MAX_VALUES = 1_000_000
MAX_DEPTH = 64
UNIT_INTERVAL = {"data.val_fraction", "eval.threshold", "data.hide_fraction", "train.label_mask", "train.ema", "train.pct_start", "data.augment.cutout",
                 "train.es_smoothing",
                 "data.augment.cutout_p", "train.momentum", "model.drop_rate", "lr_finder.smoothing"}


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-4`` as a number: YAML 1.1 wants a dot (``1.0e-4``) and
    would otherwise hand over the string '1e-4' for a learning rate."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_value(text: str) -> Any:
    """A command-line override's value, read as YAML (numbers, true/false, null, lists, maps)."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError:
        return text  # e.g. a path with a colon: the string as typed
    except RecursionError:
        raise ConfigError(f"override value nested deeper than Python can read: "
                          f"{text[:40]}...") from None


def default_config() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A partial config (a dict, as ``mlic.train`` takes one) merged over the defaults, unchecked."""
    base = default_config()
    merge(base, config, where="config")
    return base


def load_config(path: str | Path | None = None,
                overrides: Iterable[str] | Mapping[str, Any] = (),
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file (if any), then the overrides; checked. ``overrides``:
    ``key.sub=value`` strings (values read as YAML) or a mapping ``{"key.sub": value}``."""
    config = copy.deepcopy(dict(base)) if base is not None else default_config()
    if path is not None:
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.load(f, Loader=ConfigLoader) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested deeper than Python can read") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(loaded).__name__}")
        merge(config, loaded, where=str(path))
        if config.get("name") is None:
            config["name"] = path.stem
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_dotted(config, str(key).strip(), value)
        overrides = ()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        set_dotted(config, key.strip(), parse_value(raw) if raw.strip() else None)
    check(config)
    return config


def merge(config: dict, update: Mapping, where: str = "config", prefix: str = "") -> None:
    """Merge ``update`` into ``config`` in place, refusing keys the schema does not know."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in config:
            raise ConfigError(f"{where}: unknown key '{dotted}'{_suggest(dotted, config, prefix)}")
        if isinstance(config[key], dict) and dotted not in FREE_KEYS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: '{dotted}' must be a mapping of keys, got {value!r}")
            merge(config[key], value, where, prefix=f"{dotted}.")
        else:
            config[key] = value


def set_dotted(config: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts[:-1]):
        dotted = ".".join(parts[:depth + 1])
        if dotted in FREE_KEYS:  # e.g. data.train.root=/data: into a free mapping
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else {"path": node[part]}
            node = node[part]
            for sub in parts[depth + 1:-1]:
                node = node.setdefault(sub, {})
            node[parts[-1]] = value
            return
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown key '{key}'{_suggest(key, config)}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"unknown key '{key}'{_suggest(key, config)}")
    if isinstance(node[parts[-1]], dict) and key not in FREE_KEYS:
        raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. '{key}.{next(iter(node[parts[-1]]))}'")
    node[parts[-1]] = value


def _all_keys(config: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict) and dotted not in FREE_KEYS:
            keys += _all_keys(value, f"{dotted}.")
    return keys


def _suggest(key: str, config: Mapping, prefix: str = "") -> str:
    candidates = _all_keys(DEFAULTS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # compare the last part only: 'trian.lr' vs 'train.lr' is caught above
        last = key.rsplit(".", 1)[-1]
        by_last = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.7)]
    return f"; did you mean '{close[0]}'?" if close else ""


def _walk(config: Mapping, schema: Mapping, prefix: str = ""):
    for key, default in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(default, dict) and dotted not in FREE_KEYS:
            yield from _walk(config[key], default, f"{dotted}.")
        else:
            yield dotted, config[key], default


def check(config: Mapping[str, Any]) -> None:
    """Types and ranges of every schema key; raises one ConfigError naming the key."""
    check_size(config)
    for key, value, default in _walk(config, DEFAULTS):
        if value is None or default is None or key in FREE_KEYS:
            continue
        if key in AUTO_KEYS and value == "auto":
            continue
        expected = type(default)
        # An int is a fine float (lr=1, threshold=0); it still goes through the range checks below.
        int_for_float = expected is float and isinstance(value, int) and not isinstance(value, bool)
        if not int_for_float and (not isinstance(value, expected)
                                  or (expected is int and isinstance(value, bool))):
            raise ConfigError(f"'{key}' must be {expected.__name__}, got {value!r}")
        if key in CHOICES and CHOICES[key] and value not in CHOICES[key]:
            raise ConfigError(f"'{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if key in LIST_CHOICES and (bad := [v for v in value if v not in LIST_CHOICES[key]]):
            raise ConfigError(f"'{key}' takes a list of {', '.join(LIST_CHOICES[key])}; "
                              f"{bad[0]!r} is not one{did_you_mean(bad[0], LIST_CHOICES[key])}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
        limit, why = MAXIMUM.get(key, MAX_INT if expected is int else (None, ""))
        if limit is not None and value > limit:
            raise ConfigError(f"'{key}' must be <= {limit:,}, got {value!r} ({why})")
        if key in POSITIVE and value <= 0:
            raise ConfigError(f"'{key}' must be > 0, got {value!r}")
        if key in NON_NEGATIVE and value < 0:
            raise ConfigError(f"'{key}' must be >= 0, got {value!r}")
        if key in UNIT_INTERVAL and not 0 <= value <= 1:
            raise ConfigError(f"'{key}' must be in [0, 1], got {value!r}")
    check_backbone(config["model"]["backbone"])
    check_components(config)


def check_size(config: Mapping[str, Any]) -> None:
    """At most MAX_VALUES values (aliases counted as often as they are used) and MAX_DEPTH levels.
    Counting stops at the bound, so a document that would expand to billions costs no more."""
    count, stack = 0, [(config, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"the config holds more than {MAX_VALUES:,} values once YAML aliases "
                              f"are expanded (aliases of aliases?); refused, as writing it out "
                              f"would take memory without end")
        if depth > MAX_DEPTH:
            raise ConfigError(f"the config is nested more than {MAX_DEPTH} levels deep")
        children = node.values() if isinstance(node, Mapping) else \
            node if isinstance(node, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children)


def check_backbone(name: Any) -> None:
    """A timm model name, not a path or a hub id: timm would read those as a local folder or a
    download, which an exported model or a resume could not find again."""
    if isinstance(name, str) and (not name.strip() or any(c in name for c in "/\\:")):
        raise ConfigError(f"'model.backbone' must be a timm model name such as "
                          f"'tf_efficientnetv2_s.in21k', got {name!r}; for local weights set "
                          f"model.weights=FILE")


# Ranges of head parameters by name (every integer head parameter is a count or a width: >= 1).
HEAD_PARAM_RANGES = {"scale": (0.0, None), "dropout": (0.0, 1.0), "tau": (0.0, 1.0), "p": (0.0, 1.0)}


def check_components(config: Mapping[str, Any]) -> None:
    """``model.head``, ``model.head_params``, ``loss.name`` and ``loss.params`` against the head's
    and the loss's own parameters (names, types, ranges), before any data is read or model built."""
    import inspect

    from mlic.losses import LOSSES, build_loss, takes_cosine_logits
    from mlic.models.heads import HEAD_SPECS

    head, head_params = config["model"]["head"], config["model"]["head_params"] or {}
    if head not in HEAD_SPECS:
        raise ConfigError(f"'model.head': unknown head {head!r}{did_you_mean(head, HEAD_SPECS)}; "
                          f"available: {', '.join(sorted(HEAD_SPECS))}")
    _check_params("model.head_params", f"head {head!r}", head_params, HEAD_SPECS[head].params,
                  HEAD_PARAM_RANGES)

    name, params = config["loss"]["name"], config["loss"]["params"] or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"'loss.params' must be a mapping of keys, got {params!r}")
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ConfigError(f"'loss.name': unknown loss {name!r}{did_you_mean(key, LOSSES)}; "
                          f"valid losses: {', '.join(sorted(LOSSES))}")
    if takes_cosine_logits(key) and head == "ctran" and "cosine" not in head_params:
        # The default loss is the paper's AAM; C-Tran is trained otherwise. Say so, rather than
        # silently train a cosine C-Tran with AAM and SAM around SGD.
        raise ConfigError(
            f"model.head=ctran with loss.name={key}: C-Tran is trained with BCE on the labels it "
            f"is not told, with Adam (configs/paper/coco_resnet101_ctran.yaml: loss.name=bce, "
            f"train.optimizer=adam, train.lr=1e-5, train.sam=false); to train a cosine C-Tran with "
            f"the angular loss on purpose, set model.head_params.cosine=true")
    accepted = {k: v.default for k, v in inspect.signature(LOSSES[key]).parameters.items()}
    _check_params("loss.params", f"loss {key!r}", params, accepted, {})
    try:  # the loss checks its own ranges (s > 0, margin in [0, 1), ...): build one, cheaply
        build_loss(key, **params)
    except ConfigError as e:
        raise ConfigError(f"'loss.params': {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"'loss.params': a value does not fit loss {key!r} ({e})") from None


def _check_params(section: str, owner: str, params: Any, accepted: Mapping[str, Any],
                  ranges: Mapping[str, tuple[float | None, float | None]]) -> None:
    """Names against ``accepted`` (name -> default), types against the defaults' types; integer
    parameters must be >= 1 (counts and widths), ``ranges`` bounds the others by name."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"'{section}' must be a mapping of keys, got {params!r}")
    for name, value in params.items():
        key = f"{section}.{name}"
        if name not in accepted:
            close = did_you_mean(name, accepted, prefix=f"{section}.")
            raise ConfigError(f"unknown key '{key}'{close}: {owner} takes "
                              f"{', '.join(sorted(accepted)) or 'no parameters'}")
        kind = _kind(accepted[name])
        if value is None or kind is None:
            continue  # no default to compare with (None, or required)
        if _kind(value) != kind and not (kind == "float" and _kind(value) == "int"):
            raise ConfigError(f"'{key}' must be {'a number' if kind == 'float' else kind}, "
                              f"got {value!r}")
        if kind not in ("int", "float"):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
        low, high = (1, None) if kind == "int" else ranges.get(name, (None, None))
        open_low = name == "scale"  # a cosine scale s of 0 gives constant logits
        if low is not None and (value <= low if open_low else value < low):
            raise ConfigError(f"'{key}' must be {'>' if open_low else '>='} {low:g}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"'{key}' must be <= {high:g}, got {value!r}")


def _kind(value: Any) -> str | None:
    for kind, types in (("true or false", bool), ("int", int), ("float", float), ("a string", str)):
        if isinstance(value, types):
            return kind
    return None


def save_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Written to a temporary file and renamed: a crash never leaves half a config.yaml."""
    from mlic.atomic import atomic_write

    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            yaml.safe_dump(to_plain(config), f, sort_keys=False)
    atomic_write(Path(path), write)


def to_plain(value: Any) -> Any:
    """Paths and tuples to YAML-friendly strings and lists."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
