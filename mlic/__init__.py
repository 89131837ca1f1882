"""mlic: multi-label image classification, from annotations to a model on a CPU.

    import mlic
    run = mlic.train("configs/voc_effv2s_linear.yaml", ["data.train.path=/data/VOC2007"])
    predictor = mlic.Predictor.load(run)
    predictor.predict(["dog.jpg"])

The names below are imported on first use: ``import mlic`` (and so ``mlic --help``) does not load
torch, timm and the rest until something needs them.
"""
from importlib import import_module
from typing import Any

from mlic.version import __version__

# Where each public name lives.
_API = {"LabelTable": "mlic.data", "load_table": "mlic.data", "train": "mlic.engine",
        "evaluate": "mlic.evaluation", "Predictor": "mlic.inference", "build_loss": "mlic.losses",
        "create_model": "mlic.models", "write_report": "mlic.report"}

__all__ = ["LabelTable", "Predictor", "build_loss", "create_model", "evaluate", "load_table",
           "train", "write_report", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mlic' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
