"""WideResNet-d-w (Zagoruyko & Komodakis) with the parameter names of the TRADES /
RobustBench implementation, so ``model_cifar_wrn.pt`` and RobustBench WRN checkpoints load
unchanged.  ``sub_block1=True`` adds the unused block that TRADES' WRN-34-10 carries."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..errors import KdbenchError
from .base import MODELS, KDModel, Normalize, register_model_pattern


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return (x if self.equalInOut else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride, drop_rate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


@MODELS.register("wideresnet", "wrn")
class WideResNet(KDModel):
    def __init__(self, depth=34, widen_factor=10, num_classes=10, in_channels=3, input_size=32,
                 drop_rate=0.0, sub_block1=False, mean=None, std=None):
        super().__init__()
        if (depth - 4) % 6:
            raise KdbenchError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def classifier(self):
        return self.fc

    def features(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.relu(self.bn1(out))


for _d, _w in ((28, 10), (34, 10), (34, 20), (70, 16)):  # the robustness literature's, listed by name
    MODELS.register(f"wrn-{_d}-{_w}")(lambda _d=_d, _w=_w, **kw: WideResNet(depth=_d, widen_factor=_w, **kw))


@register_model_pattern(r"^wrn-(\d+)-(\d+)$")
def _wrn(m):
    """``wrn-D-W``: any depth and width."""
    return lambda **kw: WideResNet(depth=int(m.group(1)), widen_factor=int(m.group(2)), **kw)
