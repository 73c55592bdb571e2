"""DARHT's student with a student-teacher feature map (STF) head (seed 001, section 3;
docs/methods.md §6.1, 6.4, 7.5).

The backbone's penultimate feature h goes through dropout, then ``stf`` (h -> J*C: block j of
C entries represents teacher j's logits), then ``head`` (J*C -> C logits), with no
nonlinearity between the two linear layers (as the released code).  Monte-Carlo dropout
(Algorithm 1): in training the STF map and the logits are averaged over ``samples`` dropout
draws on the same h before any softmax; since dropout sits after the backbone, the backbone
runs once and only the draws differ (the same result as C full passes, at 1/C of the cost).
At test time (eval mode) dropout is off and ``forward`` returns the logits, so the model
evaluates like any other.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from ..errors import KdbenchError
from .base import KDModel, ModelOutput, classifier_of


def _drop_classifier(backbone: nn.Module) -> int:
    """Replace the backbone's classifier by Identity (it would get no gradient); returns its input width."""
    lin = classifier_of(backbone)
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if child is lin:
                setattr(parent, name, nn.Identity())
                return lin.in_features
    raise KdbenchError(f"{type(backbone).__name__}: cannot find its classifier layer")


class STFStudent(KDModel):
    def __init__(self, backbone: KDModel, num_teachers: int, num_classes: int, dropout: float = 0.1,
                 samples: int = 4):
        super().__init__()
        if not isinstance(backbone, KDModel):
            raise KdbenchError("darht: the student must be a kdbench architecture (features/embed)")
        if num_teachers < 1:
            raise KdbenchError("darht: the STF head needs at least one teacher")
        dim = _drop_classifier(backbone)
        self.backbone = backbone
        self.num_teachers, self.num_classes, self.samples = num_teachers, num_classes, samples
        self.drop = nn.Dropout(dropout)
        self.stf = nn.Linear(dim, num_teachers * num_classes)
        self.head = nn.Linear(num_teachers * num_classes, num_classes)

    def features(self, x):
        return self.backbone.features(x)

    def embed(self, fmap):
        return self.backbone.embed(fmap)

    def forward(self, x, return_stf: bool = False, features: bool = False):
        """Logits; with ``return_stf`` the pair of :meth:`forward_stf`, with ``features`` the
        ModelOutput of :meth:`forward_all` (keywords, so they pass through DistributedDataParallel)."""
        if features:
            return self.forward_all(x)
        if return_stf:
            return self.forward_stf(x)
        return self.head(self.stf(self.drop(self.embed(self.features(x)))))

    def forward_all(self, x):
        fmap = self.features(x)
        h = self.embed(fmap)
        return ModelOutput(fmap, h, self.head(self.stf(self.drop(h))))

    def forward_stf(self, x, samples: int | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, STF map B x J x C), each averaged over ``samples`` Monte-Carlo dropout draws
        (one draw in eval mode, where dropout is off)."""
        h = self.embed(self.features(x))
        c = (samples or self.samples) if self.training else 1
        z = torch.stack([self.stf(self.drop(h)) for _ in range(c)]).mean(0)
        return self.head(z), z.view(len(z), self.num_teachers, self.num_classes)

    @property
    def classifier(self) -> nn.Linear:
        """The two linear layers composed (no nonlinearity between them): the effective
        h -> logits classifier, for CAMs; weights carry gradients."""
        return _Composed(self.stf, self.head)


class _Composed(nn.Module):
    def __init__(self, first: nn.Linear, second: nn.Linear):
        super().__init__()
        self.first, self.second = [first], [second]  # lists: not registered as submodules

    @property
    def weight(self):
        return self.second[0].weight @ self.first[0].weight

    @property
    def bias(self):
        return self.second[0].weight @ self.first[0].bias + self.second[0].bias

    @property
    def in_features(self):
        return self.first[0].in_features

    @property
    def out_features(self):
        return self.second[0].out_features

    def forward(self, h):
        return self.second[0](self.first[0](h))
