"""A graph rewrite that keeps reduced axes, working around an OpenVINO CPU miscompilation.

OpenVINO 2026.4's CPU plugin computes ``Reduce*(x, axis=-1, keepdims=0)`` followed by an
element-wise op with a per-class vector wrongly: ``(h * w).sum(-1) + bias``, Query2Label's and
C-Tran's per-class classifier, comes out with the wrong bias on every class but the first (ours to
1e-6 on onnxruntime, off by up to 4 in logits on OpenVINO, FP32 and static shapes alike; the same
with mean or max, or with ``*`` instead of ``+``). ``Reduce(keepdims=1)`` + ``Squeeze`` computes
the same values and is compiled correctly, so every reduction that drops its axes is rewritten
that way in the exported graph (for every consumer of the file, onnxruntime included: the extra
Squeeze costs nothing). ``tests/test_export.py`` checks the bug's pattern on OpenVINO.
"""
from __future__ import annotations

import numpy as np

REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def keep_reduced_dims(model) -> int:
    """Rewrite, in place, each reduction with ``keepdims=0`` and known axes of an
    ``onnx.ModelProto`` as ``keepdims=1`` + ``Squeeze``; returns how many were rewritten."""
    from onnx import helper, numpy_helper
    graph = model.graph
    constants = _constants(graph)
    nodes, rewritten = [], 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type not in REDUCTIONS:
            continue
        attributes = {a.name: a for a in node.attribute}
        if "keepdims" not in attributes or attributes["keepdims"].i != 0:
            continue  # keepdims defaults to 1
        if "axes" in attributes:
            axes = list(attributes["axes"].ints)
        elif len(node.input) > 1 and node.input[1] in constants:
            axes = constants[node.input[1]].reshape(-1).tolist()
        else:
            continue  # all axes, or axes computed at run time: left as it is
        output = node.output[0]
        axes_name = f"{output}__squeeze_axes"
        graph.initializer.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), axes_name))
        attributes["keepdims"].i = 1
        node.output[0] = f"{output}__kept"
        nodes.append(helper.make_node("Squeeze", [node.output[0], axes_name], [output],
                                      name=f"{node.name}/squeeze"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten
