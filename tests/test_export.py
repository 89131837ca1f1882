"""Export to ONNX and OpenVINO: parity with PyTorch for every head, metadata, INT8, the Predictor
on exported files alone, known labels, and the command line.

Parity is judged on probabilities, max |difference| <= 1e-4 in FP32 (OpenVINO with
INFERENCE_PRECISION_HINT=f32), with logits of a realistic size: cosine heads carry their scale
(s = 23), and the plain heads' last layer is rescaled so logits spread over about +-10, where a
float32 rounding error still moves a probability visibly (unlike logits in the thousands, which
saturate the sigmoid and would hide any difference).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mlic
from mlic.cli import main
from mlic.data.stats import conditional_cooccurrence
from mlic.engine.checkpoint import model_metadata, save_model
from mlic.errors import ConfigError, DataError, WeightsError
from mlic.inference import KnownLabelsIgnored, Predictor
from mlic.models.heads import HEADS
from mlic.models.heads.cosine import cosine_scale
from mlic.models.label_context import LabelContext

from conftest import TINY_BACKBONE, tiny_config

onnx = pytest.importorskip("onnx", reason="export tests need the export extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="export tests need the export extra (onnxruntime)")
ov = pytest.importorskip("openvino", reason="export tests need the export extra (openvino)")

from mlic.export import export_model
from mlic.export.metadata import read_onnx_metadata, read_openvino_metadata
from mlic.export.openvino import core
from mlic.export.runtime import read_metadata

NAMES = ["cat", "dog", "grass", "sky", "car", "tree"]
SIZE = 64
TOLERANCE = 1e-4

HEAD_CASES = {
    "linear": ("linear", {}),
    "linear_cosine": ("linear", {"cosine": True}),
    "ml_decoder": ("ml_decoder", {"embed_dim": 32, "ff_dim": 64, "num_heads": 4}),
    "ml_decoder_cosine": ("ml_decoder", {"embed_dim": 32, "ff_dim": 64, "num_heads": 4,
                                         "num_queries": 4, "cosine": True}),
    "label_graph": ("label_graph", {"embedding_dim": 8}),
    "label_graph_gcn_decoder": ("label_graph", {"embedding_dim": 8, "layer": "gcn", "decoder": {
        "embed_dim": 32, "ff_dim": 64, "num_heads": 4, "cosine": True}}),
    "ml_gcn": ("ml_gcn", {"embedding_dim": 8, "hidden_dim": 32}),
    "query2label": ("query2label", {"hidden_dim": 32, "ff_dim": 64, "input_projection": True}),
    "query2label_cosine": ("query2label", {"hidden_dim": 32, "ff_dim": 64, "cosine": True}),
    "ctran": ("ctran", {"hidden_dim": 32, "layers": 2}),
}
if "ctran" not in HEADS:  # the C-Tran head may not exist in every checkout
    HEAD_CASES.pop("ctran")


def label_context() -> LabelContext:
    rng = np.random.default_rng(0)
    targets = (rng.random((60, len(NAMES))) < 0.4).astype(np.float32)
    vectors = rng.normal(size=(len(NAMES), 8)).astype(np.float32)
    return LabelContext(NAMES, conditional_cooccurrence(targets), vectors, "random")


def realistic_images(count: int, seed: int) -> list[np.ndarray]:
    """Photo-like arrays (smooth gradients, shapes, sensor noise) and pure noise, odd sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        h, w = rng.integers(40, 120, size=2)
        if i % 3 == 2:
            images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            continue
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        image = np.stack([120 + 100 * x, 80 + 120 * y, 200 - 150 * x * y], -1)
        for _ in range(3):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 20)
            image[(np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r] \
                = rng.integers(0, 256, 3)
        image += rng.normal(0, 6, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


LAST_LAYER = {"linear": ["fc.weight", "fc.bias"], "ml_decoder": ["group_weight", "bias"],
              "query2label": ["class_weight", "class_bias"], "ml_gcn": ["gc2.weight"],
              "ctran": ["class_weight", "class_bias"]}


def scale_to_realistic_logits(model, images: torch.Tensor, target_std: float = 4.0) -> None:
    """Rescale a plain head's last layer so its logits spread like a trained model's (std ~4);
    cosine heads already give 23 * cosine."""
    head = model.model_config["head"]
    if cosine_scale(model.head) is not None or head not in LAST_LAYER:
        return
    params = dict(model.head.named_parameters())
    with torch.no_grad():
        factor = target_std / model(images).std().item()
        for name in LAST_LAYER[head]:
            params[name].mul_(factor)


@pytest.fixture(scope="module")
def head_runs(tmp_path_factory) -> dict[str, Path]:
    """One saved run (checkpoint only) per head, with tuned-looking per-class thresholds."""
    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    probe = torch.randn(8, 3, SIZE, SIZE)
    runs = {}
    for case, (head, params) in HEAD_CASES.items():
        model = mlic.create_model(TINY_BACKBONE, len(NAMES), head=head, head_params=params,
                                  image_size=SIZE, label_context=label_context()).eval()
        scale_to_realistic_logits(model, probe)
        thresholds = [0.3 + 0.05 * k for k in range(len(NAMES))]
        save_model(root / case / "checkpoints", "best", model.state_dict(),
                   model_metadata(model, NAMES, thresholds, epoch=3))
        runs[case] = root / case
    return runs


def label_states_for(count: int, seed: int = 0) -> np.ndarray:
    states = np.random.default_rng(seed).choice([-1.0, 0.0, 1.0], size=(count, len(NAMES)),
                                                p=[0.6, 0.2, 0.2]).astype(np.float32)
    states[0] = -1  # nothing known
    return states


def torch_outputs(run: Path, images: list[np.ndarray], states: np.ndarray | None):
    predictor = Predictor.load(run)
    batch = torch.stack([predictor._tensor(im) for im in images])
    with torch.no_grad():
        logits = predictor.model(batch, None if states is None else torch.from_numpy(states))
    return batch.numpy(), logits.numpy().astype(np.float64), predictor


# Each export takes seconds: the fast lane (-m "not slow") keeps the linear head in both forms, the
# paper's cosine ML-Decoder and the graph heads; the full suite runs every case.
SLOW_PARITY = ("ml_decoder", "label_graph_gcn_decoder", "query2label", "query2label_cosine", "ctran")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_PARITY else c
                                  for c in HEAD_CASES])
def test_parity_every_head_and_backend(case: str, head_runs, tmp_path) -> None:
    run = head_runs[case]
    images = realistic_images(7, seed=1)
    takes_states = HEAD_CASES[case][0] == "ctran"
    states = label_states_for(len(images)) if takes_states else None
    batch, logits, predictor = torch_outputs(run, images, states)
    probabilities = 1 / (1 + np.exp(-logits))
    assert 1.0 < np.abs(logits).max() < 60, "weights of realistic scale: logits of O(1-10)"

    onnx_path = export_model(run, "onnx", out=tmp_path)
    xml_path = export_model(run, "openvino", out=tmp_path)

    # The graph itself: both outputs, a batch size other than the one traced (2).
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"images": batch, **({"label_states": states} if takes_states else {})}
    got_p, got_logits = session.run(["probabilities", "logits"], feeds)
    assert got_p.shape == (len(images), len(NAMES))
    assert np.abs(got_p - probabilities).max() <= TOLERANCE
    assert np.abs(got_logits - logits).max() <= TOLERANCE * max(1.0, np.abs(logits).max())
    one = session.run(["probabilities"], {k: v[:1] for k, v in feeds.items()})[0]
    assert np.abs(one - probabilities[:1]).max() <= TOLERANCE

    compiled = core().compile_model(str(xml_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got_ov = compiled(feeds)[compiled.output("probabilities")]
    assert np.abs(got_ov - probabilities).max() <= TOLERANCE

    # And through the Predictor, with its preprocessing read from the files' metadata.
    known = None
    if takes_states:
        known = [{NAMES[j]: int(v) for j, v in enumerate(row) if v >= 0} for row in states]
    reference = predictor.scores(images, known=known)
    assert np.abs(reference - probabilities).max() <= 1e-6
    for path, backend in [(onnx_path, "onnxruntime"), (xml_path, "openvino"),
                          (onnx_path, "openvino")]:
        exported = Predictor.load(path, backend=backend, precision="f32")
        assert exported.takes_label_states == takes_states
        assert np.abs(exported.scores(images, batch_size=4, known=known) - reference).max() \
            <= TOLERANCE, (path.name, backend)


def test_exported_metadata_equals_the_run(head_runs, tmp_path) -> None:
    run = head_runs["ml_decoder_cosine"]
    checkpoint = json.loads((run / "checkpoints" / "best.json").read_text())
    onnx_path = export_model(run, "onnx", out=tmp_path)
    xml_path = export_model(run, "openvino", out=tmp_path, logits=False)
    from_onnx = read_onnx_metadata(onnx_path)
    from_xml = read_openvino_metadata(core().read_model(str(xml_path)), xml_path)
    for meta in (from_onnx, from_xml):
        assert meta["label_names"] == NAMES == checkpoint["label_names"]
        assert meta["thresholds"] == checkpoint["thresholds"]
        assert meta["preprocessing"] == checkpoint["preprocessing"]
        assert meta["preprocessing"]["image_size"] == SIZE
        assert meta["model"] == checkpoint["model"]
        assert meta["epoch"] == 3
        assert meta["export"]["precision"] == "fp32"
    assert set(from_onnx["export"]["outputs"]) == {"probabilities", "logits"}
    assert set(from_xml["export"]["outputs"]) == {"probabilities"}
    assert [o.any_name for o in core().read_model(str(xml_path)).outputs] == ["probabilities"]
    # Plain ONNX tooling sees it too: the keys are ordinary metadata_props.
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["mlic.label_names"]) == NAMES
    assert "sigmoid" in onnx.load(str(onnx_path)).doc_string


def test_a_single_threshold_is_expanded_per_class(tmp_path) -> None:
    model = mlic.create_model(TINY_BACKBONE, 3, image_size=32).eval()
    save_model(tmp_path / "run" / "checkpoints", "best", model.state_dict(),
               model_metadata(model, ["a", "b", "c"], 0.4))
    meta = read_onnx_metadata(export_model(tmp_path / "run", "onnx"))
    assert meta["thresholds"] == [0.4, 0.4, 0.4]
    assert (tmp_path / "run" / "export" / "model.onnx").is_file()


def graph_ops(path: Path) -> list[str]:
    """The operations of an exported graph, constants left out."""
    return sorted(node.op_type for node in onnx.load(str(path)).graph.node
                  if node.op_type != "Constant")


def test_label_graph_is_folded_into_constants(head_runs, tmp_path) -> None:
    """The GAT branch is image-independent: the exported graph is the pooled cosine head plus one
    multiplication by a constant channel-weight vector (omega, computed once when exported),
    with no graph layer left in it."""
    graph = graph_ops(export_model(head_runs["label_graph"], "onnx", out=tmp_path / "graph"))
    plain = graph_ops(export_model(head_runs["linear_cosine"], "onnx", out=tmp_path / "plain"))
    assert len(graph) == len(plain) + 1
    assert graph.count("Mul") == plain.count("Mul") + 1
    proto = onnx.load(str(tmp_path / "graph" / "model.onnx"))
    assert not [i.name for i in proto.graph.initializer if "gc1" in i.name or "nodes" in i.name]
    gcn = graph_ops(export_model(head_runs["ml_gcn"], "onnx", out=tmp_path / "gcn"))
    assert "Elu" not in gcn and "Softmax" not in gcn


@pytest.fixture(scope="module")
def trained_run(colour_dataset, tmp_path_factory) -> Path:
    config = tiny_config(colour_dataset, tmp_path_factory.mktemp("runs"), epochs=3)
    config["data"]["image_size"] = SIZE
    return mlic.train(config, progress=False, quiet=True)


def test_predictor_on_exported_files_alone_gives_the_runs_predictions(trained_run, colour_dataset,
                                                                      tmp_path) -> None:
    images = sorted((colour_dataset["root"] / "test_images").glob("*.png"))[:10]
    expected = Predictor.load(trained_run).predict(images)
    for fmt in ("onnx", "openvino"):
        exported = export_model(trained_run, fmt, out=tmp_path / "export")
        alone = tmp_path / f"alone_{fmt}"  # no run folder, no config, no checkpoint beside it
        alone.mkdir()
        for file in exported.parent.glob(exported.stem + ".*"):
            shutil.copy(file, alone)
        predictor = Predictor.load(alone / exported.name, precision="f32")
        got = predictor.predict(images)
        for want, have in zip(expected, got):
            assert want["labels"] == have["labels"]
            assert want["scores"].keys() == have["scores"].keys()
            assert max(abs(want["scores"][k] - have["scores"][k]) for k in want["scores"]) <= TOLERANCE
    # A run folder on an exported backend is exported on the fly.
    on_the_fly = Predictor.load(trained_run, backend="onnxruntime")
    assert on_the_fly.backend == "onnxruntime"
    assert np.abs(on_the_fly.scores(images) - Predictor.load(trained_run).scores(images)).max() \
        <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_calibrated_on_the_training_split(trained_run, colour_dataset, fmt, tmp_path) -> None:
    pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    path = export_model(trained_run, fmt, out=tmp_path, int8=True, calibration_size=16)
    assert path.name == f"model_int8{path.suffix}"
    meta = read_metadata(path)
    assert meta["export"]["precision"] == "int8"
    assert meta["export"]["calibration"]["images"] == 16
    from mlic.export.quantize import cpu_has_vnni
    assert meta["export"]["calibration"]["overflow_fix"] == ("first_layer" if cpu_has_vnni() else "all")
    assert meta["export"]["calibration"]["exported_on_vnni_cpu"] == cpu_has_vnni()
    assert meta["export"]["calibration"]["bias_correction"] == "full"
    if fmt == "onnx":
        assert "QuantizeLinear" in graph_ops(path)
    else:
        assert "FakeQuantize" in path.read_text()
    images = sorted((colour_dataset["root"] / "test_images").glob("*.png"))
    fp32 = Predictor.load(trained_run).scores(images)
    int8 = Predictor.load(path, precision="f32")
    assert int8.describe().startswith(("onnxruntime, int8", "openvino, int8"))
    # Quantized, so not equal; but the same model: close scores, and the same ranking of images.
    scores = int8.scores(images)
    assert 0 < np.abs(scores - fp32).max() < 0.15
    assert np.corrcoef(scores.ravel(), fp32.ravel())[0, 1] > 0.98


def int8_weight_magnitudes(path: Path) -> list[int]:
    """Largest |integer| of each int8 weight tensor of a quantized .onnx or .xml."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper
        graph = onnx.load(str(path)).graph
        weights = [numpy_helper.to_array(t) for t in graph.initializer]
    else:
        weights = [op.get_data() for op in core().read_model(str(path)).get_ordered_ops()
                   if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"]
    return [int(np.abs(w.astype(np.int32)).max()) for w in weights if w.dtype == np.int8 and w.size > 1]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_weights_have_7_bits_unless_asked(trained_run, fmt, tmp_path) -> None:
    """7-bit weights (|q| <= 64) keep AVX2's saturating int16 pair sums exact; the default gives
    them to every layer, NNCF's own default (first_layer) to the first convolution only."""
    pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    everywhere = int8_weight_magnitudes(export_model(
        trained_run, fmt, out=tmp_path / "all", int8=True, calibration_size=8, overflow_fix="all"))
    first = int8_weight_magnitudes(export_model(
        trained_run, fmt, out=tmp_path / "first", int8=True, calibration_size=8,
        overflow_fix="first_layer"))
    assert len(everywhere) == len(first) > 3
    # Depthwise convolutions do not pair-sum, so NNCF leaves them 8-bit either way.
    assert sum(m <= 64 for m in everywhere) > sum(m <= 64 for m in first) >= 1
    assert max(first) == 127
    with pytest.raises(ConfigError, match="overflow fix"):
        export_model(trained_run, fmt, out=tmp_path / "bad", int8=True, overflow_fix="every")


@pytest.mark.parametrize("has_vnni, expected", [(True, "first_layer"), (False, "all")])
def test_overflow_fix_auto_follows_the_cpu(monkeypatch, has_vnni, expected) -> None:
    from mlic.export import quantize
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: has_vnni)
    assert quantize.resolve_overflow_fix("auto") == expected
    assert quantize.resolve_overflow_fix("none") == "none"


def test_cpu_has_vnni_reads_the_cpu_flags(monkeypatch, tmp_path) -> None:
    from mlic.export import quantize
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(quantize, "CPUINFO", str(info))
    for flags, expected in [("fpu avx2 avx512f", False), ("fpu avx2 avx512_vnni", True),
                            ("fpu avx_vnni", True), ("fpu amx_int8 amx_tile", True)]:
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert quantize.cpu_has_vnni() is expected
    assert quantize.cpu_flags() == {"fpu", "amx_int8", "amx_tile"}
    info.unlink()
    assert quantize.cpu_flags() == set()
    assert quantize.cpu_has_vnni() is False  # unreadable: the choice that is exact everywhere


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_8_bit_int8_weights_warn_on_a_cpu_without_vnni(trained_run, monkeypatch, fmt,
                                                        tmp_path) -> None:
    pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    from mlic.export import quantize
    from mlic.export.runtime import Int8WeightsMaySaturate
    eight = export_model(trained_run, fmt, out=tmp_path / "8", int8=True, calibration_size=8,
                         overflow_fix="first_layer")
    seven = export_model(trained_run, fmt, out=tmp_path / "7", int8=True, calibration_size=8,
                         overflow_fix="all")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    with pytest.warns(Int8WeightsMaySaturate, match="--overflow-fix all"):
        Predictor.load(eight)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int8WeightsMaySaturate)
        Predictor.load(seven)  # 7-bit weights are exact on any CPU
        monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
        Predictor.load(eight)


def test_validation_map_equals_the_metric_on_torch_scores(trained_run, colour_dataset,
                                                           tmp_path) -> None:
    """The accuracy control's metric is mAP in points, the same as mlic.metrics on the same images'
    logits; an export without logits is ranked on its probabilities."""
    from mlic.engine.checkpoint import load_model
    from mlic.export.quantize import _runner, validation_inputs, validation_map
    from mlic.export.runtime import TorchRuntime
    from mlic.metrics import mean_average_precision
    model, meta = load_model(trained_run)
    items = validation_inputs(str(colour_dataset["test"]), model, meta["label_names"], size=20)
    assert len(items) == 20
    runtime = TorchRuntime(model)
    images = np.concatenate([inputs["images"] for inputs, _ in items])
    targets = np.stack([t for _, t in items])
    expected = 100 * mean_average_precision(runtime(images, output="logits"), targets).map
    onnx_path = export_model(trained_run, "onnx", out=tmp_path)
    assert validation_map(onnx.load(str(onnx_path)), items) == pytest.approx(expected, abs=1e-3)
    assert validation_map(core().read_model(str(onnx_path)), items, batch_size=7) == \
        pytest.approx(expected, abs=1e-3)
    bare_path = export_model(trained_run, "onnx", out=tmp_path / "bare", logits=False)
    for path, output in ((onnx_path, "logits"), (bare_path, "probabilities")):
        for graph in (onnx.load(str(path)), core().read_model(str(path))):
            np.testing.assert_allclose(_runner(graph)({"images": images}),
                                       runtime(images, output=output), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_accuracy_control_reverts_layers_until_within_max_drop(trained_run, fmt,
                                                                    tmp_path) -> None:
    """Calibrated on one image of the mean colour (all zeros once normalised), the input's range
    is nearly zero and INT8 loses mAP on the validation split; max_drop 0 then returns quantizers
    to floating point until nothing is lost, while a drop that anything satisfies keeps every
    quantizer."""
    pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    from PIL import Image

    from mlic.engine.checkpoint import load_model
    from mlic.export.quantize import count_quantizers
    mean = load_model(trained_run)[0].preprocessing.mean
    Image.new("RGB", (SIZE, SIZE), tuple(round(255 * m) for m in mean)).save(tmp_path / "grey.png")
    (tmp_path / "grey.csv").write_text("image,labels\ngrey.png,cat\n")
    calibration = {"path": str(tmp_path / "grey.csv"), "root": str(tmp_path)}

    def export(name: str, **options) -> tuple[Path, dict | None]:
        path = export_model(trained_run, fmt, out=tmp_path / name, int8=True,
                            calibration_data=calibration, **options)
        graph = onnx.load(str(path)) if fmt == "onnx" else core().read_model(str(path))
        meta = read_onnx_metadata(path) if fmt == "onnx" else read_openvino_metadata(graph, path)
        return count_quantizers(graph), meta["export"]["calibration"].get("accuracy_control")

    all_quantized, none = export("plain")
    assert none is None and all_quantized > 3
    kept, loose = export("loose", max_drop=100.0, validation_size=24)
    assert kept == loose["quantized_inputs"] == all_quantized
    assert loose["validation_images"] == 24 and loose["validation_data"] == "val split"
    assert loose["fp32_map"] - loose["int8_map"] > 1  # what the narrow calibration costs
    kept, strict = export("strict", max_drop=0.0, validation_size=24)
    assert kept == strict["quantized_inputs"] < all_quantized
    assert strict["fp32_map"] - strict["int8_map"] <= 1e-6 or kept == 0


def test_int8_accuracy_control_needs_int8_and_validation_images(trained_run, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--int8"):
        export_model(trained_run, "onnx", out=tmp_path, max_drop=1.0)
    with pytest.raises(ConfigError, match="cannot be negative"):
        export_model(trained_run, "onnx", out=tmp_path, int8=True, max_drop=-1.0)
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    no_val = tmp_path / "run_without_val"
    shutil.copytree(trained_run / "checkpoints", no_val / "checkpoints")
    config["data"]["val"] = None
    (no_val / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="no data.val split; pass --validation-data"):
        export_model(no_val, "onnx", out=tmp_path, int8=True, max_drop=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("case", ["ml_decoder_cosine", "label_graph", "query2label", "ctran"])
def test_int8_export_of_every_kind_of_head(head_runs, colour_dataset, case, fmt, tmp_path) -> None:
    """Attention heads (NNCF's transformer mode), the folded label graph and C-Tran's label states
    quantize and run; the bias correction used is recorded (the full one fails on C-Tran ONNX)."""
    pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    if case not in HEAD_CASES:
        pytest.skip(f"no {case} head in this checkout")
    path = export_model(head_runs[case], fmt, out=tmp_path, int8=True, calibration_size=8,
                        calibration_data=str(colour_dataset["train"]))
    assert read_metadata(path)["export"]["calibration"]["bias_correction"] in ("full", "fast")
    images = sorted((colour_dataset["root"] / "test_images").glob("*.png"))[:4]
    int8 = Predictor.load(path, precision="f32").scores(images)
    fp32 = Predictor.load(head_runs[case]).scores(images)
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    assert np.corrcoef(int8.ravel(), fp32.ravel())[0, 1] > 0.9


@pytest.mark.slow
def test_int8_falls_back_to_fast_bias_correction_when_the_full_one_fails(trained_run, monkeypatch,
                                                                        tmp_path) -> None:
    """NNCF 3.4's full bias correction raises KeyError on ONNX EfficientNetV2-S graphs."""
    nncf = pytest.importorskip("nncf", reason="INT8 export needs nncf (export extra)")
    real = nncf.quantize

    def failing_full(*args, fast_bias_correction=True, **kwargs):
        if not fast_bias_correction:
            raise KeyError("/model/backbone/conv_stem/Conv")
        return real(*args, fast_bias_correction=fast_bias_correction, **kwargs)
    monkeypatch.setattr(nncf, "quantize", failing_full)
    with pytest.warns(UserWarning, match="full bias correction failed .KeyError"):
        path = export_model(trained_run, "onnx", out=tmp_path, int8=True, calibration_size=8)
    assert read_metadata(path)["export"]["calibration"]["bias_correction"] == "fast"
    assert "QuantizeLinear" in graph_ops(path)


def test_nncf_calls_share_the_one_openvino_core() -> None:
    """A released OpenVINO Core can leave the signal stack on freed memory (docs/robustness.md):
    while NNCF runs, openvino.Core() and openvino.compile_model use mlic's one Core."""
    from mlic.export.openvino import one_core
    real = ov.Core
    with one_core() as shared:
        assert ov.Core() is shared is core()
        model = ov.Model([ov.opset13.relu(p := ov.opset13.parameter([1, 2], ov.Type.f32))], [p])
        assert np.array_equal(ov.compile_model(model, "CPU")(np.array([[-1.0, 2.0]], np.float32))[0],
                              [[0.0, 2.0]])
    assert ov.Core is real


def test_int8_needs_calibration_images(tmp_path) -> None:
    model = mlic.create_model(TINY_BACKBONE, 2, image_size=32).eval()
    save_model(tmp_path / "ckpt", "best", model.state_dict(), model_metadata(model, ["a", "b"]))
    with pytest.raises(ConfigError, match="calibration"):
        export_model(tmp_path / "ckpt", "onnx", int8=True)


# ---------------------------------------------------------------- known labels

def test_known_labels_reach_ctran_on_every_backend(head_runs, tmp_path) -> None:
    if "ctran" not in HEAD_CASES:
        pytest.skip("no C-Tran head in this checkout")
    run = head_runs["ctran"]
    images = realistic_images(3, seed=4)
    torch_predictor = Predictor.load(run)
    known = {"dog": 1, "cat": 0}
    told = torch_predictor.scores(images, known=known)
    assert np.abs(told - torch_predictor.scores(images)).max() > 1e-3  # it does change the scores
    states = np.full((3, len(NAMES)), -1.0, dtype=np.float32)
    states[:, NAMES.index("dog")], states[:, NAMES.index("cat")] = 1, 0
    _, logits, _ = torch_outputs(run, images, states)
    assert np.abs(told - 1 / (1 + np.exp(-logits))).max() <= 1e-6
    per_image = torch_predictor.scores(images, known=[known, {}, {"sky": True}])
    assert np.array_equal(per_image[0], told[0])
    assert np.allclose(per_image[1], torch_predictor.scores(images[1:2])[0], atol=1e-6, rtol=0)
    assert not np.allclose(per_image[2], told[2], atol=1e-3)
    for path in (export_model(run, "onnx", out=tmp_path), export_model(run, "openvino", out=tmp_path)):
        exported = Predictor.load(path, precision="f32")
        assert np.abs(exported.scores(images, known=known) - told).max() <= TOLERANCE


def test_known_label_errors(head_runs) -> None:
    predictor = Predictor.load(head_runs["linear"])
    image = realistic_images(1, seed=5)
    with pytest.raises(DataError, match=r"'dgo' \(did you mean 'dog'\?\), 'unicorn'"):
        predictor.predict(image, known={"dgo": 1, "unicorn": 0, "cat": 1})
    with pytest.raises(DataError, match="'cat': value 2 is not 1"):
        predictor.predict(image, known={"cat": 2})
    with pytest.raises(DataError, match="value 'yes'"):
        predictor.predict(image, known={"cat": "yes"})
    with pytest.raises(DataError, match="2 dicts for 1 images"):
        predictor.predict(image, known=[{}, {}])
    with pytest.raises(DataError, match="expected a dict"):
        predictor.predict(image, known=[["cat"]])
    # A head without label states: same scores, and a warning that says so.
    with pytest.warns(KnownLabelsIgnored, match="linear head takes no label states"):
        ignored = predictor.scores(image, known={"cat": 1})
    assert np.array_equal(ignored, predictor.scores(image))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.scores(image)  # no known labels, no warning


# ---------------------------------------------------------------- bad input and the CLI

def test_loading_errors(head_runs, tmp_path) -> None:
    onnx_path = export_model(head_runs["linear"], "onnx", out=tmp_path)
    xml_path = export_model(head_runs["linear"], "openvino", out=tmp_path)
    with pytest.raises(ConfigError, match="runs on onnxruntime or openvino, not torch"):
        Predictor.load(onnx_path, backend="torch")
    with pytest.raises(ConfigError, match="onnxruntime runs .onnx files"):
        Predictor.load(xml_path, backend="onnxruntime")
    with pytest.raises(ConfigError, match="backend must be one of"):
        Predictor.load(onnx_path, backend="tensorrt")
    with pytest.raises(ConfigError, match="no such model file"):
        Predictor.load(tmp_path / "missing.onnx")
    foreign = onnx.load(str(onnx_path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(WeightsError, match="not a model exported by `mlic export`"):
        Predictor.load(tmp_path / "foreign.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(WeightsError, match="broken.onnx"):
        Predictor.load(tmp_path / "broken.onnx")
    with pytest.raises(ConfigError, match="export format must be one of"):
        export_model(head_runs["linear"], "tflite")
    with pytest.raises(ConfigError, match=r"written as \*.xml"):
        export_model(head_runs["linear"], "openvino", out=tmp_path / "model.onnx")


def test_cli_export_predict_bench(trained_run, colour_dataset, tmp_path, capsys) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    assert "probabilities (sigmoid inside the graph) and logits" in capsys.readouterr().out
    # An image none of whose scores sits at its threshold (chosen on validation scores, which for
    # this fixture are the test images' own): float32 rounding may tip a score right at the cut.
    predictor = Predictor.load(trained_run)
    images = sorted((colour_dataset["root"] / "test_images").glob("*.png"))
    image = str(next(p for p, s in zip(images, predictor.scores(images))
                     if (abs(s - predictor.thresholds) > 1e-4).all()))
    assert main(["predict", str(out), image, "--top", "0"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)[0]
    assert main(["predict", str(trained_run), image, "--top", "0"]) == 0
    from_run = json.loads(capsys.readouterr().out)[0]
    assert from_onnx["labels"] == from_run["labels"]
    assert main(["predict", str(out), image, "--known", "red=1,blue=0", "--backend", "openvino",
                 "--precision", "f32"]) == 0
    assert "linear head takes no label states" in capsys.readouterr().err
    assert main(["predict", str(out), image, "--known", "purple=1"]) == 2
    assert "'purple'" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "int8.onnx"), "--int8",
                 "--calibration-size", "8", "--overflow-fix", "all", "--max-drop", "100",
                 "--validation-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 8 images; overflow fix all (7-bit weights everywhere)" in printed
    assert "accuracy control on 8 validation images: mAP" in printed and "(max drop 100)" in printed
    assert main(["export", str(trained_run), "--max-drop", "1"]) == 2
    assert "add int8 (--int8)" in capsys.readouterr().err
    assert main(["predict", str(out), image, "--known", "red"]) == 2
    assert "expected label=1 or label=0" in capsys.readouterr().err
    assert main(["bench", str(out), "--repeats", "3", "--warmup", "1", "--batch-size", "2",
                 "--json", str(tmp_path / "bench.json")]) == 0
    table = capsys.readouterr().out
    assert "| onnxruntime | fp32 | f32 |" in table and "| openvino | fp32 |" in table
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert {r["backend"] for r in rows} == {"onnxruntime", "openvino"}
    assert all(0 < r["p50_ms"] <= r["p90_ms"] and r["images_per_s"] > 0 for r in rows)


def test_reductions_keep_their_axes_for_openvino(tmp_path) -> None:
    """OpenVINO 2026.4's CPU plugin miscompiles ``(h * w).sum(-1) + bias`` (keepdims=0, then a
    per-class vector): the rewrite in mlic.export.keepdims must give the right values on it."""
    from mlic.export.keepdims import keep_reduced_dims

    class GroupWise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(6, 16))
            self.bias = torch.nn.Parameter(torch.randn(6))

        def forward(self, h):
            return (h * self.weight).sum(-1) + self.bias, h.mean(-1) * self.bias

    module, path = GroupWise().eval(), tmp_path / "groupwise.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 6, 16),), str(path), dynamo=False,
                          input_names=["h"], output_names=["a", "b"], opset_version=17,
                          dynamic_axes={"h": {0: "batch"}})
    proto = onnx.load(str(path))
    assert keep_reduced_dims(proto) == 2
    onnx.save(proto, str(path))
    h = np.random.default_rng(0).normal(size=(3, 6, 16)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.from_numpy(h))]
    compiled = core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for got in (list(compiled(h).values()), session.run(None, {"h": h})):
        for want, have in zip(expected, got):
            assert np.abs(want - have).max() < 1e-5
