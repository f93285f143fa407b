"""Distributed data parallel (DDP) plumbing: the same `desa train` runs on one process or under torchrun.

    desa train --survey data/survey --config small --out runs/small                 # one process
    torchrun --nproc_per_node=2 -m desa_core.cli train --survey ... --out ...      # N processes

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then join a process group (gloo on CPU, nccl on GPU), wrap
models in DistributedDataParallel and shard every epoch with a DistributedSampler (``set_epoch`` each
epoch). Rank 0 alone writes files; the others wait at barriers. At the end of each training stage every
rank's weight fingerprint is gathered, and a mismatch is an error (DDP must keep replicas identical).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s, %s)", rank, world, backend, dev)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def current() -> DistInfo:
    """The DistInfo of an already-initialised process group (or of a single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def all_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def state_fingerprint(model_or_state) -> str:
    """sha256 of a module's state dict (or of a state dict): names, shapes and exact values."""
    state = unwrap(model_or_state).state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        a = v.detach().cpu().contiguous()
        h.update(str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()


def check_replicas_identical(model_or_state, info: DistInfo, what: str) -> list[str]:
    """Gather every rank's weight fingerprint; raise if they differ. Returns the list (rank order)."""
    fp = state_fingerprint(model_or_state)
    if not info.enabled:
        return [fp]
    fps: list = [None] * info.world_size
    dist.all_gather_object(fps, fp)
    if len(set(fps)) != 1:
        raise RuntimeError(f"{what}: DDP replicas diverged (weight fingerprints {fps})")
    return list(fps)


class ShardedOrder:
    """A DistributedSampler over ``n`` items with a fixed seed: ``epoch_batches(epoch, batch_size)``.

    One process: a seeded shuffle of all items. N processes: each rank gets its own 1/N shard (padded to equal
    length, as DistributedSampler does), so every rank runs the same number of steps.
    """

    def __init__(self, n: int, info: DistInfo, seed: int, shuffle: bool = True):
        from torch.utils.data import DistributedSampler
        self.n = n
        self.sampler = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                                          seed=seed, drop_last=False)

    def epoch_batches(self, epoch: int, batch_size: int, max_steps: int | None = None, min_batch: int = 1):
        self.sampler.set_epoch(epoch)
        idx = np.fromiter(iter(self.sampler), dtype=np.int64)
        batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
        batches = [b for b in batches if len(b) >= min_batch]
        return batches[:max_steps] if max_steps else batches
