"""Device selection shared by train and evaluate."""
from __future__ import annotations

import torch

from .errors import KdbenchError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KdbenchError("--device cuda requested but CUDA is not available (install the CUDA build of torch)")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    try:
        return torch.device(name)
    except RuntimeError:
        raise KdbenchError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
