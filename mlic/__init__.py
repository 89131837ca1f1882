"""mlic: multi-label image classification, from annotations to a model on a CPU.

    import mlic
    run = mlic.train("configs/voc_effv2s_linear.yaml", ["data.train.path=/data/VOC2007"])
    predictor = mlic.Predictor.load(run)
    predictor.predict(["dog.jpg"])
"""
__version__ = "0.1.0"

from mlic.data import LabelTable, load_table
from mlic.engine import train
from mlic.evaluation import evaluate
from mlic.inference import Predictor
from mlic.losses import build_loss
from mlic.models import create_model
from mlic.report import write_report

__all__ = ["LabelTable", "Predictor", "build_loss", "create_model", "evaluate", "load_table",
           "train", "write_report", "__version__"]
