"""One interface over the three ways to run a model: eager PyTorch, onnxruntime and OpenVINO.

A runtime takes preprocessed ``images`` (B, 3, S, S) float32 and, for heads that use known labels,
``label_states`` (B, C) float32, and returns probabilities (B, C) as float64 numpy, or with
``output="logits"`` the logits (what mAP ranks: ``mlic.engine.evaluate``; an export made with
``--no-logits`` has none). Together with the metadata (label names, thresholds, preprocessing) it
is all ``mlic.Predictor`` needs.

``load_runtime`` accepts a run folder or checkpoint (any backend: for onnxruntime and OpenVINO the
checkpoint is exported to a temporary folder first, FP32), an exported ``.onnx`` (onnxruntime or
OpenVINO) or an exported ``.xml`` (OpenVINO).
"""
from __future__ import annotations

import importlib.util
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlic.errors import ConfigError, WeightsError
from mlic.export.metadata import (check_graph, from_strings, read_onnx_metadata,
                                  read_openvino_metadata)

BACKENDS = ("torch", "onnxruntime", "openvino")


class Int8WeightsMaySaturate(UserWarning):
    """An INT8 model with 8-bit weights runs on an x86 CPU without VNNI or AMX, where int8 dot
    products add pairs into a saturating int16, so its scores drift from the calibrated model's."""


def onnx_installed() -> bool:
    """Whether the onnx package is there (exporting needs it; running a .onnx does not)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def require(module: str) -> None:
    """A clear error when an optional package of the ``export`` extra is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"this needs the {module} package: pip install 'mlic[export]'")


class TorchRuntime:
    backend = "torch"

    def __init__(self, model, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.takes_label_states = model.takes_label_states
        self.compute = "f32"

    @torch.no_grad()
    def __call__(self, images: np.ndarray, label_states: np.ndarray | None = None,
                 output: str = "probabilities") -> np.ndarray:
        x = torch.from_numpy(images).to(self.device)
        states = None if label_states is None else torch.from_numpy(label_states).to(self.device)
        logits = self.model(x, states)
        scores = logits.float() if output == "logits" else self.model.probabilities(logits)
        return scores.cpu().numpy().astype(np.float64)


class OnnxRuntime:
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        require("onnxruntime")
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  onnxruntime's errors have no common type
            raise WeightsError(f"{path}: onnxruntime cannot load it "
                               f"({_first_line(e)})") from None
        self.source = path
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.takes_label_states = "label_states" in self.input_names
        self.compute = "f32"
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        _check_io(self, inputs, outputs, path)

    def __call__(self, images: np.ndarray, label_states: np.ndarray | None = None,
                 output: str = "probabilities") -> np.ndarray:
        feeds = _feeds(self, images, label_states)
        try:
            result = self.session.run([output], feeds)[0]
        except Exception as e:  # noqa: BLE001  a graph that loads but cannot run these inputs
            raise WeightsError(f"{self.source}: onnxruntime failed to run it "
                               f"({_first_line(e)})") from None
        return _checked(self, result, images.shape[0])


class OpenVinoRuntime:
    """``precision``: None runs at OpenVINO's default (bf16 on CPUs with AVX512-BF16 or AMX, else
    f32); "f32" forces float32, as parity checks need."""
    backend = "openvino"

    def __init__(self, model, precision: str | None = None, threads: int | None = None,
                 source: str | Path = "OpenVINO model"):
        from mlic.export.openvino import compile_openvino
        self.source = source
        try:
            self.compiled = compile_openvino(model, precision, threads)
        except RuntimeError as e:
            raise WeightsError(f"{source}: OpenVINO cannot compile it "
                               f"({_first_line(e)})") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [next(iter(i.get_names())) for i in self.compiled.inputs]
        self.takes_label_states = "label_states" in self.input_names
        self.outputs = {name: o for o in self.compiled.outputs for name in o.get_names()}
        shapes = {name: [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                  for name, o in self.outputs.items()}
        inputs = {next(iter(i.get_names())): [d.get_length() if d.is_static else None
                                              for d in i.get_partial_shape()]
                  for i in self.compiled.inputs}
        _check_io(self, inputs, shapes, source)
        # What the CPU plugin actually computes in (f32, or bf16 by default where the CPU has it).
        self.compute = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, images: np.ndarray, label_states: np.ndarray | None = None,
                 output: str = "probabilities") -> np.ndarray:
        try:
            result = self.request.infer(_feeds(self, images, label_states))
        except RuntimeError as e:
            raise WeightsError(f"{self.source}: OpenVINO failed to run it "
                               f"({_first_line(e)})") from None
        return _checked(self, result[self.outputs[output]], images.shape[0])


def _checked(runtime, scores, batch: int) -> np.ndarray:
    """(batch, one score per label) float64, or a WeightsError: an output whose width the graph
    left open is checked against the metadata's labels here, on the first call."""
    scores = np.asarray(scores, dtype=np.float64)
    expected = (batch, getattr(runtime, "num_classes", scores.shape[-1]))
    if scores.shape != expected:
        raise WeightsError(f"{runtime.source}: the graph gave scores of shape {scores.shape} for "
                           f"{batch} images, but its metadata names {expected[1]} labels")
    return scores


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


def _check_io(runtime, inputs: dict[str, list], outputs: dict[str, list], source) -> None:
    """The graph has mlic's input and output; their static sizes, for ``check_graph``.
    A dimension that is not a fixed number is None (unknown until the first call)."""
    def fixed(shape: list, axis: int) -> int | None:
        value = shape[axis] if len(shape) > axis else None
        return value if isinstance(value, int) and value > 0 else None
    if "images" not in inputs or "probabilities" not in outputs:
        raise WeightsError(f"{source}: not an mlic graph (inputs {sorted(inputs)}, outputs "
                           f"{sorted(outputs)}; mlic needs 'images' and 'probabilities')")
    if len(inputs["images"]) != 4 or len(outputs["probabilities"]) != 2:
        raise WeightsError(f"{source}: input 'images' must be (batch, 3, size, size) and output "
                           f"'probabilities' (batch, classes), got {inputs['images']} and "
                           f"{outputs['probabilities']}")
    runtime.output_width = fixed(outputs["probabilities"], 1)
    runtime.input_size = fixed(inputs["images"], 2)
    runtime.output_names = sorted(outputs)


def _type_name(element_type) -> str:
    name = str(element_type).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
        name.split("'")[1] if "'" in name else name, name)


def _feeds(runtime, images: np.ndarray, label_states: np.ndarray | None) -> dict[str, np.ndarray]:
    """The exported graph's inputs; label states all unknown (-1) when none are given."""
    feeds = {"images": np.ascontiguousarray(images, dtype=np.float32)}
    if runtime.takes_label_states:
        feeds["label_states"] = (
            np.full((images.shape[0], runtime.num_classes), -1.0, dtype=np.float32)
            if label_states is None else np.ascontiguousarray(label_states, dtype=np.float32))
    return feeds


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The mlic metadata of an exported .onnx or .xml, without compiling it."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return read_onnx_metadata(path)
    from mlic.export.openvino import core
    return read_openvino_metadata(core().read_model(str(path)), path)


def load_runtime(path: str | Path, backend: str | None = None, device: str = "cpu",
                 tag: str = "best", precision: str | None = None, threads: int | None = None
                 ) -> tuple[Any, dict[str, Any]]:
    """(runtime, metadata) for a run folder, a checkpoint, an exported .onnx or an .xml."""
    path = Path(path)
    suffix = path.suffix.lower()
    exported = suffix in (".onnx", ".xml")
    if backend is None:
        backend = {".onnx": "onnxruntime", ".xml": "openvino"}.get(suffix, "torch")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if exported and not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    if backend == "torch":
        if exported:
            raise ConfigError(f"{path}: an exported model runs on onnxruntime or openvino, not torch "
                              f"(load the run folder or checkpoint for torch)")
        from mlic.engine.checkpoint import load_model
        model, metadata = load_model(path, tag)
        runtime = TorchRuntime(model, device)
    elif not exported:  # a checkpoint on an exported backend: export it (FP32) to a scratch folder
        from mlic.export import export_model
        with tempfile.TemporaryDirectory() as scratch:
            file = export_model(path, "onnx" if backend == "onnxruntime" else "openvino",
                                out=scratch, tag=tag)
            return load_runtime(file, backend, device, tag, precision, threads)
    elif backend == "onnxruntime":
        if suffix != ".onnx":
            raise ConfigError(f"{path}: onnxruntime runs .onnx files; use backend='openvino' for "
                              f"an OpenVINO IR")
        if onnx_installed():  # checks the file (external data in its folder) before loading it
            metadata = read_onnx_metadata(path)
            runtime = OnnxRuntime(path, threads)
        else:  # onnxruntime alone runs the file and reads its metadata
            runtime = OnnxRuntime(path, threads)
            metadata = from_strings(runtime.session.get_modelmeta().custom_metadata_map, path)
    else:
        require("openvino")
        from mlic.export.openvino import core
        try:
            model = core().read_model(str(path))
        except RuntimeError as e:
            raise ConfigError(f"{path}: OpenVINO cannot read it ({str(e).splitlines()[0]})") from None
        metadata = read_onnx_metadata(path) if suffix == ".onnx" else read_openvino_metadata(model, path)
        runtime = OpenVinoRuntime(model, precision, threads, source=path)
    if exported:
        check_graph(metadata, runtime.output_width, runtime.input_size, path)
    runtime.num_classes = len(metadata["label_names"])
    runtime.weights = metadata.get("export", {}).get("precision", "fp32")  # fp32 or int8
    _warn_if_int8_may_saturate(metadata, path)
    return runtime, metadata


def _warn_if_int8_may_saturate(metadata: dict[str, Any], path: Path) -> None:
    calibration = metadata.get("export", {}).get("calibration") or {}
    if calibration.get("overflow_fix", "all") == "all":
        return
    from mlic.export.quantize import cpu_has_vnni
    if platform.machine().lower() in ("x86_64", "amd64", "i686") and not cpu_has_vnni():
        warnings.warn(
            f"{path.name} has 8-bit INT8 weights (overflow fix {calibration['overflow_fix']!r}), "
            f"exact only on CPUs with VNNI or AMX; this CPU has neither, so its scores will drift "
            f"(the emoji model lost 3.8 mAP points this way). Re-export for this CPU with "
            f"--overflow-fix all", Int8WeightsMaySaturate, stacklevel=3)


