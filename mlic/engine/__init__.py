"""Training and evaluation: the loop (trainer.py) and its separate pieces."""
from mlic.engine.checkpoint import load_model
from mlic.engine.trainer import Trainer, train

__all__ = ["Trainer", "train", "load_model"]
