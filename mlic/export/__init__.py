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

import yaml

from mlic.engine.checkpoint import load_model, resolve_checkpoint
from mlic.errors import ConfigError
from mlic.export.metadata import export_metadata
from mlic.export.quantize import DEFAULT_CALIBRATION_SIZE, OVERFLOW_FIX

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}


def run_folder(source: str | Path, tag: str = "best") -> Path:
    """The run folder a checkpoint belongs to (its checkpoints/ folder's parent)."""
    folder = resolve_checkpoint(source, tag).parent
    return folder.parent if folder.name == "checkpoints" else folder


def training_split(run: Path) -> Any:
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run}: no config.yaml to find the training images for calibration in; "
                          f"pass calibration_data (--calibration-data)")
    data = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("data", {})
    if not data.get("train"):
        raise ConfigError(f"{config_path}: no data.train to calibrate on; pass --calibration-data")
    spec = data["train"]
    if data.get("classes") and isinstance(spec, str):  # a plain CSV's class list belongs to it
        spec = {"path": spec, "classes": data["classes"]}
    return spec


def export_model(source: str | Path, format: str = "onnx", out: str | Path | None = None,
                 int8: bool = False, logits: bool = True, tag: str = "best",
                 calibration_data: str | Path | Mapping[str, Any] | None = None,
                 calibration_size: int = DEFAULT_CALIBRATION_SIZE, overflow_fix: str = "all") -> Path:
    """Export a run folder or checkpoint; returns the written .onnx or .xml path.

    ``out``: a folder (default ``<run>/export``) or a file name with the format's suffix.
    ``int8``: NNCF post-training quantization on ``calibration_size`` images of
    ``calibration_data`` (default: the run's training split); ``overflow_fix``: the layers whose
    weights get 7 bits, "all" (default: exact on CPUs without VNNI), "first_layer" or "none"
    (``mlic.export.quantize``).
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    if overflow_fix not in OVERFLOW_FIX:
        raise ConfigError(f"overflow fix must be one of {', '.join(OVERFLOW_FIX)}, got {overflow_fix!r}")
    from mlic.export.runtime import require
    for package in ["onnx", *(["openvino"] if format == "openvino" else []), *(["nncf"] if int8 else [])]:
        require(package)
    path = _output_path(source, tag, format, out, int8)
    model, checkpoint_meta = load_model(source, tag)
    samples = None
    if int8:
        from mlic.export.quantize import calibration_inputs
        data = calibration_data if calibration_data is not None else training_split(
            run_folder(source, tag))
        if isinstance(data, Path):
            data = str(data)
        samples = calibration_inputs(data, model, list(checkpoint_meta["label_names"]),
                                     calibration_size)
    metadata = export_metadata(
        checkpoint_meta, model.takes_label_states, logits, "int8" if int8 else "fp32",
        format=format, source=str(resolve_checkpoint(source, tag)),
        tool_versions=_versions(format, int8),
        **({"calibration": {"images": len(samples), "data": str(calibration_data or "train split"),
                            "overflow_fix": overflow_fix}}
           if samples else {}))

    from mlic.export.onnx import export_onnx
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = path if format == "onnx" else Path(scratch) / "model.onnx"
        export_onnx(model, metadata, onnx_path, logits)
        if format == "onnx":
            if samples:
                import onnx

                from mlic.export.metadata import write_onnx_metadata
                from mlic.export.quantize import quantize
                quantized = quantize(onnx.load(str(path)), samples, model, overflow_fix)
                write_onnx_metadata(quantized, metadata)
                onnx.save(quantized, str(path))
            return path
        from mlic.export.openvino import convert_onnx, save_openvino
        graph = convert_onnx(onnx_path)
        if samples:
            from mlic.export.quantize import quantize
            graph = quantize(graph, samples, model, overflow_fix)
        return save_openvino(graph, metadata, path)


def _output_path(source: str | Path, tag: str, format: str, out: str | Path | None,
                 int8: bool) -> Path:
    suffix = FORMATS[format]
    if out is not None and Path(out).suffix:
        if Path(out).suffix != suffix:
            raise ConfigError(f"--out {out}: a {format} model is written as *{suffix}")
        return Path(out)
    folder = Path(out) if out is not None else run_folder(source, tag) / "export"
    return folder / (("model_int8" if int8 else "model") + suffix)


def _versions(format: str, int8: bool) -> dict[str, str]:
    import torch

    import mlic
    versions = {"mlic": mlic.__version__, "torch": torch.__version__, "python": platform.python_version()}
    import onnx
    versions["onnx"] = onnx.__version__
    if format == "openvino":
        import openvino
        versions["openvino"] = openvino.get_version()
    if int8:
        import nncf
        versions["nncf"] = nncf.__version__
    return versions
