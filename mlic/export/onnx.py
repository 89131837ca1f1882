"""PyTorch -> ONNX: dynamic batch, probabilities (and logits) out, mlic metadata inside.

The TorchScript exporter (``dynamo=False``) is used on purpose: it records the label-graph heads'
image-independent outputs (channel weights, ML-GCN's classifier) as constants, because their
``GraphOutputCache`` computes them outside the trace; so the graph branch costs nothing at
inference and the exported model is as fast as the plain pooled head. It also needs no extra
package and takes a second where the dynamo exporter takes ten. torch 2.14 warns that it will be
removed one day; the pinned torch still has it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from mlic.export.graph import ExportGraph
from mlic.export.keepdims import keep_reduced_dims
from mlic.export.metadata import write_onnx_metadata
from mlic.models import MultiLabelClassifier

OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime and OpenVINO both read it


def export_onnx(model: MultiLabelClassifier, metadata: dict[str, Any], path: str | Path,
                logits: bool = True, opset: int = OPSET) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportGraph(model.float().eval(), logits)
    dynamic = {name: {0: "batch"} for name in graph.input_names + graph.output_names}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # Without autograd, nn.MultiheadAttention takes a fused kernel that has no ONNX form.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _trace(graph, path, dynamic, opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    proto = onnx.load(str(path))
    keep_reduced_dims(proto)  # an OpenVINO bug's workaround, see keepdims.py
    write_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _trace(graph: ExportGraph, path: Path, dynamic: dict, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes about Python booleans come from shape checks that hold for any batch;
        # the exporter's deprecation notice is addressed in the module docstring.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        torch.onnx.export(graph, graph.example_inputs(), str(path), dynamo=False,
                          input_names=graph.input_names, output_names=graph.output_names,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True)
