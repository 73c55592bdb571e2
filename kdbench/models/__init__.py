"""Architectures (a registry): ``smallcnn``, ``cwnet``, ``resnet18``, ``preact-resnet18``,
``mobilenetv2``, ``wrn-28-10``, ``wrn-34-10``, ``wrn-34-20``, ``wrn-70-16``, ``wrn-D-W`` for any
depth/width, ``vit``; each sized for a dataset's shape by :func:`build_model`.

Model *specs* (run directories, ``file.py:factory``, ``robustbench:NAME``, ...) are resolved a
layer up, in :mod:`kdbench.specs`.  Adding an architecture: one file here with
``@MODELS.register("name")`` (docs/architecture.md).
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import KdbenchError
from ..registry import import_submodules
from .base import (MODEL_PATTERNS, MODELS, CountingModel, KDModel, ModelOutput, Normalize, classifier_of,  # noqa: F401
                   forward_all, register_model_pattern, unwrap)

import_submodules(__name__, __path__)  # every architecture file registers itself


def build_model(arch: str, num_classes: int, in_channels: int, input_size: int, **kwargs) -> nn.Module:
    """Instantiate a registered architecture (or one of a registered family) for a dataset's shape."""
    name = arch.lower()
    factory = None
    if name not in MODELS:
        factory = next((make(m) for pat, make in MODEL_PATTERNS for m in [pat.match(name)] if m), None)
    factory = factory or MODELS.get(arch)
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    except TypeError as e:
        raise KdbenchError(f"model {arch!r}: bad arguments ({e})") from None
