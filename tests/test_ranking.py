"""mAP ranks the logits: float32 sigmoid probabilities tie at 1.0 above a logit of ~17.

A tie is ranked in sample order, so a model whose confident scores saturate gets an AP that depends
on the order of the split; the logits keep the model's own order (docs/metrics.md).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlic.config import load_config, with_defaults
from mlic.engine import Trainer
from mlic.engine.evaluate import metrics_report, predict_scores
from mlic.metrics import mean_average_precision
from mlic.models import create_model
from conftest import TINY_BACKBONE, tiny_config


def float32_probabilities(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).double().numpy()


def sklearn_map(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean([average_precision_score(targets[:, k], logits[:, k])
                          for k in range(targets.shape[1])]))


def test_ap_on_logits_where_float32_probabilities_tie() -> None:
    logits = np.array([[18.0, 0.5], [19.0, -1.0], [20.0, 2.0], [21.0, 0.0]])
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    probabilities = float32_probabilities(logits)
    assert (probabilities[:, 0] == 1.0).all()
    tied = mean_average_precision(probabilities, targets).per_class
    ranked = mean_average_precision(logits, targets).per_class
    assert tied[0] == pytest.approx((1 / 2 + 2 / 4) / 2)  # sample order: -, +, -, +
    assert ranked[0] == pytest.approx((1 + 2 / 3) / 2)  # logit order: +, -, +, -
    assert ranked[0] == pytest.approx(average_precision_score(targets[:, 0], logits[:, 0]),
                                      rel=1e-12)
    assert tied[1] == ranked[1] == 1.0  # unsaturated: the same order either way

    names = ["a", "b"]
    report = metrics_report(probabilities, targets, names, ranking=logits)
    plain = metrics_report(probabilities, targets, names)
    assert report["mAP"] == pytest.approx(sklearn_map(logits, targets), rel=1e-12)
    assert plain["mAP"] == pytest.approx(np.mean(tied))  # no ranking given: the probabilities
    assert report.keys() == plain.keys()
    assert [r["AP"] for r in report["per_class"]] == pytest.approx(ranked.tolist())
    # Thresholds apply to the probabilities: a logit of 0.5 is not predicted at 0.5, its 0.62 is.
    assert {k: v for k, v in report.items() if k not in ("mAP", "per_class")} == \
        {k: v for k, v in plain.items() if k not in ("mAP", "per_class")}


def saturated_batches(classes: int, n: int = 24, batch: int = 8):
    """A tiny model whose every logit is above 17 (bias 30), its images in batches, its logits and
    random targets (each class with positives and negatives)."""
    torch.manual_seed(0)
    model = create_model(TINY_BACKBONE, classes, head="linear").eval()
    targets = (np.random.default_rng(0).random((n, classes)) < 0.4).astype(np.int8)
    targets[0], targets[1] = 1, 0
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loader = [(images[i:i + batch], torch.from_numpy(targets[i:i + batch]))
              for i in range(0, n, batch)]
    with torch.no_grad():
        model.head.fc.weight.mul_(200.0)
        model.head.fc.bias.fill_(30.0)
        logits = torch.cat([model(x) for x, _ in loader]).double().numpy()  # batched as scored
    assert logits.min() > 17 and all(len(np.unique(logits[:, k])) == n for k in range(classes))
    return model, loader, logits, targets


def test_predict_scores_gives_the_logits_that_map_ranks() -> None:
    model, loader, logits, targets = saturated_batches(classes=3)
    scores = predict_scores(model, loader, torch.device("cpu"), progress=False)
    # float32, as the model gives them: the metrics cast a chunk at a time (tests/test_chunked_metrics.py)
    assert scores.logits.dtype == np.float32 and scores.probabilities.dtype == np.float32
    np.testing.assert_array_equal(scores.logits, logits)
    np.testing.assert_array_equal(scores.targets, targets)
    assert (scores.probabilities == 1.0).all()  # float32 sigmoid: every score tied
    names = ["a", "b", "c"]
    report = metrics_report(scores.probabilities, scores.targets, names, ranking=scores.logits)
    expected = sklearn_map(logits, targets)
    assert report["mAP"] == pytest.approx(expected, rel=1e-12)
    assert metrics_report(scores.probabilities, scores.targets, names)["mAP"] != \
        pytest.approx(expected, abs=1e-3)


def test_validation_map_of_the_trainer_ranks_logits(colour_dataset, tmp_path) -> None:
    """The mAP that selects the best weights and drives early stopping (``Trainer.evaluate``)."""
    config = load_config(None, base=with_defaults(tiny_config(colour_dataset, tmp_path / "runs")))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    trainer = Trainer(config, tmp_path / "run", progress=False, quiet=True)
    model, loader, logits, targets = saturated_batches(classes=len(trainer.label_names))
    report = trainer.evaluate(model, loader, "val model")
    assert report["mAP"] == pytest.approx(sklearn_map(logits, targets), rel=1e-12)
    assert report["mAP"] != pytest.approx(
        mean_average_precision(float32_probabilities(logits), targets).map, abs=1e-3)
