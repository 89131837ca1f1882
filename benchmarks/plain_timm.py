"""The bar to beat: a plain timm + BCE training loop on the emoji benchmark, with no mlic engine.

    python benchmarks/plain_timm.py [--epochs 8] [--size 96] [--seed 0]

What a practitioner writes in an afternoon: timm's EfficientNet-Lite0 from the offline ImageNet
weights, BCE with logits (mean), AdamW lr 1e-3 (weight decay 0.01, torch's default), OneCycle with
10% warm-up, batch 64, 96 px, a random shift of up to 4 px, no flips ("left" and arrows are labels).
Held-out drawing style: train on Google + Apple + Facebook, test on Twitter, 159 labels. Only the
data reading (the CSV, the offline weights file) and the mAP (mlic.metrics, ranked on logits) come
from mlic. Prints test mAP per epoch; ``benchmarks/ablation.py`` runs it as its baseline row.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from mlic.data.emoji import build_emoji_benchmark
from mlic.data.formats import load_table
from mlic.data.images import load_rgb
from mlic.metrics import mean_average_precision
from mlic.models.weights import lite_package_state_dict


class Drawings(Dataset):
    def __init__(self, csv: Path, names: list[str], transform):
        self.table = load_table(csv).with_labels(names, "negative")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        image = self.transform(load_rgb(self.table.image_path(i)))
        return image, torch.from_numpy(self.table.targets[i].astype(np.float32))


def plain_timm_loop(data: Path, epochs: int = 8, size: int = 96, seed: int = 0,
                    train_csv: str = "style_train.csv", log=print) -> dict:
    """Train and test; returns {"mAP": test mAP in [0, 1] after the last epoch, "per_epoch": [...],
    "minutes": ...}."""
    torch.manual_seed(seed)
    names = (data / "labels.txt").read_text(encoding="utf-8").split()
    model = timm.create_model("tf_efficientnet_lite0", num_classes=len(names))
    state = lite_package_state_dict("tf_efficientnet_lite0", [len(s) for s in model.blocks])
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")},
                          strict=False)
    normalise = T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    train_tf = T.Compose([T.Resize((size, size)),
                          T.RandomAffine(0, translate=(4 / size, 4 / size), fill=255),
                          T.ToTensor(), normalise])
    test_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), normalise])
    train_loader = DataLoader(Drawings(data / train_csv, names, train_tf), batch_size=64,
                              shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(seed))
    test_loader = DataLoader(Drawings(data / "style_test.csv", names, test_tf), batch_size=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, pct_start=0.1,
                                                   total_steps=epochs * len(train_loader))
    criterion = nn.BCEWithLogitsLoss()
    start, per_epoch = time.time(), []
    for epoch in range(epochs):
        model.train()
        for images, targets in train_loader:
            optimizer.zero_grad()
            criterion(model(images), targets).backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            pairs = [(model(images).double(), targets) for images, targets in test_loader]
        logits = torch.cat([p[0] for p in pairs]).numpy()
        targets = torch.cat([p[1] for p in pairs]).numpy().astype(np.int8)
        per_epoch.append(mean_average_precision(logits, targets).map)
        log(f"plain timm loop: epoch {epoch + 1}/{epochs}  test mAP {100 * per_epoch[-1]:.2f}  "
            f"{(time.time() - start) / 60:.1f} min")
    return {"mAP": per_epoch[-1], "per_epoch": per_epoch, "minutes": (time.time() - start) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_emoji_benchmark(args.data)
    result = plain_timm_loop(args.data, args.epochs, args.size, args.seed)
    print(f"test mAP {100 * result['mAP']:.2f} after {args.epochs} epochs, "
          f"{result['minutes']:.1f} min")


if __name__ == "__main__":
    main()
