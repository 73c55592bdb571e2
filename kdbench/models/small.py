"""Small networks: a CPU-sized CNN and the 9-layer nets of Papernot et al. / Carlini-Wagner."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import KdbenchError
from .base import MODELS, KDModel, Normalize


def _conv_bn(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@MODELS.register("smallcnn", "small-cnn")
class SmallCNN(KDModel):
    """Fast CPU CNN (about 0.1 M parameters, < 0.5 MB): three conv-BN-ReLU stages with two
    2x2 max-pools, global average pooling and a linear classifier (a CAM-ready layout)."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, width=32, mean=None, std=None):
        super().__init__()
        w = width
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(*_conv_bn(in_channels, w), nn.MaxPool2d(2),
                                  *_conv_bn(w, 2 * w), nn.MaxPool2d(2),
                                  *_conv_bn(2 * w, 4 * w))
        self.classifier = nn.Linear(4 * w, num_classes)

    def features(self, x):
        return self.body(self.normalize(x))


@MODELS.register("cwnet", "papernot", "cw-9layer")
class CWNet(KDModel):
    """The 9-layer net of Papernot et al. (2016) as trained by Carlini & Wagner
    (seed 000, section IV-B; docs/methods.md §8.1): conv(a) conv(a) pool conv(b) conv(b) pool
    dense(d) dropout(0.5) dense(d) dense(C), 3x3 valid convolutions, ReLU.
    MNIST: a, b, d = 32, 64, 200.  CIFAR: 64, 128, 256."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, widths=None, dropout=0.5, mean=None, std=None):
        super().__init__()
        a, b, d = widths or ((32, 64, 200) if in_channels == 1 else (64, 128, 256))
        if input_size < 14:
            raise KdbenchError(f"cwnet needs inputs of at least 14x14 pixels, got {input_size}x{input_size}")
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, a, 3), nn.ReLU(inplace=True), nn.Conv2d(a, a, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3), nn.ReLU(inplace=True), nn.Conv2d(b, b, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2))
        with torch.no_grad():
            n = self.body(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(n, d), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                   nn.Linear(d, d), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(d, num_classes)

    def features(self, x):
        return self.body(self.normalize(x))

    def embed(self, fmap):
        return self.dense(fmap)
