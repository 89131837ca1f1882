"""``mlic export``: a trained model as one ONNX file or one OpenVINO IR, FP32 or INT8.

    from mlic.export import export_model
    export_model("runs/coco-<time>", "openvino", int8=True)   # runs/coco-<time>/export/model_int8.xml

The exported graph takes ``images`` (batch, 3, S, S) float32, preprocessed as its metadata says
(and ``label_states`` (batch, C) for heads that use known labels), and gives ``probabilities``
(sigmoid inside the graph) and, unless ``logits=False``, ``logits``. Label names, thresholds,
preprocessing and the model config travel inside the file (``mlic.export.metadata``), so
``mlic.Predictor.load("model.onnx")`` needs nothing else.
"""
from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any, Mapping

from mlic.engine.checkpoint import load_model
from mlic.errors import ConfigError
from mlic.export.metadata import export_metadata
from mlic.export.quantize import (DEFAULT_CALIBRATION_SIZE, DEFAULT_VALIDATION_SIZE,
                                  resolve_overflow_fix)
from mlic.run_folder import resolve_checkpoint, run_of_checkpoint, run_split
from mlic.version import __version__

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}


def export_model(source: str | Path, format: str = "onnx", out: str | Path | None = None,
                 int8: bool = False, logits: bool = True, tag: str = "best",
                 calibration_data: str | Path | Mapping[str, Any] | None = None,
                 calibration_size: int = DEFAULT_CALIBRATION_SIZE, overflow_fix: str = "auto",
                 max_drop: float | None = None,
                 validation_data: str | Path | Mapping[str, Any] | None = None,
                 validation_size: int = DEFAULT_VALIDATION_SIZE) -> Path:
    """Export a run folder or checkpoint; returns the written .onnx or .xml path.

    ``out``: a folder (default ``<run>/export``) or a file name with the format's suffix.
    ``int8``: NNCF post-training quantization on ``calibration_size`` images of
    ``calibration_data`` (default: the run's training split); ``overflow_fix``: the layers whose
    weights get 7 bits: "all" (exact on every x86 CPU, VNNI or not), "first_layer" (8-bit
    weights elsewhere: more accurate, exact only on CPUs with VNNI or AMX), "none", or "auto"
    (default: "first_layer" if this CPU has VNNI or AMX, else "all"; ``mlic.export.quantize``).
    ``max_drop``: accuracy-controlled INT8: layers go back to floating point until the mAP on
    ``validation_size`` images of ``validation_data`` (default: the run's validation split, never
    its test split) is at most ``max_drop`` points below the FP32 model's.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    overflow_fix = resolve_overflow_fix(overflow_fix)
    if max_drop is not None and not int8:
        raise ConfigError("max_drop (--max-drop) controls the accuracy of INT8: add int8 (--int8)")
    if max_drop is not None and max_drop < 0:
        raise ConfigError(f"max_drop is in mAP points and cannot be negative, got {max_drop}")
    from mlic.export.runtime import require
    for package in ["onnx", *(["openvino"] if format == "openvino" else []), *(["nncf"] if int8 else [])]:
        require(package)
    path = _output_path(source, tag, format, out, int8)
    model, checkpoint_meta = load_model(source, tag)
    samples = validation = None
    calibration: dict[str, Any] = {}
    if int8:
        from mlic.export.quantize import calibration_inputs, cpu_has_vnni, validation_inputs
        labels = list(checkpoint_meta["label_names"])
        data = calibration_data if calibration_data is not None else run_split(
            run_of_checkpoint(source, tag), "train", hint="; pass --calibration-data", with_classes=True)[1]
        samples = calibration_inputs(str(data) if isinstance(data, Path) else data, model, labels,
                                     calibration_size)
        calibration = {"images": len(samples), "data": str(calibration_data or "train split"),
                       "overflow_fix": overflow_fix, "exported_on_vnni_cpu": cpu_has_vnni()}
        if max_drop is not None:
            data = validation_data if validation_data is not None else run_split(
                run_of_checkpoint(source, tag), "val", hint="; pass --validation-data",
                with_classes=True)[1]
            validation = validation_inputs(str(data) if isinstance(data, Path) else data, model,
                                           labels, validation_size)
            calibration["accuracy_control"] = {
                "max_drop_map": max_drop, "validation_images": len(validation),
                "validation_data": str(validation_data or "val split")}
    metadata = export_metadata(
        checkpoint_meta, model.takes_label_states, logits, "int8" if int8 else "fp32",
        format=format, source=str(resolve_checkpoint(source, tag)),
        tool_versions=_versions(format, int8), **({"calibration": calibration} if int8 else {}))

    from mlic.export.onnx import export_onnx
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = path if format == "onnx" else Path(scratch) / "model.onnx"
        export_onnx(model, metadata, onnx_path, logits)
        if format == "onnx":
            if samples:
                import onnx

                from mlic.export.metadata import write_onnx_metadata
                from mlic.export.quantize import quantize
                fp32 = onnx.load(str(path))
                quantized, metadata["export"]["calibration"]["bias_correction"] = quantize(
                    fp32, samples, model, overflow_fix, validation, max_drop)
                _record_validation(metadata, fp32, quantized, validation)
                write_onnx_metadata(quantized, metadata)
                onnx.save(quantized, str(path))
            return path
        from mlic.export.openvino import convert_onnx, save_openvino
        graph = convert_onnx(onnx_path)
        if samples:
            from mlic.export.quantize import quantize
            quantized, metadata["export"]["calibration"]["bias_correction"] = quantize(
                graph, samples, model, overflow_fix, validation, max_drop)
            _record_validation(metadata, graph, quantized, validation)
            graph = quantized
        return save_openvino(graph, metadata, path)


def _record_validation(metadata: dict[str, Any], fp32, int8, validation: list | None) -> None:
    """The validation mAP of the FP32 and the INT8 graph, in the metadata (accuracy control)."""
    if not validation:
        return
    from mlic.export.quantize import count_quantizers, validation_map
    control = metadata["export"]["calibration"]["accuracy_control"]
    control["fp32_map"] = round(validation_map(fp32, validation), 3)
    control["int8_map"] = round(validation_map(int8, validation), 3)
    control["quantized_inputs"] = count_quantizers(int8)


def _output_path(source: str | Path, tag: str, format: str, out: str | Path | None,
                 int8: bool) -> Path:
    suffix = FORMATS[format]
    if out is not None and Path(out).suffix and not Path(out).is_dir():  # a folder may hold a dot
        if Path(out).suffix != suffix:
            raise ConfigError(f"--out {out}: a {format} model is written as *{suffix}")
        return Path(out)
    folder = Path(out) if out is not None else run_of_checkpoint(source, tag) / "export"
    return folder / (("model_int8" if int8 else "model") + suffix)


def _versions(format: str, int8: bool) -> dict[str, str]:
    import torch

    versions = {"mlic": __version__, "torch": torch.__version__, "python": platform.python_version()}
    import onnx
    versions["onnx"] = onnx.__version__
    if format == "openvino":
        import openvino
        versions["openvino"] = openvino.get_version()
    if int8:
        import nncf
        versions["nncf"] = nncf.__version__
    return versions
