"""Data-parallel training on PyTorch's own engine (DDP), set up from torchrun's environment.

``torchrun --nproc_per_node N -m mlic train ...`` starts one process per device and gives each
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; ``init_from_env`` joins the process
group they describe (NCCL on CUDA devices, gloo on CPUs). Without them (or with WORLD_SIZE 1) every
helper here is the single-process no-op, so the trainer has one code path for both.

The conventions (docs/distributed.md):

* ``train.batch_size`` and ``eval.batch_size`` are global: each of the N processes takes 1/N of
  every batch, so a config means the same optimisation (lr, schedule, steps per epoch) on any
  number of devices;
* every process holds the same weights, optimizer state and EMA weights; normalisation buffers
  (BatchNorm running statistics) are rank 0's, which DDP broadcasts before every forward and
  ``broadcast_buffers`` before every evaluation;
* rank 0 alone writes: run folder, log, metrics.csv, checkpoints, reports, progress bars. The run
  folder must be visible to every process (one machine, or a filesystem shared by the nodes);
* evaluation splits the images rank::N (no padding, so no image counts twice) and gathers every
  score on rank 0 before any metric: mAP is a ranking over the whole split, and an average of
  per-rank mAPs is a different number.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from mlic.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Per-rank random streams are offset by this much from rank 0's (which stays the single-process one).
RANK_SEED_STRIDE = 1_000_003


# ------------------------------------------------------------------------------ process group
def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes; True when this call created it (the caller then
    calls ``teardown``). A no-op returning False outside torchrun or when a group already exists."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set: launch distributed runs "
                          f"with torchrun (docs/distributed.md)")
    if _wants_cuda(device):
        if torch.cuda.device_count() <= local_rank():
            raise ConfigError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} CUDA "
                              f"devices: give torchrun --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")
    return True


def require_group() -> None:
    """Under torchrun, a trainer outside the process group would train alone, N times over."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        raise ConfigError("started by torchrun, but only `mlic train` (or mlic.train) runs "
                          "distributed: run this command as a single process")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def process_device(device: torch.device) -> torch.device:
    """This process's device: in a distributed run, CUDA means cuda:LOCAL_RANK."""
    if not is_distributed() or device.type != "cuda":
        return device
    if device.index is not None and device.index != local_rank():
        raise ConfigError(f"device: {device} is not valid under torchrun: give 'cuda' or 'auto' "
                          f"(each process takes cuda:LOCAL_RANK)")
    return torch.device("cuda", local_rank())


def silent_logger() -> logging.Logger:
    """The log of ranks other than 0: rank 0 writes train.log and the console for all."""
    logger = logging.getLogger("mlic.run.silent")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


# ---------------------------------------------------------------------------------- batches
def per_process_batch(batch_size: int, key: str = "train.batch_size") -> int:
    """A process's share of a global batch; a training batch must split evenly (same gradient)."""
    world = world_size()
    if key.startswith("train") and batch_size % world:
        raise ConfigError(f"{key} ({batch_size}) is the global batch and must be a multiple of the "
                          f"number of processes ({world}); e.g. {key}={batch_size // world * world or world}")
    return max(1, -(-batch_size // world))


def train_sampler(dataset_size: int, seed: int) -> Sampler[int]:
    """Shuffled, this rank's share, padded to equal length (DDP needs the same number of steps on
    every rank); one process gets the whole permutation. Reshuffled per epoch by ``seed_epoch``."""
    from torch.utils.data import DistributedSampler
    return DistributedSampler(range(dataset_size), num_replicas=world_size(), rank=rank(),
                              shuffle=True, seed=seed)


class ShardSampler(Sampler[int]):
    """Images rank, rank + N, rank + 2N, ... in order: every image exactly once over all ranks
    (DistributedSampler would pad with repeats, and repeated images would count twice in mAP)."""

    def __init__(self, dataset_size: int, rank: int, world: int):
        self.indices = range(rank, dataset_size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_sampler(dataset_size: int) -> Sampler[int] | None:
    return ShardSampler(dataset_size, rank(), world_size()) if is_distributed() else None


def seed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Data order and random streams of epoch ``epoch`` on this rank, from (seed, epoch, rank)
    alone, so that a resumed run repeats them. The order is DistributedSampler's permutation for
    its seed + epoch, the same on every rank (each takes its share); augmentation streams (Python's
    ``random`` in the main process, the worker seeds drawn from the loader's generator, torch's
    own for dropout) differ per rank, rank 0's being the single-process ones."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    stream = seed * 100_003 + epoch + RANK_SEED_STRIDE * rank()
    loader.generator.manual_seed(stream)
    random.seed(stream)
    if is_distributed():  # else torch's stream stays as it was (single-process runs keep theirs)
        torch.manual_seed(stream)


# ------------------------------------------------------------------------------------ model
def prepare_model(model: nn.Module, device: torch.device, sync_bn: bool = False,
                  compile_model: bool = False, log: logging.Logger | None = None,
                  frozen_at_times: bool = False) -> nn.Module:
    """The module the training step calls: ``model`` itself, or DDP around it, optionally compiled.

    ``model`` stays the plain module (its parameters are the ones DDP synchronises): save, evaluate
    and average (EMA) it, train through the returned one. SyncBatchNorm conversion happens in
    place (``model``'s BatchNorm layers are replaced, sharing their parameters and buffers).
    ``frozen_at_times``: some steps leave parameters without a gradient (the head warm-up), so
    DDP must look for unused parameters.
    """
    wrapped = model
    if is_distributed():
        if sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn: SyncBatchNorm runs on GPUs only (torch's "
                                  "implementation); set train.sync_bn=false on CPUs")
            _convert_sync_batchnorm(model)
        unused = unused_parameters(model, device)
        if frozen_at_times and not unused and log is not None:
            log.info("DDP: the backbone is frozen during the head warm-up: find_unused_parameters on")
        if unused and log is not None:
            log.info(f"DDP: {len(unused)} parameters get no gradient in a training forward "
                     f"(e.g. {unused[0]}): find_unused_parameters on")
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(unused) or frozen_at_times)
    elif sync_bn and log is not None:
        log.info("note: train.sync_bn has no effect in a single-process run")
    if compile_model:
        # Compiling the DDP wrapper lets Dynamo split the graph at DDP's bucket boundaries.
        wrapped = torch.compile(wrapped)
    return wrapped


def _convert_sync_batchnorm(model: nn.Module) -> None:
    for name, child in model.named_children():
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(model, name, converted)


def unused_parameters(model: nn.Module, device: torch.device) -> list[str]:
    """Names of trainable parameters a training forward/backward leaves without a gradient (DDP
    must be told, or it waits for them forever). Probed on two blank images; weights, buffers,
    gradients and random streams are left as they were."""
    size = int(model.preprocessing.image_size)
    images = torch.zeros(2, 3, size, size, device=device)
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        model.train()
        if getattr(model, "takes_label_states", False):
            # Known positives, known negatives and unknowns: every state embedding is used.
            states = torch.arange(2 * model.num_classes, device=device).remainder(3) - 1.0
            out = model(images, states.view(2, model.num_classes))
        else:
            out = model(images)
        out.float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    model.train(was_training)
    return unused


def no_sync(model: nn.Module, skip: bool = True):
    """DDP's ``no_sync`` (gradients stay local) when ``skip`` and ``model`` is DDP, else nothing."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (BatchNorm statistics) on every rank: each rank's last forward
    updated its own from its own images."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


# ------------------------------------------------------------------------------ collectives
def _collective_device() -> torch.device:
    """Where tensors for collectives live: NCCL wants this process's GPU, gloo the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shared_folder(make: Callable[[], Path]) -> Path:
    """The folder that rank 0 makes with ``make()``, on every rank; an error on every rank if some
    rank cannot see it (nodes without a shared filesystem)."""
    path = make() if is_main() else None
    path = Path(broadcast_object(None if path is None else str(path)))
    if any_rank(not path.is_dir()):
        raise ConfigError(f"{path}: the run folder rank 0 made is not visible to every process; "
                          f"output_dir must be on a filesystem all nodes share")
    return path


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (pickled: for small things)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src)
    return holder[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over the ranks (e.g. each rank's mean training loss)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def sync_found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """After ``scaler.unscale_`` of gradients that were not all-reduced (SAM's local first pass):
    an inf found on any rank counts on every rank, so all scalers skip and rescale alike."""
    if is_distributed() and scaler.is_enabled():
        for found_inf in scaler._found_inf_per_device(optimizer).values():
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)


def gather_rows(array: np.ndarray) -> np.ndarray | None:
    """Rows sharded by ``ShardSampler`` (rank r holds rows r, r + N, ...), back in split order on
    rank 0; None on the other ranks. Single process: ``array`` itself."""
    if not is_distributed():
        return array
    world = world_size()
    parts: list[Any] | None = [None] * world if is_main() else None
    dist.gather_object(array, parts, dst=0)
    if not is_main():
        return None
    rows = sum(len(p) for p in parts)
    merged = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    for r, part in enumerate(parts):
        merged[r::world] = part
    return merged
