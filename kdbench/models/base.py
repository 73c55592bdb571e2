"""The uniform model interface kdbench methods and metrics use.

Every built-in model is a :class:`KDModel`: ``features(x)`` gives the last convolutional
feature map (for a ViT, the patch tokens laid out as a grid), ``embed(fmap)`` the
penultimate embedding, ``classifier`` the final ``nn.Linear``; ``forward(x)`` returns logits.
:func:`forward_all` gives all three for any model, using forward hooks on the last
``Conv2d`` and the last ``Linear`` for models that are not KDModels (user and RobustBench models).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..registry import Registry

MODELS = Registry("model")  # name -> factory(num_classes, in_channels, input_size, **kwargs)
# (pattern, make) pairs: a name matching the pattern is built by make(match) -> factory (``wrn-D-W``)
MODEL_PATTERNS: List[Tuple["re.Pattern", Callable]] = []


def register_model_pattern(pattern: str):
    """Register a family of names: ``@register_model_pattern(r"^wrn-(\\d+)-(\\d+)$")`` over a
    function of the match returning the factory."""
    def deco(make):
        MODEL_PATTERNS.append((re.compile(pattern), make))
        return make

    return deco


@dataclass
class ModelOutput:
    feature_map: torch.Tensor  # B x C x h x w
    embedding: torch.Tensor  # B x D (the classifier's input)
    logits: torch.Tensor  # B x num_classes


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model, so inputs stay in [0, 1]."""

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__()
        self.enabled = mean is not None or std is not None
        c = len(mean if mean is not None else std) if self.enabled else 1
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * c).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * c).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std if self.enabled else x


class KDModel(nn.Module):
    """Base class: subclasses define ``features``, ``embed`` and ``classifier``."""

    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x: torch.Tensor, features: bool = False):
        """Logits; ``features=True`` returns :meth:`forward_all`'s ModelOutput instead (a keyword,
        so feature access passes through DistributedDataParallel's forward)."""
        if features:
            return self.forward_all(x)
        return self.classifier(self.embed(self.features(x)))

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.features(x)
        emb = self.embed(fmap)
        return ModelOutput(fmap, emb, self.classifier(emb))


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a DDP / DataParallel wrapper."""
    return getattr(model, "module", model)


def last_module(model: nn.Module, kind) -> Optional[nn.Module]:
    found = None
    for m in model.modules():
        if isinstance(m, kind):
            found = m
    return found


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final linear layer (weights ``num_classes x D``)."""
    model = unwrap(model)
    if isinstance(model, KDModel):
        return model.classifier
    lin = last_module(model, nn.Linear)
    if lin is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return lin


def forward_all(model: nn.Module, x: torch.Tensor) -> ModelOutput:
    """Feature map, embedding and logits of any model (hooks for non-KDModels)."""
    inner = unwrap(model)
    if isinstance(inner, KDModel):
        return model(x, features=True)
    conv, lin = last_module(inner, nn.Conv2d), last_module(inner, nn.Linear)
    if conv is None or lin is None:
        raise ValueError(f"{type(inner).__name__}: need an nn.Conv2d and an nn.Linear for feature access")
    got = {}
    h1 = conv.register_forward_hook(lambda m, i, o: got.__setitem__("fmap", o))
    h2 = lin.register_forward_hook(lambda m, i, o: got.__setitem__("emb", i[0]))
    try:
        logits = model(x)
    finally:
        h1.remove()
        h2.remove()
    return ModelOutput(got["fmap"], torch.flatten(got["emb"], 1), logits)


class CountingModel(nn.Module):
    """Wraps a model, counting images through forward and backward passes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_images = 0
        self.backward_images = 0
        self.on_forward = None  # called after every forward pass (live progress inside library attacks)

    def forward(self, x):
        out = self.model(x)
        n = x.shape[0]
        self.forward_images += n
        if self.on_forward is not None:
            self.on_forward()
        if out.requires_grad:
            def hook(grad, n=n):
                self.backward_images += n
            out.register_hook(hook)
        return out
