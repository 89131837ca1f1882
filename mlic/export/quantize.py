"""INT8 post-training quantization with NNCF, calibrated on a subset of the training images.

Calibration images go through the evaluation preprocessing (what the deployed model will see),
one image per sample, a fixed random subset (seed 0) so an export is reproducible. Models that
take label states are calibrated with the training distribution of known labels (a random share
of 0-75% of each image's labels revealed, as label-mask training does), so the state embeddings'
ranges are measured too. Heads with attention are quantized as NNCF's ``TRANSFORMER`` model type
(SmoothQuant, softmax and layer norms kept in floating point).

OpenVINO models get NNCF's full bias correction rather than the fast one: on the emoji Lite0
model it lost 3.8 mAP points instead of 5.9 (preset MIXED, keeping the classifier or the depthwise
convolutions in FP32 did not help). ONNX models keep the fast one: NNCF 3.4's full bias
correction fails on ONNX EfficientNetV2-S graphs (KeyError on the stem convolution).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from mlic.data.formats import load_table
from mlic.data.images import load_rgb
from mlic.data.transforms import eval_transform
from mlic.engine.label_mask import reveal, sample_revealed
from mlic.errors import DataError
from mlic.models import MultiLabelClassifier

DEFAULT_CALIBRATION_SIZE = 300  # NNCF's default subset size


def calibration_inputs(data: str | Mapping[str, Any], model: MultiLabelClassifier,
                       label_names: list[str], size: int = DEFAULT_CALIBRATION_SIZE,
                       seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Up to ``size`` samples {"images": (1, 3, S, S)[, "label_states": (1, C)]} from ``data``."""
    if size < 1:
        raise DataError(f"the calibration subset needs at least one image, got size {size}")
    table = load_table(data).with_labels(label_names, "negative")
    if len(table) == 0:
        raise DataError("no images to calibrate on", table.source)
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(table), size=min(size, len(table)), replace=False))
    transform = eval_transform(model.preprocessing)
    states = None
    if model.takes_label_states:
        targets = torch.from_numpy(table.targets[indices].astype(np.int64))
        revealed = sample_revealed(targets, 0.75, torch.Generator().manual_seed(seed))
        states = reveal(targets, revealed)[0].numpy().astype(np.float32)
    samples = []
    for k, index in enumerate(indices):
        sample = {"images": transform(load_rgb(table.image_path(index))).unsqueeze(0).numpy()}
        if states is not None:
            sample["label_states"] = states[k:k + 1]
        samples.append(sample)
    return samples


def nncf_model_type(model: MultiLabelClassifier):
    import nncf
    attention = any(isinstance(m, nn.MultiheadAttention) for m in model.head.modules())
    return nncf.ModelType.TRANSFORMER if attention else None


def quantize(graph, samples: list[dict[str, np.ndarray]], model: MultiLabelClassifier):
    """INT8 copy of an ``onnx.ModelProto`` or an ``openvino.Model`` (NNCF picks the backend)."""
    import nncf
    is_onnx = type(graph).__module__.startswith("onnx")
    return nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples),
                         model_type=nncf_model_type(model), fast_bias_correction=is_onnx)
