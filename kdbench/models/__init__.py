"""Architectures (a registry): ``smallcnn``, ``cwnet``, ``resnet18``, ``preact-resnet18``,
``mobilenetv2``, ``wrn-28-10``, ``wrn-34-10``, ``wrn-34-20``, ``wrn-70-16``, ``wrn-D-W`` for any
depth/width, ``vit``; each sized for a dataset's shape by :func:`build_model`.

Model *specs* (run directories, ``file.py:factory``, ``robustbench:NAME``, ...) are resolved a
layer up, in :mod:`kdbench.specs`.  Adding an architecture: one file here with
``@MODELS.register("name")`` (docs/architecture.md).
"""
from __future__ import annotations

import re

import torch.nn as nn

from ..errors import KdbenchError
from ..registry import Registry
from .base import KDModel, ModelOutput, Normalize, classifier_of, forward_all, unwrap  # noqa: F401
from .mobilenet import MobileNetV2
from .resnet import preact_resnet18, resnet18
from .small import CWNet, SmallCNN
from .vit import ViT
from .wideresnet import WideResNet

MODELS = Registry("model")

MODELS.register("smallcnn", "small-cnn")(SmallCNN)
MODELS.register("cwnet", "papernot", "cw-9layer")(CWNet)
MODELS.register("resnet18", "resnet-18")(resnet18)
MODELS.register("preact-resnet18", "preactresnet18", "preact-resnet-18")(preact_resnet18)
MODELS.register("mobilenetv2", "mobilenet-v2")(MobileNetV2)
MODELS.register("vit", "vit-small")(ViT)
MODELS.register("wideresnet", "wrn")(WideResNet)
for _d, _w in ((28, 10), (34, 10), (34, 20), (70, 16)):
    MODELS.register(f"wrn-{_d}-{_w}")(lambda _d=_d, _w=_w, **kw: WideResNet(depth=_d, widen_factor=_w, **kw))

_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")


def build_model(arch: str, num_classes: int, in_channels: int, input_size: int, **kwargs) -> nn.Module:
    """Instantiate a registered architecture for a dataset's shape."""
    m = _WRN.match(arch.lower())
    if m and arch.lower() not in MODELS:
        factory = lambda **kw: WideResNet(depth=int(m.group(1)), widen_factor=int(m.group(2)), **kw)  # noqa: E731
    else:
        factory = MODELS.get(arch)
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    except TypeError as e:
        raise KdbenchError(f"model {arch!r}: bad arguments ({e})") from None


