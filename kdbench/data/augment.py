"""The two train augmentations adversarial-training papers use, done natively on tensors:
random crop with zero padding (torchvision ``RandomCrop(size, padding)``) and horizontal flip."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    crop_padding: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def to_dict(self) -> dict:
        return {"crop_padding": self.crop_padding, "flip": self.flip}

    def sample(self, n: int, hw, generator: Optional[torch.Generator]):
        """Draw per-image offsets and flips on the CPU (device-independent randomness)."""
        p = self.crop_padding
        oy = torch.randint(0, 2 * p + 1, (n,), generator=generator) if p else None
        ox = torch.randint(0, 2 * p + 1, (n,), generator=generator) if p else None
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else None
        return oy, ox, flip

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:
        oy, ox, flip = params
        if self.crop_padding:
            p = self.crop_padding
            b, c, h, w = x.shape
            xp = F.pad(x, (p, p, p, p))
            rows = (oy.to(x.device)[:, None] + torch.arange(h, device=x.device))  # B x H
            cols = (ox.to(x.device)[:, None] + torch.arange(w, device=x.device))  # B x W
            bi = torch.arange(b, device=x.device)[:, None, None, None]
            ci = torch.arange(c, device=x.device)[None, :, None, None]
            x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
        if self.flip:
            f = flip.to(x.device)
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        return x
