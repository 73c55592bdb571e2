"""A small Vision Transformer (Dosovitskiy et al.): the heterogeneous teacher DARHT needs,
sized to train on the offline sets.  Pre-norm blocks, a class token, learned positions.
``features`` returns the patch tokens laid out on their grid (B x D x h x w), so CAMs and
attention maps work on it as on a CNN's last feature map; the embedding is the class token."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import KdbenchError
from .base import MODELS, KDModel, ModelOutput, Normalize


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_dim, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@MODELS.register("vit", "vit-small")
class ViT(KDModel):
    def __init__(self, num_classes=10, in_channels=3, input_size=32, patch_size=None, dim=64, depth=4, heads=4,
                 mlp_dim=128, dropout=0.1, mean=None, std=None):
        super().__init__()
        p = patch_size or (2 if input_size <= 8 else 4 if input_size <= 32 else 8)
        if input_size % p:
            raise KdbenchError(f"vit: input size {input_size} is not a multiple of patch size {p}")
        self.grid = input_size // p
        self.normalize = Normalize(mean, std)
        self.patch = nn.Conv2d(in_channels, dim, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid + 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @property
    def classifier(self):
        return self.head

    def _tokens(self, x):
        t = self.patch(self.normalize(x)).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
        return self.norm(self.blocks(self.drop(t + self.pos)))

    def _grid(self, t):
        b, n, d = t.shape
        return t[:, 1:].transpose(1, 2).reshape(b, d, self.grid, self.grid)

    def features(self, x):
        return self._grid(self._tokens(x))

    def forward(self, x, features: bool = False):
        if features:
            return self.forward_all(x)
        return self.head(self._tokens(x)[:, 0])

    def forward_all(self, x):
        t = self._tokens(x)
        return ModelOutput(self._grid(t), t[:, 0], self.head(t[:, 0]))
