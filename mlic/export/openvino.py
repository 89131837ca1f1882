"""ONNX -> OpenVINO IR (.xml + .bin) with the mlic metadata in ``rt_info``.

The IR is converted from the exported ONNX graph, so both formats run the same operations (the
label-graph constants included). Weights are saved in float32: ``openvino.save_model`` compresses
them to float16 by default, which alone moves probabilities by more than 1e-4.

Precision at run time is a separate matter: OpenVINO's CPU plugin runs in bfloat16 by default on
CPUs that support it (AVX512-BF16 or AMX) and in float32 elsewhere; ``INFERENCE_PRECISION_HINT``
= ``f32`` forces float32 (``compile_openvino``).
"""
from __future__ import annotations

import contextlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from mlic.export.metadata import write_openvino_metadata


@cache
def core():
    """The process's one OpenVINO Core. OpenVINO advises one per process (each loads the plugins
    anew), and a released CPU plugin can leave the main thread's alternate signal stack pointing
    at freed memory, so that a later Ctrl-C crashes the interpreter (seen with 2026.4)."""
    import openvino as ov
    return ov.Core()


@contextlib.contextmanager
def one_core():
    """Within it, ``openvino.Core()`` and ``openvino.compile_model`` use the process's one Core:
    NNCF makes Cores of its own (statistics, bias correction, accuracy control), and each one
    released is another chance of the freed signal stack of ``core()``'s docstring."""
    if importlib.util.find_spec("openvino") is None:  # ONNX alone: NNCF makes no Core either
        yield None
        return
    import openvino as ov
    shared = core()
    real_core, real_compile = ov.Core, ov.compile_model
    ov.Core = lambda *args, **kwargs: shared
    ov.compile_model = lambda model, device_name=None, config=None, **kwargs: \
        shared.compile_model(model, device_name or "CPU", config or {})
    try:
        yield shared
    finally:
        ov.Core, ov.compile_model = real_core, real_compile


def convert_onnx(onnx_path: str | Path):
    import openvino as ov
    return ov.convert_model(str(onnx_path))


def save_openvino(model, metadata: dict[str, Any], xml_path: str | Path) -> Path:
    import openvino as ov
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    write_openvino_metadata(model, metadata)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def compile_openvino(model, precision: str | None = None, threads: int | None = None):
    """A compiled CPU model. ``precision``: None for OpenVINO's default (bf16 where the CPU has it),
    or an ``INFERENCE_PRECISION_HINT`` value such as ``"f32"``."""
    config: dict[str, Any] = {}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core().compile_model(model, "CPU", config)


def cpu_precisions() -> list[str]:
    """What this CPU's OpenVINO plugin can compute in (e.g. FP32, BF16, INT8)."""
    return list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
