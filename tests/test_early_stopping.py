"""EarlyStopping against hand-made metric sequences (the rule of deep-object-reid's
``exit_on_plateau_and_choose_best``, see docs/training.md) and the OneCycle warm-up test."""
from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

from mlic.engine.early_stopping import EarlyStopping, onecycle_warmup_finished


def run(stopper, metrics, warm=None):
    """Feed metrics; returns the 1-based epoch of the stop (None if none) and the (smooth, wait)s."""
    trace = []
    for epoch, metric in enumerate(metrics, 1):
        stop = stopper.update(metric, True if warm is None else warm[epoch - 1])
        trace.append((stopper.smooth, stopper.wait))
        if stop:
            return epoch, trace
    return None, trace


def test_hand_sequence_with_quirk():
    # e1 0.50 > 0     smooth 0.40            e2 0.60 > 0.40  smooth 0.56
    # e3 0.55 <= 0.56 wait 1                 e4 0.58 > 0.56  smooth 0.576, wait 0
    # e5 0.57 <= .576 wait 1                 e6 0.575: better than e5 but <= smooth: wait 2
    # e7 0.50         wait 3 = patience: stop
    epoch, trace = run(EarlyStopping(patience=3), [0.5, 0.6, 0.55, 0.58, 0.57, 0.575, 0.5, 0.9])
    assert epoch == 7
    smooths, waits = zip(*trace)
    assert smooths == pytest.approx([0.4, 0.56, 0.56, 0.576, 0.576, 0.576, 0.576])
    assert waits == (0, 0, 1, 0, 1, 2, 3)


def test_default_patience_and_equal_counts_as_bad():
    stopper = EarlyStopping()  # patience 5, smoothing 0.8
    assert stopper.update(0.5) is False and stopper.smooth == pytest.approx(0.4)
    # 0.40004 rounds to 0.4 = smooth: not an improvement
    stops = [stopper.update(m) for m in (0.40004, 0.3, 0.2, 0.1)]
    assert stops == [False] * 4 and stopper.wait == 4
    assert stopper.update(0.4) is True and stopper.wait == 5 and not stopper.perfect


def test_no_counting_during_warmup():
    metrics = [0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    warm = [False, False, False, False, True, True, True]
    epoch, trace = run(EarlyStopping(patience=2), metrics, warm)
    assert [w for _, w in trace] == [0, 0, 0, 0, 1, 2]
    assert epoch == 6


def test_warmup_default_from_constructor():
    flag = {"done": False}
    stopper = EarlyStopping(patience=1, warmup_finished=lambda: flag["done"])
    stopper.update(0.5)
    assert stopper.update(0.1) is False and stopper.wait == 0
    flag["done"] = True
    assert stopper.update(0.1) is True
    assert EarlyStopping(patience=1, warmup_finished=False).update(0.0) is False  # 0 <= smooth 0
    assert EarlyStopping(patience=1).update(0.0) is True  # None: no warm-up


def test_improvement_over_smooth_resets_wait():
    stopper = EarlyStopping(patience=3)
    for m in (0.5, 0.3, 0.3):
        stopper.update(m)
    assert stopper.wait == 2
    stopper.update(0.45)  # > smooth 0.4
    assert stopper.wait == 0 and stopper.smooth == pytest.approx(0.8 * 0.45 + 0.2 * 0.4)
    assert [stopper.update(0.1) for _ in range(3)] == [False, False, True]


def test_metric_of_one_stops_at_once():
    stopper = EarlyStopping(patience=5)
    assert stopper.update(0.9998) is False
    assert stopper.update(0.99986, warmup_finished=False) is True  # rounds to 0.9999: within 1e-4
    assert stopper.perfect and stopper.stopped
    assert EarlyStopping().update(0.99996) is True  # rounds to 1.0


def test_state_round_trip():
    metrics = [0.5, 0.6, 0.55, 0.58, 0.57, 0.575, 0.5]
    full, _ = run(EarlyStopping(patience=3), metrics)
    first = EarlyStopping(patience=3)
    run(first, metrics[:4])
    state = json.loads(json.dumps(first.state_dict()))  # plain numbers: fits any checkpoint
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    rest, _ = run(resumed, metrics[4:])
    assert rest is not None and 4 + rest == full == 7
    assert resumed.status == {"es_smooth": 0.576, "es_wait": 3}


def test_bad_arguments():
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError):
        EarlyStopping(smoothing=0.0)


def onecycle(total, pct):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total,
                                                    pct_start=pct)


@pytest.mark.parametrize("total,pct,first_done", [(10, 0.3, 3), (10, 0.25, 2), (50, 0.2, 10)])
def test_onecycle_warmup_finished(total, pct, first_done):
    opt, sched = onecycle(total, pct)
    done = []
    lrs = []
    for _ in range(total - 1):
        done.append(onecycle_warmup_finished(sched))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert done == [k >= first_done for k in range(total - 1)]
    rising, falling = lrs[:first_done], lrs[first_done:]
    assert all(a < b for a, b in pairwise(rising))  # warm-up: the LR rises
    assert all(a > b for a, b in pairwise(falling))  # finished: it anneals


def test_warmup_finished_for_other_schedulers():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert onecycle_warmup_finished(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5))
    assert onecycle_warmup_finished(None)

    class Own:
        warmup_finished = False

    assert onecycle_warmup_finished(Own()) is False
