"""INT8 post-training quantization with NNCF, calibrated on a subset of the training images.

Calibration images go through the evaluation preprocessing (what the deployed model will see),
one image per sample, a fixed random subset (seed 0) so an export is reproducible. Models that
take label states are calibrated with the training distribution of known labels (a random share
of 0-75% of each image's labels revealed, as label-mask training does), so the state embeddings'
ranges are measured too. Heads with attention are quantized as NNCF's ``TRANSFORMER`` model type
(SmoothQuant, softmax and layer norms kept in floating point).

Weights are quantized to 7 bits in every layer by default (NNCF's "overflow fix" for all layers;
its default is the first layer only). x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake)
multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds pairs of products into a
saturating int16: 255 * 127 * 2 overflows, 255 * 63 * 2 does not. On such a CPU (these machines:
AMD EPYC, AVX2) the emoji Lite0 model lost 3.82 mAP points with 8-bit weights after the first layer
and 1.72 with 7-bit weights everywhere (benchmarks/results/inference.md); with 8-bit weights in the
first layer too it lost 39.8. ``overflow_fix="first_layer"`` keeps NNCF's default, for CPUs with
VNNI or AMX, which do not saturate and gain one bit of weight precision (not measured here: no
such CPU). onnxruntime's u8s8 kernels on AVX2 saturate the same way (its own quantizer calls the
remedy ``reduce_range``).

OpenVINO models get NNCF's full bias correction rather than the fast one (on the emoji Lite0 model,
before the overflow fix, 3.82 mAP points lost instead of 5.9; 1.72 instead of 2.85 after it).
ONNX models keep the fast one: NNCF 3.4's full bias correction fails on ONNX EfficientNetV2-S
graphs (KeyError on the stem convolution). Also tried on the emoji Lite0 model, without a gain
beyond the spread between calibration subsets (about 1 mAP point): preset MIXED, the classifier or
the depthwise convolutions kept in FP32, min-max / histogram / quantile activation ranges, 1000
calibration images instead of 300.
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
from mlic.errors import ConfigError, DataError
from mlic.models import MultiLabelClassifier

DEFAULT_CALIBRATION_SIZE = 300  # NNCF's default subset size
OVERFLOW_FIX = ("all", "first_layer", "none")  # layers whose weights get 7 bits instead of 8


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


def quantize(graph, samples: list[dict[str, np.ndarray]], model: MultiLabelClassifier,
             overflow_fix: str = "all"):
    """INT8 copy of an ``onnx.ModelProto`` or an ``openvino.Model`` (NNCF picks the backend)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    if overflow_fix not in OVERFLOW_FIX:
        raise ConfigError(f"overflow fix must be one of {', '.join(OVERFLOW_FIX)}, got {overflow_fix!r}")
    fix = {"all": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER,
           "none": OverflowFix.DISABLE}[overflow_fix]
    is_onnx = type(graph).__module__.startswith("onnx")
    return nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples),
                         model_type=nncf_model_type(model), fast_bias_correction=is_onnx,
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix))
