"""Training throughput: images per second of the training step, and of the data loader alone.

    python benchmarks/train_throughput.py                 # CUDA: the table below, on one GPU
    python benchmarks/train_throughput.py --device cpu    # a small CPU configuration (see --help)

On a GPU the default measures the paper's model, EfficientNetV2-S + cosine ML-Decoder (80 classes,
AAM loss, SGD) at 448 px, batch 64, with and without mixed precision (bf16 where the GPU has it,
else fp16 with a gradient scaler), channels_last and ``torch.compile``, each with SAM off and on
(SAM runs two forward/backward passes per step). Batches are synthetic tensors already on the
device, so these rows are the GPU's speed alone. The loader row decodes JPEGs (640x480, like COCO's)
through the recipe's training transform (resize, RandAugment, Cutout, flip) with ``--workers``
processes: if it is slower than a step row, decoding does not keep the GPU fed at that setting.

On a CPU, mixed precision is not used by mlic (its autocast is CUDA's) and those rows are left
out; the default CPU configuration is smaller (96 px, batch 8) so that it runs in minutes.

Writes benchmarks/results/train_throughput.md: a section per device kind; a run replaces its own
section and keeps the other one (or marks it "not yet run").
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlic.config import default_config
from mlic.coupling import build_coupled_loss
from mlic.data.dataset import MultiLabelDataset
from mlic.data.formats import load_table
from mlic.data.transforms import batch_to_device, train_transform
from mlic.engine.optim import build_optimizer
from mlic.engine.sam import SAMStep
from mlic.engine.step import OptimizerStep
from mlic.models import create_model

RESULTS = Path(__file__).parent / "results" / "train_throughput.md"
# (AMP, channels_last, compile): the step rows, each with SAM off and on.
SETTINGS = [(False, False, False), (True, False, False), (True, True, False), (True, True, True)]
CPU_SETTINGS = [(False, False, False), (False, True, False), (False, True, True)]
GPU_COMMAND = "python benchmarks/train_throughput.py --device cuda"


def step_throughput(args, amp: bool, channels_last: bool, compiled: bool, sam: bool) -> dict:
    """Images/s of the training step on synthetic batches (warm-up steps not timed)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.backbone, args.classes, head="ml_decoder",
                         head_params={"cosine": True}, image_size=args.size).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = build_coupled_loss("aam", {}, model.head, "ml_decoder")  # AAM at the head's scale
    optimizer = build_optimizer(model, default_config()["train"])  # the recipe's SGD groups
    train_model = torch.compile(model) if compiled else model
    step = (SAMStep(train_model, loss_fn, optimizer, device, amp=amp) if sam
            else OptimizerStep(train_model, loss_fn, optimizer, device, amp=amp))
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = (torch.rand(args.batch, args.classes) < 3 / args.classes).float()
    images = batch_to_device(images, device, channels_last)
    targets = targets.to(device)
    model.train()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.warmup):  # includes compilation
        step(images, targets)
    synchronize()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step(images, targets)
    synchronize()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"ips": args.batch * args.steps / seconds, "warmup": warmup, "memory": memory}


def synthetic_jpegs(folder: Path, count: int) -> Path:
    """``count`` 640x480 JPEGs that compress like photographs (smooth shapes, mild noise)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rows = ["image,labels"]
    for i in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (480, 640, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
        rows.append(f"{i}.jpg,label{i % 5}")
    (folder / "images.csv").write_text("\n".join(rows) + "\n")
    return folder / "images.csv"


def loader_throughput(args) -> float:
    """Images/s of the recipe's training loader (decode + augment + collate), warm workers."""
    with tempfile.TemporaryDirectory() as tmp:
        table = load_table(str(synthetic_jpegs(Path(tmp), args.images)))
        pre = create_model(args.backbone, 2, image_size=args.size).preprocessing
        transform = train_transform(pre, default_config()["data"]["augment"])
        # Persistent workers: epoch 1 starts them and fills their prefetch queues, epoch 2 is timed.
        loader = DataLoader(MultiLabelDataset(table, transform), batch_size=args.batch,
                            shuffle=True, num_workers=args.workers, drop_last=True,
                            persistent_workers=args.workers > 0,
                            pin_memory=args.device.startswith("cuda"))
        batches = len(loader)
        for _ in loader:
            pass
        start = time.perf_counter()
        for _ in loader:
            pass
        return batches * args.batch / (time.perf_counter() - start)


def fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def measure(args) -> str:
    cuda = args.device.startswith("cuda")
    precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16 + GradScaler") if cuda else ""
    lines = ["| AMP | channels_last | compile | SAM | images/s | warm-up (s) | peak GPU memory (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for amp, channels_last, compiled in (SETTINGS if cuda else CPU_SETTINGS):
        if compiled and args.no_compile:
            continue
        for sam in (False, True):
            r = step_throughput(args, amp, channels_last, compiled, sam)
            row = (f"| {precision if amp else 'fp32'} | {'yes' if channels_last else 'no'} | "
                   f"{'yes' if compiled else 'no'} | {'on' if sam else 'off'} | {r['ips']:.1f} | "
                   f"{r['warmup']:.1f} | {fmt(r['memory'], 2)} |")
            print(row, flush=True)
            lines.append(row)
    ips = loader_throughput(args)
    row = f"| data loader alone ({args.workers} workers, JPEG 640x480) | | | | {ips:.1f} | | |"
    print(row)
    lines.append(row)
    return "\n".join(lines)


def header(args, device_name: str, load: float) -> str:
    command = "python benchmarks/train_throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "no_compile") and v is not None) + (" --no-compile" if args.no_compile else "")
    return (f"Command: `{command}`\n\n"
            f"Machine: {device_name}; {os.cpu_count()} CPU cores, {platform.machine()}, "
            f"torch {torch.__version__}. Model: {args.backbone} + cosine ML-Decoder, {args.classes} "
            f"classes, AAM loss, SGD (recipe groups), {args.size} px, batch {args.batch}; "
            f"{args.warmup} warm-up steps (compilation included), {args.steps} timed. Load average "
            f"when it started: {load:.1f} (other jobs on the machine slow every row alike).\n")


def not_yet_run(kind: str) -> str:
    if kind == "GPU":
        rows = [f"| {'bf16/fp16' if amp else 'fp32'} | {'yes' if cl else 'no'} | {'yes' if c else 'no'} "
                f"| {sam} | not yet run | | |" for amp, cl, c in SETTINGS for sam in ("off", "on")]
        rows.append("| data loader alone (16 workers, JPEG 640x480) | | | | not yet run | | |")
        return (f"Not yet run: no GPU was available. Command: `{GPU_COMMAND}` "
                f"(EfficientNetV2-S + ML-Decoder, 448 px, batch 64).\n\n"
                "| AMP | channels_last | compile | SAM | images/s | warm-up (s) | peak GPU memory (GiB) |\n"
                "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "Not yet run. Command: `python benchmarks/train_throughput.py --device cpu`\n"


def write(out: Path, kind: str, section: str) -> None:
    """Replace this device kind's section of the results file; keep the other kind's."""
    sections = {"GPU": not_yet_run("GPU"), "CPU": not_yet_run("CPU")}
    if out.exists():
        for name, body in re.findall(r"^## (GPU|CPU)[^\n]*\n(.*?)(?=^## |\Z)", out.read_text(),
                                     flags=re.M | re.S):
            sections[name] = body.strip("\n") + "\n"
    sections[kind] = section
    text = ("# Training throughput (images/s)\n\n"
            "`benchmarks/train_throughput.py`: the training step on synthetic batches already on the "
            "device, and the data loader alone (decode + the recipe's augmentation). One process; "
            "under DDP each GPU runs this step on its share of the global batch.\n\n"
            f"## GPU (EfficientNetV2-S + ML-Decoder, 448 px, batch 64)\n\n{sections['GPU']}\n"
            f"## CPU (small configuration)\n\n{sections['CPU']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="tf_efficientnetv2_s")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--size", type=int, help="default 448 on CUDA, 96 on CPU")
    parser.add_argument("--batch", type=int, help="default 64 on CUDA, 8 on CPU")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20 CUDA, 2 CPU)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, help="JPEGs for the loader row (default 20 batches)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compile rows")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    for key, gpu, cpu in (("size", 448, 96), ("batch", 64, 8), ("warmup", 5, 1), ("steps", 20, 2)):
        if getattr(args, key) is None:
            setattr(args, key, gpu if cuda else cpu)
    if args.images is None:
        args.images = 20 * args.batch
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name(args.device) if cuda else (
        platform.processor() or platform.machine())
    load = os.getloadavg()[0]
    print(header(args, device_name, load))
    table = measure(args)
    write(Path(args.out), "GPU" if cuda else "CPU", header(args, device_name, load) + "\n" + table + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
