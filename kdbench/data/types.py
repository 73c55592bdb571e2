"""The data types every dataset yields: :class:`ImageSet` (compact images and labels),
:class:`DatasetInfo` (shape, class count, default budget, augmentation) and :class:`Dataset`
(test and train splits, deterministic evaluation subsets with their index hash)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import KdbenchError
from .augment import Augment


@dataclass
class ImageSet:
    """Images stored compactly (uint8 NCHW, or float32 for user data) with int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if self.x.dim() != 4 or self.y.dim() != 1 or len(self.x) != len(self.y):
            raise KdbenchError(f"images {tuple(self.x.shape)} and labels {tuple(self.y.shape)} do not match")

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx=None) -> torch.Tensor:
        """Float32 images in [0, 1] for the given indices (all when ``idx`` is None)."""
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def subset(self, idx) -> "ImageSet":
        return ImageSet(self.x[idx], self.y[idx])


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    input_size: int
    eps: float  # default L-inf budget
    augment: Augment = field(default_factory=Augment)
    eps_l2: Optional[float] = None  # default L2 budget (None: --norm L2 needs --eps)
    # training defaults for small runs: model, epochs, batch_size and dotted config keys
    # (paper-scale settings live in configs/); not part of to_dict (a run's recorded dataset_info)
    train_defaults: Dict[str, Any] = field(default_factory=lambda: {"model": "smallcnn", "epochs": 10})

    def default_eps(self, norm: str) -> float:
        """The dataset's default budget for ``norm`` (L-inf: ``eps``; L2: ``eps_l2``)."""
        if norm == "L2":
            if self.eps_l2 is None:
                from ..errors import KdbenchError

                raise KdbenchError(f"dataset {self.name} has no default L2 budget: give --eps (eps=...)")
            return self.eps_l2
        return self.eps

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "input_size": self.input_size, "eps": self.eps, "augment": self.augment.to_dict()}


@dataclass
class Dataset:
    info: DatasetInfo
    test: ImageSet
    train: Optional[ImageSet] = None

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def require_train(self) -> ImageSet:
        if self.train is None:
            raise KdbenchError(f"dataset {self.info.name!r} has no training split")
        return self.train

    def eval_indices(self, n: Optional[int] = None, seed: int = 0, split: str = "test") -> Tuple[torch.Tensor, str]:
        """A deterministic evaluation subset: ``n`` indices drawn by a seeded permutation, sorted.

        Returns the indices and a short sha256 of them (recorded in results so two runs can
        prove they saw the same points).  ``n=None`` (or ``n >= len``) means the whole split.
        """
        data = self.test if split == "test" else self.require_train()
        total = len(data)
        if n is not None and n <= 0:
            raise KdbenchError(f"--n must be positive, got {n}")
        if n is None or n >= total:
            idx = torch.arange(total)
        else:
            g = torch.Generator().manual_seed(int(seed))
            idx = torch.randperm(total, generator=g)[:n].sort().values
        return idx, index_hash(idx)

    def holdout_indices(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Split the training split into ``(held out, rest)``: the last ``n`` images of a seed-0
        permutation are held out, the same for every run and training seed, so checkpoint
        selection sees the same images everywhere and never a test point.  Both sorted."""
        total = len(self.require_train())
        if not 0 < n < total:
            raise KdbenchError(f"eval.n = {n}: a held-out monitor needs 0 < n < {total} (the training split's size)")
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(0))
        return perm[total - n:].sort().values, perm[:total - n].sort().values


def index_hash(idx: torch.Tensor) -> str:
    return hashlib.sha256(idx.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:16]
