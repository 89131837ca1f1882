"""INT8 post-training quantization with NNCF, calibrated on a subset of the training images.

Calibration images go through the evaluation preprocessing (what the deployed model will see),
one image per sample, a fixed random subset (seed 0) so an export is reproducible. Models that
take label states are calibrated with the training distribution of known labels (a random share
of 0-75% of each image's labels revealed, as label-mask training does), so the state embeddings'
ranges are measured too. Heads with attention are quantized as NNCF's ``TRANSFORMER`` model type
(SmoothQuant, softmax and layer norms kept in floating point).

How many bits the weights get depends on the CPU that will run the model. x86 CPUs without VNNI
(AVX2, AVX-512 before Cascade Lake) multiply u8 activations by s8 weights with ``vpmaddubsw``,
which adds pairs of products into a saturating int16: 255 * 127 * 2 overflows, 255 * 63 * 2 does
not. CPUs with VNNI (AVX512-VNNI, AVX-VNNI) or AMX accumulate in int32 and never saturate. NNCF's
"overflow fix" gives 7-bit weights to the first layer ("first_layer", its default) or to every
layer ("all"). ``overflow_fix="auto"`` (mlic's default) picks "first_layer" (8-bit weights) on a
CPU with VNNI or AMX and "all" elsewhere, so the model is exact on CPUs like the one that
exported it; the choice is in the metadata, and loading an 8-bit-weight model on an x86 CPU
without VNNI warns (``Int8WeightsMaySaturate``). Measured on the emoji Lite0 model: on an AVX2 CPU,
8-bit weights after the first layer lost 3.82 mAP points, 7-bit weights everywhere 1.72, no fix at
all 39.8; on an AVX512-VNNI CPU, 8-bit weights lost 0.27 and 7-bit 0.42
(benchmarks/results/inference.md; a diagnostic run on an earlier model, not kept: 0.81 and
1.66-2.13 over three calibration subsets). onnxruntime's u8s8 kernels on AVX2
saturate the same way (its own quantizer calls the remedy ``reduce_range``).

NNCF's full bias correction is used rather than its fast one, which cost the ONNX INT8 emoji Lite0
model 2.99 mAP points against 0.16 with the full one (the same on onnxruntime and on OpenVINO
running that file; OpenVINO IR, before the overflow fix: 3.82 against 5.9). NNCF 3.4's full
bias correction fails on ONNX EfficientNetV2-S graphs (KeyError on the stem convolution); there
mlic warns and falls back to the fast one, and the metadata says which was used
(``calibration.bias_correction``). Also tried on the emoji Lite0 model, without a gain beyond the
spread between calibration subsets (about 1 mAP point): preset MIXED, the classifier or the
depthwise convolutions kept in FP32, min-max / histogram / quantile activation ranges, 1000
calibration images instead of 300.

Accuracy control (``max_drop``): NNCF's ``quantize_with_accuracy_control`` with the mAP (points) on
a labelled validation split as its metric. It ranks the quantizers by how much mAP their removal
restores on a subset (``RANKING_SUBSET_SIZE`` images) and returns them to floating point, group by group, until the
drop is within ``max_drop``. The validation split must not be the test split, or the test score
is optimistic; the training split does not work either (the emoji model's training mAP is 96
and INT8 costs it 0.25 points there, against about 2 on held-out drawings).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from mlic.data.formats import load_table
from mlic.data.images import load_rgb
from mlic.data.transforms import eval_transform
from mlic.engine.label_mask import reveal, sample_revealed
from mlic.errors import ConfigError, DataError
from mlic.metrics import mean_average_precision
from mlic.models import MultiLabelClassifier

DEFAULT_CALIBRATION_SIZE = 300  # NNCF's default subset size
DEFAULT_VALIDATION_SIZE = 500  # images the accuracy control measures mAP on
RANKING_SUBSET_SIZE = 300  # validation images accuracy control ranks quantizers on (NNCF's default)
OVERFLOW_FIX = ("auto", "all", "first_layer", "none")  # layers whose weights get 7 bits, not 8
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo: int8 dot products, exact
CPUINFO = "/proc/cpuinfo"


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags (Linux's /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            return set(next((line.split(":", 1)[1].split() for line in f
                             if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI or AMX, whose int8 dot products do not saturate (False where the
    flags cannot be read, which picks the choice that is exact everywhere)."""
    return bool(VNNI_FLAGS & cpu_flags())


def resolve_overflow_fix(overflow_fix: str) -> str:
    """``auto``: 8-bit weights (NNCF's first-layer fix) on a CPU with VNNI or AMX, else 7-bit
    weights everywhere. The model runs exactly on CPUs like the one that exported it."""
    if overflow_fix not in OVERFLOW_FIX:
        raise ConfigError(f"overflow fix must be one of {', '.join(OVERFLOW_FIX)}, got {overflow_fix!r}")
    if overflow_fix == "auto":
        return "first_layer" if cpu_has_vnni() else "all"
    return overflow_fix


def _load_table(data: str | Mapping[str, Any], label_names: list[str], missing: str):
    table = load_table(data).with_labels(label_names, missing)
    if len(table) == 0:
        raise DataError("no images to quantize with", table.source)
    return table


def _image_input(table, index: int, transform) -> np.ndarray:
    """One image as the exported graph's ``images`` input, (1, 3, S, S) float32."""
    return transform(load_rgb(table.image_path(index))).unsqueeze(0).numpy()


def _is_onnx(graph) -> bool:
    return type(graph).__module__.startswith("onnx")


def _subset(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def calibration_inputs(data: str | Mapping[str, Any], model: MultiLabelClassifier,
                       label_names: list[str], size: int = DEFAULT_CALIBRATION_SIZE,
                       seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Up to ``size`` samples {"images": (1, 3, S, S)[, "label_states": (1, C)]} from ``data``."""
    if size < 1:
        raise DataError(f"the calibration subset needs at least one image, got size {size}")
    table = _load_table(data, label_names, "negative")
    indices = _subset(len(table), size, seed)
    transform = eval_transform(model.preprocessing)
    states = None
    if model.takes_label_states:
        targets = torch.from_numpy(table.rows(indices).astype(np.int64))
        revealed = sample_revealed(targets, 0.75, torch.Generator().manual_seed(seed))
        states = reveal(targets, revealed)[0].numpy().astype(np.float32)
    samples = []
    for k, index in enumerate(indices):
        sample = {"images": _image_input(table, index, transform)}
        if states is not None:
            sample["label_states"] = states[k:k + 1]
        samples.append(sample)
    return samples


def validation_inputs(data: str | Mapping[str, Any], model: MultiLabelClassifier,
                      label_names: list[str], size: int = DEFAULT_VALIDATION_SIZE,
                      seed: int = 0) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Up to ``size`` labelled samples (inputs, targets (C,)) for accuracy control.

    Labels the split lacks are unknown (left out of the mAP); heads with label states see every
    label unknown, so the controlled metric is the plain one."""
    if size < 1:
        raise DataError(f"the validation subset needs at least one image, got size {size}")
    table = _load_table(data, label_names, "unknown")
    transform = eval_transform(model.preprocessing)
    items = []
    for index in _subset(len(table), size, seed):
        inputs = {"images": _image_input(table, index, transform)}
        if model.takes_label_states:
            inputs["label_states"] = np.full((1, len(label_names)), -1.0, dtype=np.float32)
        items.append((inputs, table.rows([index])[0]))
    return items


def validation_map(graph, items: list[tuple[dict[str, np.ndarray], np.ndarray]],
                   batch_size: int = 64) -> float:
    """mAP in points (0-100) of ``graph`` on ``items``: an ``openvino.CompiledModel`` (what NNCF
    hands its validation function on OpenVINO), an ``openvino.Model`` (compiled in f32) or an
    ``onnx.ModelProto``. A subset where no label has a positive scores 0. The logits are ranked
    where the graph has them (``mlic.engine.evaluate``), else (``--no-logits``) the
    probabilities."""
    run = _runner(graph)
    scores, targets = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        feeds = {name: np.concatenate([inputs[name] for inputs, _ in chunk])
                 for name in chunk[0][0]}
        scores.append(np.asarray(run(feeds), dtype=np.float64))
        targets.append(np.stack([t for _, t in chunk]))
    value = mean_average_precision(np.concatenate(scores), np.concatenate(targets)).map
    return 0.0 if np.isnan(value) else 100 * value


def _runner(graph):
    if _is_onnx(graph):
        import onnxruntime as ort
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        name = _ranked_output({o.name for o in session.get_outputs()})
        return lambda feeds: session.run([name], feeds)[0]
    if not hasattr(graph, "create_infer_request"):  # an openvino.Model: compile it, in f32
        from mlic.export.openvino import compile_openvino
        graph = compile_openvino(graph, "f32")
    output = graph.output(_ranked_output({n for o in graph.outputs for n in o.get_names()}))
    return lambda feeds: graph(feeds)[output]


def _ranked_output(names: set[str]) -> str:
    return "logits" if "logits" in names else "probabilities"


def nncf_model_type(model: MultiLabelClassifier):
    import nncf
    attention = any(isinstance(m, nn.MultiheadAttention) for m in model.head.modules())
    return nncf.ModelType.TRANSFORMER if attention else None


def quantize(graph, samples: list[dict[str, np.ndarray]], model: MultiLabelClassifier,
             overflow_fix: str = "auto", validation: list | None = None,
             max_drop: float | None = None):
    """INT8 copy of an ``onnx.ModelProto`` or an ``openvino.Model`` (NNCF picks the backend).

    With ``validation`` (labelled items from ``validation_inputs``) and ``max_drop`` (mAP points),
    NNCF's accuracy control quantizes, measures the validation mAP, and returns to floating point
    the quantizers whose removal recovers the most mAP, group by group, until the INT8 model is
    within ``max_drop`` of the FP32 one (or nothing is left to revert).

    Returns the INT8 graph and the bias correction used: NNCF's full one, or its fast one where the
    full one fails."""
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedAccuracyRestorerParameters,
                                                       AdvancedQuantizationParameters, OverflowFix)
    overflow_fix = resolve_overflow_fix(overflow_fix)
    fix = {"all": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER,
           "none": OverflowFix.DISABLE}[overflow_fix]
    options = dict(subset_size=len(samples), model_type=nncf_model_type(model))
    advanced = AdvancedQuantizationParameters(overflow_fix=fix)
    if max_drop is not None and not validation:
        raise ConfigError("accuracy-controlled INT8 (max_drop) needs labelled validation images")

    def run(fast_bias_correction: bool):
        if max_drop is None:
            return nncf.quantize(graph, nncf.Dataset(samples), advanced_parameters=advanced,
                                 fast_bias_correction=fast_bias_correction, **options)
        return nncf.quantize_with_accuracy_control(
            graph, nncf.Dataset(samples), nncf.Dataset(validation),
            lambda compiled, items: (validation_map(compiled, list(items)), None),
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
            fast_bias_correction=fast_bias_correction,
            advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=min(RANKING_SUBSET_SIZE, len(validation))), **options)

    from mlic.export.openvino import one_core
    try:
        with one_core():
            return run(fast_bias_correction=False), "full"
    except Exception as e:  # noqa: BLE001 (NNCF fails in many ways; a real error recurs below)
        # NNCF 3.4's full bias correction fails on some ONNX graphs: EfficientNetV2-S (a KeyError
        # on the stem convolution), C-Tran (onnxruntime refuses a sub-graph that defines
        # label_states twice). The fast one works on both.
        warnings.warn(f"NNCF's full bias correction failed ({type(e).__name__}: {e}); "
                      f"using its fast bias correction", stacklevel=2)
        with one_core():
            return run(fast_bias_correction=True), "fast"


def count_quantizers(graph) -> int:
    """Quantize operations left in an INT8 graph (ONNX QuantizeLinear, OpenVINO FakeQuantize): what
    accuracy control kept, against what it returned to floating point."""
    if _is_onnx(graph):
        return sum(node.op_type == "QuantizeLinear" for node in graph.graph.node)
    return sum(op.get_type_name() == "FakeQuantize" for op in graph.get_ops())
