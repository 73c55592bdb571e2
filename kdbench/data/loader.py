"""Batching: deterministic per-epoch shuffling, DistributedSampler-style sharding and a batch
iterator with pinned-memory transfers (CUDA) and on-device augmentation."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from .augment import Augment
from .types import ImageSet


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffling and augmentation: a pure function of (seed, epoch),
    so a resumed run replays exactly the batches an uninterrupted run sees."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def shard_indices(n: int, g: Optional[torch.Generator], rank: int = 0, world: int = 1) -> torch.Tensor:
    """Shuffled (when ``g`` is given) indices, padded to a multiple of ``world`` and taken
    ``rank::world`` -- the same split as torch's DistributedSampler."""
    idx = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    if world > 1:
        pad = (-n) % world
        if pad:
            idx = torch.cat([idx, idx[:pad]])
        idx = idx[rank::world]
    return idx


def iterate(data: ImageSet, batch_size: int, device: torch.device, *, indices: Optional[torch.Tensor] = None,
            augment: Optional[Augment] = None, generator: Optional[torch.Generator] = None,
            ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``: x float32 in [0, 1].

    Transfers use pinned memory and ``non_blocking`` on CUDA; uint8 images are converted to
    float on the device (4x less host-to-device traffic).  Augmentation draws its randomness
    from ``generator`` on the CPU, so it is identical on every device.
    """
    if indices is None:
        indices = torch.arange(len(data))
    cuda = device.type == "cuda"
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        xb, yb = data.x[idx], data.y[idx]
        params = augment.sample(len(idx), xb.shape[-2:], generator) if augment and augment.active else None
        if cuda:
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb = xb.to(device, non_blocking=cuda)
        yb = yb.to(device, non_blocking=cuda)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
        if params is not None:
            xb = augment.apply(xb, params)
        yield xb, yb
