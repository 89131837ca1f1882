"""What an exported model carries about itself, so that the file alone is enough to use it.

The checkpoint's description (label names in output order, thresholds, preprocessing, model
config, epoch, metrics) plus what the export adds (inputs, outputs, precision, tool versions) is
stored as one string per top-level key, JSON-encoded, under the ``mlic.`` prefix: ONNX
``metadata_props`` entries ``mlic.label_names``, ``mlic.thresholds``, ...; OpenVINO ``rt_info``
entries ``<mlic><label_names value=.../>...``. Any ONNX or OpenVINO tool can read them.

Read back, the metadata is not trusted: a file from elsewhere may carry anything. ``check_metadata``
checks what mlic uses (types, one finite threshold in [0, 1] per label, unique names, a sane
preprocessing, bounded size and depth) and ``check_graph`` checks it against the graph (the
number of labels against the output's width, the image size against the input's), each failure
one ``WeightsError`` naming the file and the entry.
"""
from __future__ import annotations

import json
import math
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


# Generous for what mlic writes (OpenImages' 9,605 label names are 0.2 MB, nesting 4 levels).
MAX_CHARS = 16_000_000
MAX_DEPTH = 32
MAX_IMAGE_SIZE = 8192  # as data.image_size


def from_strings(entries: dict[str, str], source: str | Path) -> dict[str, Any]:
    """Parse ``mlic.*`` entries back and check them; a file without them was not exported by mlic."""
    metadata = {}
    for key, value in entries.items():
        if not key.startswith(PREFIX):
            continue
        if len(value) > MAX_CHARS:
            raise WeightsError(f"{source}: metadata {key} is {len(value):,} characters, more than "
                               f"the {MAX_CHARS:,} mlic reads")
        try:
            metadata[key[len(PREFIX):]] = json.loads(value)
        except ValueError as e:
            raise WeightsError(f"{source}: damaged mlic metadata {key} ({e})") from None
        except RecursionError:
            raise WeightsError(f"{source}: metadata {key} is nested deeper than Python can "
                               f"read") from None
    missing = {"label_names", "preprocessing", "export"} - set(metadata)
    if missing:
        raise WeightsError(f"{source}: not a model exported by `mlic export` (no {', '.join(sorted(missing))} "
                           f"in its metadata); export it with `mlic export RUN`")
    check_metadata(metadata, source)
    return metadata


def check_metadata(metadata: dict[str, Any], source: str | Path) -> None:
    """What mlic reads from an exported model's metadata, checked; one WeightsError per problem."""
    def bad(key: str, problem: str) -> WeightsError:
        return WeightsError(f"{source}: metadata {PREFIX}{key} {problem}")

    for key, value in metadata.items():
        if _depth(value) > MAX_DEPTH:
            raise bad(key, f"is nested more than {MAX_DEPTH} levels deep")
    names = metadata["label_names"]
    if not isinstance(names, list) or not names \
            or not all(isinstance(n, str) and n.strip() for n in names):
        raise bad("label_names", f"must be a non-empty list of non-empty names, got "
                                 f"{_short(names)}")
    from mlic.data.table import label_name
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        normal = label_name(name)
        if normal in seen:  # two outputs of one name: their scores would merge in a dict
            raise bad("label_names", f"names {name!r} twice (outputs {seen[normal]} and {j})")
        seen[normal] = j
    thresholds = metadata.get("thresholds", 0.5)
    values = thresholds if isinstance(thresholds, list) else [thresholds]
    if not all(_number(t) and 0 <= t <= 1 for t in values):
        raise bad("thresholds", f"must be numbers in [0, 1], got {_short(thresholds)}")
    if isinstance(thresholds, list) and len(thresholds) != len(names):
        raise bad("thresholds", f"has {len(thresholds)} values for {len(names)} labels")
    pre = metadata["preprocessing"]
    if not isinstance(pre, dict):
        raise bad("preprocessing", f"must be a mapping, got {_short(pre)}")
    size = pre.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_IMAGE_SIZE):
        raise bad("preprocessing", f"image_size must be an integer in [1, {MAX_IMAGE_SIZE}], got "
                                   f"{_short(size)}")
    for key in ("mean", "std"):
        value = pre.get(key)
        if not (isinstance(value, list) and len(value) == 3 and all(map(_number, value))) or \
                (key == "std" and not all(v > 0 for v in value)):
            raise bad("preprocessing", f"{key} must be 3 finite numbers{' > 0' * (key == 'std')}, "
                                       f"got {_short(value)}")
    if pre.get("interpolation", "bilinear") not in ("bilinear", "bicubic"):
        raise bad("preprocessing", f"interpolation must be bilinear or bicubic, got "
                                   f"{_short(pre.get('interpolation'))}")
    for key in ("export", "model"):
        if not isinstance(metadata.get(key, {}), dict):
            raise bad(key, f"must be a mapping, got {_short(metadata[key])}")
    if not isinstance(metadata["export"].get("calibration", {}) or {}, dict):
        raise bad("export", "calibration must be a mapping")


def check_graph(metadata: dict[str, Any], outputs: int | None, image_size: int | None,
                source: str | Path) -> None:
    """The metadata against the graph: one label per output column, the graph's input size.
    None: the graph leaves that dimension open (then the first call is checked instead)."""
    names = metadata["label_names"]
    if outputs is not None and outputs != len(names):
        raise WeightsError(f"{source}: the graph outputs {outputs} scores per image, but its "
                           f"metadata names {len(names)} labels")
    size = metadata["preprocessing"]["image_size"]
    if image_size is not None and image_size != size:
        raise WeightsError(f"{source}: the graph takes {image_size} px images, but its metadata "
                           f"preprocessing says {size}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) \
            else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    check_external_data(model, Path(path))
    return from_strings({p.key: p.value for p in model.metadata_props}, path)


def check_external_data(model, path: Path) -> None:
    """Tensors stored beside the .onnx must lie in its folder: a ``location`` such as
    ``../../etc/passwd`` or an absolute path would make the runtime read any file."""
    import onnx
    folder = path.resolve().parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise WeightsError(f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, "
                               f"outside the model's folder; refused")
        if not target.is_file():
            raise WeightsError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, "
                               f"which is not a file beside the model")


def _tensors(graph):
    """Every tensor of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(sub)


def write_openvino_metadata(model, metadata: dict[str, Any]) -> None:
    """Set ``rt_info`` entries ``mlic/<key>`` of an ``openvino.Model``."""
    for key, value in to_strings(metadata).items():
        model.set_rt_info(value, ["mlic", key[len(PREFIX):]])


def read_openvino_metadata(model, path: str | Path) -> dict[str, Any]:
    info = model.get_rt_info()
    entries = info["mlic"] if "mlic" in list(info.keys()) else {}
    return from_strings({PREFIX + key: value.astype(str) for key, value in entries.items()}, path)
