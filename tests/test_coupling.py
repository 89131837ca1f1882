"""A loss and its head coupled once (mlic.coupling), and the head registry it asks."""
from __future__ import annotations

import pytest
import torch

from mlic.coupling import build_coupled_loss, head_params_for_loss
from mlic.errors import ConfigError
from mlic.losses import LOSSES, takes_cosine_logits
from mlic.models.heads import HEAD_SPECS, build_head, head_spec
from mlic.models.heads.cosine import cosine_logits, cosine_scale, paired_cosine


def test_losses_say_what_they_need_of_the_head():
    assert {name for name in LOSSES if takes_cosine_logits(name)} == {"am", "aam"}
    assert takes_cosine_logits(" AAM ") and not takes_cosine_logits("bce")


def test_head_params_for_an_angular_loss():
    # The cosine form is switched on where the head has one and the config says nothing.
    assert head_params_for_loss("aam", {}, "linear", {}) == {"cosine": True}
    assert head_params_for_loss("aam", {}, "linear", {"cosine": False}) == {"cosine": False}
    assert head_params_for_loss("aam", {}, "ml_gcn", {}) == {}  # no cosine form to switch on
    # loss.params.scale reaches the head (and a label graph's decoder), never over the config.
    assert head_params_for_loss("am", {"scale": 17}, "ml_decoder", {}) == {"cosine": True,
                                                                         "scale": 17}
    assert head_params_for_loss("am", {"scale": 17}, "linear", {"scale": 9})["scale"] == 9
    params = head_params_for_loss("aam", {"scale": 17}, "label_graph", {"decoder": {"cosine": True}})
    assert params["decoder"] == {"scale": 17, "cosine": True}
    # Other losses leave the head alone.
    assert head_params_for_loss("bce", {}, "linear", {"pooling": "max"}) == {"pooling": "max"}


def test_the_built_loss_takes_the_built_heads_scale():
    head = build_head("linear", 8, 3, cosine=True, scale=11.0)
    loss = build_coupled_loss("aam", {}, head, "linear")
    assert loss.scale == 11.0 == cosine_scale(head)
    assert build_coupled_loss("am", {"scale": 11}, head, "linear").scale == 11.0
    with pytest.raises(ConfigError, match=r"loss.params.scale \(12\) differs from the head's scale"):
        build_coupled_loss("am", {"scale": 12}, head, "linear")
    with pytest.raises(ConfigError, match="model.head_params.cosine=true"):
        build_coupled_loss("aam", {}, build_head("linear", 8, 3), "linear")
    assert not hasattr(build_coupled_loss("bce", {}, head, "linear"), "scale")


def test_registry_reads_each_heads_parameters_once():
    spec = head_spec("linear")
    assert dict(spec.params) == {"pooling": "avg", "dropout": 0.0, "cosine": False, "scale": 23.0}
    assert not spec.takes_label_context and spec.takes("pooling") and not spec.takes("decoder")
    assert head_spec("label_graph").takes_label_context and head_spec("ml_gcn").takes_label_context
    assert {name for name, s in HEAD_SPECS.items() if s.takes("cosine")} == {
        "linear", "ml_decoder", "query2label", "label_graph", "ctran"}
    with pytest.raises(ConfigError, match="unknown head 'lineer'.*did you mean 'linear'"):
        head_spec("lineer")
    with pytest.raises(ConfigError, match=r"\['depth'\] not accepted by head 'linear'"):
        build_head("linear", 8, 3, depth=2)


def test_cosine_logits_against_hand_values():
    cos = torch.tensor([[0.5, -1.0000001, 1.2]])
    assert torch.equal(cosine_logits(cos, 10.0), torch.tensor([[5.0, -10.0, 10.0]]))  # clamped
    bias = torch.tensor([0.1, 0.0, -0.3])
    assert torch.allclose(cosine_logits(cos, 10.0, bias), torch.tensor([[6.0, -10.000001, 9.0]]))
    h = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])          # (B=1, C=2, D=2)
    w = torch.tensor([[4.0, 3.0], [0.0, 2.0]])            # (C, D)
    assert torch.allclose(paired_cosine(h, w), torch.tensor([[24 / 25, 0.0]]))
