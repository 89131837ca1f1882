"""DDP on CPUs: gloo, 2 processes started by torchrun, against single-process runs.

The exact comparisons use timm's ``test_efficientnet_gn`` (GroupNorm): with BatchNorm each process
normalises its half of the batch with that half's statistics, which one process with the whole batch
does not, so the weights would differ by more than float noise (SyncBatchNorm is the fix, but
torch's runs on GPUs only). All targets are known and the halves are equal, so the mean of the two
processes' mean losses is the whole batch's mean loss, and the averaged gradient is its gradient.
The BatchNorm model is used where the claim is about evaluation (every rank must score with the
same weights and statistics as the saved checkpoint).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_colour_images, tiny_config, write_plain_csv
from mlic.engine import distributed, train
from mlic.errors import ConfigError
from mlic.tracking import read_steps

STOP_AFTER_FIRST_EPOCH = """
import json, sys
from mlic.engine import train
train(json.load(open(sys.argv[1])), progress=False, quiet=True,
      on_epoch_end=lambda epoch, row: epoch >= 1)
"""


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory) -> dict[str, Path]:
    """48 training images (3 global batches of 16), 25 test images: an odd split leaves one rank
    an image more, which a padded sampler would count twice."""
    root = tmp_path_factory.mktemp("ddp_data")
    return {"train": write_plain_csv(root / "train.csv", make_colour_images(root / "tr", 48, 0), "tr/"),
            "test": write_plain_csv(root / "test.csv", make_colour_images(root / "te", 25, 1), "te/")}


def ddp_config(dataset, out: Path, backbone: str = "test_efficientnet_gn", **train_cfg) -> dict:
    cfg = tiny_config(dataset, out, ema=0.9, **train_cfg)
    cfg["model"]["backbone"] = backbone
    cfg["data"]["augment"]["hflip"] = False  # no random augmentation: both runs see the same pixels
    return cfg


def torchrun(args: list[str], cwd: Path) -> str:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` on CPUs; its output (fails the test on error)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_weights(a: Path, b: Path, tag: str = "last", atol: float = 1e-3) -> None:
    """Equal up to float noise as AdamW amplifies it. AdamW divides each gradient element by its
    running RMS, so where a gradient is near zero the rounding difference of gloo's all-reduce
    (another summation order) can change that element's step by a sizeable share of the learning
    rate: up to 2.4e-4 seen on AMD EPYC after 6 steps at lr 0.01. A DDP run that did not average
    its gradients would be off by about a whole step (lr = 1e-2) in most weights, and its losses
    and metrics (compared too) would differ."""
    wa, wb = load_file(a / "checkpoints" / f"{tag}.safetensors"), load_file(b / "checkpoints" / f"{tag}.safetensors")
    assert wa.keys() == wb.keys()
    for key in (k for k in wa if wa[k].numel()):
        a, b = wa[key].double(), wb[key].double()
        difference = float((a - b).abs().max())
        assert difference <= atol + 1e-4 * float(b.abs().max()), f"{key}: max |difference| {difference:.2e}"


def assert_same_metrics(single: Path, ddp: Path) -> None:
    rows_s, rows_d = metrics_rows(single), metrics_rows(ddp)
    assert len(rows_s) == len(rows_d) == 2  # rank 0 alone writes metrics.csv
    steps_s, steps_d = ([r["step"] for r in read_steps(run)] for run in (single, ddp))
    assert steps_d == steps_s and steps_s  # and steps.csv: each step once, none lost on resume
    for rs, rd in zip(rows_s, rows_d):
        for key in ("epoch", "steps", "skipped_steps", "selected"):
            assert rs[key] == rd[key], key
        for key in ("lr", "train_loss", "val_mAP", "val_mAP_ema", "best_mAP"):
            assert float(rs[key]) == pytest.approx(float(rd[key]), abs=1e-4), key
    es, ed = (json.loads((r / "eval_test.json").read_text()) for r in (single, ddp))
    assert ed["num_images"] == es["num_images"] == 25
    for key in ("mAP", "CF1", "OF1"):
        assert ed[key] == pytest.approx(es[key], abs=1e-6), key
    assert [c["AP"] for c in ed["per_class"]] == pytest.approx([c["AP"] for c in es["per_class"]],
                                                               abs=1e-6)


@pytest.mark.slow
def test_ddp_without_sam_is_the_single_process_run_and_resumes(uneven_dataset, tmp_path):
    """Same global batch and seed: the same weights, metrics and reports; the DDP run is stopped
    after epoch 1 and continued by `torchrun -m mlic train --resume`."""
    single = train(ddp_config(uneven_dataset, tmp_path / "single"), progress=False, quiet=True)

    config = tmp_path / "config.json"
    config.write_text(json.dumps(ddp_config(uneven_dataset, tmp_path / "ddp")))
    (tmp_path / "stop.py").write_text(STOP_AFTER_FIRST_EPOCH)
    torchrun(["stop.py", str(config)], tmp_path)
    ddp = only_run(tmp_path / "ddp")
    assert len(metrics_rows(ddp)) == 1
    output = torchrun(["-m", "mlic", "train", "--resume", str(ddp), "--no-progress"], tmp_path)

    assert output.count("resumed from") == 1  # logged by rank 0 only
    assert_same_weights(single, ddp)
    assert_same_metrics(single, ddp)
    log = (ddp / "train.log").read_text()
    assert log.count("epoch 2/2") == 1 and log.count("done:") == 2  # one line per run, rank 0's
    assert log.count("report: ") == 2 and (ddp / "report.html").is_file()  # rank 0 writes it


@pytest.mark.slow
def test_ddp_with_global_sam_is_the_single_process_run(uneven_dataset, tmp_path):
    """SAM's perturbation from the all-reduced gradient: the single-process SAM run exactly."""
    sam = {"sam": True, "sam_perturbation": "global", "optimizer": "sgd", "lr": 0.05}
    single = train(ddp_config(uneven_dataset, tmp_path / "single", **sam), progress=False, quiet=True)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(ddp_config(uneven_dataset, tmp_path / "ddp", **sam)))
    torchrun(["-m", "mlic", "train", "--config", str(config), "--no-progress"], tmp_path)
    ddp = only_run(tmp_path / "ddp")
    assert_same_weights(single, ddp, atol=1e-4)  # SGD: no AdamW amplification
    assert_same_metrics(single, ddp)


@pytest.mark.slow
def test_ddp_local_sam_batchnorm_evaluation_equals_checkpoint_evaluation(uneven_dataset, tmp_path):
    """Local SAM (first pass under no_sync), gradient accumulation, EMA and BatchNorm: the ranks
    stay in step (same weights, rank 0's BatchNorm statistics), so the validation mAP the run
    gathered from both ranks' models (13 + 12 images) is the single-process evaluation of the
    checkpoints it saved: ``last`` (the model after epoch 2) and ``best`` (model or EMA)."""
    from mlic.evaluation import evaluate
    cfg = ddp_config(uneven_dataset, tmp_path / "ddp", backbone="test_efficientnet", sam=True,
                     sam_perturbation="local", accumulate=2, optimizer="sgd", lr=0.05)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    torchrun(["-m", "mlic", "train", "--config", str(config), "--no-progress"], tmp_path)
    run = only_run(tmp_path / "ddp")
    rows = metrics_rows(run)
    assert [r["skipped_steps"] for r in rows] == ["0", "0"]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])

    def single_process(tag: str, split: str) -> dict:
        return evaluate(run, split=split, tag=tag, device="cpu", num_workers=0, batch_size=7,
                        progress=False)

    assert float(rows[1]["val_mAP"]) == pytest.approx(single_process("last", "val")["mAP"], abs=1e-5)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["val_mAP"] == pytest.approx(single_process("best", "val")["mAP"], abs=1e-6)

    saved = json.loads((run / "eval_test.json").read_text())
    again = single_process("best", "test")
    assert saved["num_images"] == again["num_images"] == 25
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert saved[key] == pytest.approx(again[key], abs=1e-6), key
    assert [c["AP"] for c in saved["per_class"]] == pytest.approx(
        [c["AP"] for c in again["per_class"]], abs=1e-6)


LOCAL_SAM_OVERFLOW = """
import math, torch, torch.distributed as dist
from torch import nn
from mlic.engine.sam import SAMStep
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Linear(4, 3)
step = SAMStep(nn.parallel.DistributedDataParallel(model), nn.BCEWithLogitsLoss(),
               torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"),
               scaler=torch.amp.GradScaler("cpu"), perturbation="local")
torch.manual_seed(1 + rank)
images, targets = torch.randn(6, 4), (torch.rand(6, 3) > 0.5).float()
bad = images.clone()
bad[0, 0] = math.inf if rank == 1 else 0.0  # an overflow in rank 1's first pass only
before = [p.detach().clone() for p in model.parameters()]
_, stepped = step(bad, targets)
assert not stepped, "rank 0 stepped although rank 1's gradient overflowed"
assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
assert step.scaler.get_scale() == 2.0 ** 15  # lowered on every rank
_, stepped = step(images, targets)
assert stepped
state = torch.cat([p.detach().flatten() for p in model.parameters()] +
                  [torch.tensor([step.scaler.get_scale()])])
copies = [torch.empty_like(state) for _ in range(2)]
dist.all_gather(copies, state)
assert torch.equal(copies[0], copies[1]), "the ranks diverged"
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_local_sam_skips_on_every_rank_when_one_overflows(tmp_path):
    """With local perturbation an overflow can happen on one rank only: every rank must skip the
    step and lower its gradient scaler alike, or the weights diverge."""
    (tmp_path / "overflow.py").write_text(LOCAL_SAM_OVERFLOW)
    torchrun(["overflow.py"], tmp_path)


# ---------------------------------------------------------------- single-process behaviour
def test_shards_cover_every_image_once():
    for size in (0, 1, 7, 25):
        for world in (1, 2, 3, 8):
            shards = [list(distributed.ShardSampler(size, r, world)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(size))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            merged = np.empty(size, dtype=int)  # gather_rows's interleaving puts them back in order
            for r, s in enumerate(shards):
                merged[r::world] = s
            assert merged.tolist() == list(range(size))


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.is_main()
    assert distributed.init_from_env("cpu") is False
    rows = np.arange(12.0).reshape(4, 3)
    assert distributed.gather_rows(rows) is rows
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.any_rank(False) is False and distributed.mean_over_ranks(2.5) == 2.5
    assert distributed.per_process_batch(84) == 84
    assert distributed.eval_sampler(10) is None
    model = torch.nn.Linear(2, 2)
    assert distributed.prepare_model(model, torch.device("cpu")) is model
    compiled = distributed.prepare_model(model, torch.device("cpu"), compile_model=True)
    assert compiled is not model and list(compiled.parameters()) == list(model.parameters())


def test_single_process_order_is_the_sampler_permutation_of_the_epoch():
    """One process takes DistributedSampler's whole permutation for seed + epoch: a DDP run's
    ranks split exactly the batches a single process would see."""
    from torch.utils.data import DataLoader
    sampler = distributed.train_sampler(10, seed=5)
    loader = DataLoader(range(10), batch_size=4, sampler=sampler, generator=torch.Generator())
    distributed.seed_epoch(loader, seed=0, epoch=3)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 + 3)).tolist()
    assert [i for batch in loader for i in batch.tolist()] == expected


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    assert distributed.per_process_batch(84) == 21
    assert distributed.per_process_batch(10, "eval.batch_size") == 3  # eval: any size, rounded up
    with pytest.raises(ConfigError, match=r"multiple of the number of processes \(4\).*=80"):
        distributed.per_process_batch(82)


def test_torchrun_variables_must_be_complete(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="launch distributed runs with torchrun"):
        distributed.init_from_env("cpu")
    # lr-find, tune (anything but train) build a Trainer without joining a group: refused
    with pytest.raises(ConfigError, match="only `mlic train`"):
        distributed.require_group()
