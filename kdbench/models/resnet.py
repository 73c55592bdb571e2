"""CIFAR-style ResNet-18 and PreAct ResNet-18 (3x3 stem, no initial max-pool), with the
parameter names of the reference implementations (kuangliu/pytorch-cifar,
locuslab/robust_overfitting) so their checkpoints load unchanged."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .base import MODELS, KDModel, Normalize


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _ResNet(KDModel):
    def __init__(self, block, num_blocks, num_classes, in_channels, preact, mean, std):
        super().__init__()
        self.preact = preact
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        layers = []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(block(cin, width, s))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        if preact:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    @property
    def classifier(self):
        return self.linear

    def features(self, x):
        x = self.conv1(self.normalize(x))
        if not self.preact:
            x = F.relu(self.bn1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.relu(self.bn(x)) if self.preact else x


@MODELS.register("resnet18", "resnet-18")
def resnet18(num_classes=10, in_channels=3, input_size=32, mean=None, std=None):
    return _ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, False, mean, std)


@MODELS.register("preact-resnet18", "preactresnet18", "preact-resnet-18")
def preact_resnet18(num_classes=10, in_channels=3, input_size=32, mean=None, std=None):
    return _ResNet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels, True, mean, std)
