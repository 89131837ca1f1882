"""What an exported model carries about itself, so that the file alone is enough to use it.

The checkpoint's description (label names in output order, thresholds, preprocessing, model
config, epoch, metrics) plus what the export adds (inputs, outputs, precision, tool versions) is
stored as one string per top-level key, JSON-encoded, under the ``mlic.`` prefix: ONNX
``metadata_props`` entries ``mlic.label_names``, ``mlic.thresholds``, ...; OpenVINO ``rt_info``
entries ``<mlic><label_names value=.../>...``. Any ONNX or OpenVINO tool can read them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlic.errors import WeightsError

PREFIX = "mlic."

# Written into every exported file: getting the output wrong is the classic multi-label export bug.
OUTPUTS = {
    "probabilities": "(batch, classes) float32 in [0, 1]: sigmoid(logits), computed inside the "
                     "graph (cosine heads' scale s included); compare with `thresholds`",
    "logits": "(batch, classes) float32: the head's final scores before the sigmoid; do not apply "
              "a softmax (labels are independent), apply a sigmoid only to these",
}
LABEL_STATES = ("(batch, classes) float32, per label: 1 known present, 0 known absent, -1 unknown "
                "(all -1 when nothing is known)")


def export_metadata(checkpoint_meta: dict[str, Any], takes_label_states: bool, logits: bool,
                    precision: str, **export: Any) -> dict[str, Any]:
    """The checkpoint's metadata, thresholds expanded to one per class, plus the export's facts."""
    names = list(checkpoint_meta["label_names"])
    thresholds = np.broadcast_to(np.asarray(checkpoint_meta.get("thresholds", 0.5), dtype=float),
                                 (len(names),))
    inputs = {"images": "(batch, 3, size, size) float32: RGB, resized to `preprocessing.image_size` "
                        "square, scaled to [0, 1], then (x - mean) / std per channel"}
    if takes_label_states:
        inputs["label_states"] = LABEL_STATES
    outputs = {"probabilities": OUTPUTS["probabilities"]}
    if logits:
        outputs["logits"] = OUTPUTS["logits"]
    return {**checkpoint_meta, "label_names": names, "thresholds": [float(t) for t in thresholds],
            "export": {"precision": precision, "inputs": inputs, "outputs": outputs, **export}}


def to_strings(metadata: dict[str, Any]) -> dict[str, str]:
    return {PREFIX + key: json.dumps(value) for key, value in metadata.items()}


def from_strings(entries: dict[str, str], source: str | Path) -> dict[str, Any]:
    """Parse ``mlic.*`` entries back; a file without them was not exported by mlic."""
    try:
        metadata = {key[len(PREFIX):]: json.loads(value) for key, value in entries.items()
                    if key.startswith(PREFIX)}
    except json.JSONDecodeError as e:
        raise WeightsError(f"{source}: damaged mlic metadata ({e})") from None
    missing = {"label_names", "preprocessing", "export"} - set(metadata)
    if missing:
        raise WeightsError(f"{source}: not a model exported by `mlic export` (no {', '.join(sorted(missing))} "
                           f"in its metadata); export it with `mlic export RUN`")
    return metadata


def write_onnx_metadata(model, metadata: dict[str, Any]) -> None:
    """Set the ``mlic.*`` entries of an ``onnx.ModelProto`` (replacing any earlier ones)."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *to_strings(metadata).items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = ("mlic multi-label classifier. Outputs: " + "; ".join(
        f"{name}: {text}" for name, text in metadata["export"]["outputs"].items()))


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or foreign file
        raise WeightsError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    return from_strings({p.key: p.value for p in model.metadata_props}, path)


def write_openvino_metadata(model, metadata: dict[str, Any]) -> None:
    """Set ``rt_info`` entries ``mlic/<key>`` of an ``openvino.Model``."""
    for key, value in to_strings(metadata).items():
        model.set_rt_info(value, ["mlic", key[len(PREFIX):]])


def read_openvino_metadata(model, path: str | Path) -> dict[str, Any]:
    info = model.get_rt_info()
    entries = info["mlic"] if "mlic" in list(info.keys()) else {}
    return from_strings({PREFIX + key: value.astype(str) for key, value in entries.items()}, path)
